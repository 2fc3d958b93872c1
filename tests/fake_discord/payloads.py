"""The JSON the bot receives for the fake's state: users, members, channels, GUILD_CREATE,
messages (REST and gateway shapes), interaction metadata, and what a session without the
MESSAGE_CONTENT intent sees of a message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .protocol import (
    ALL_PERMISSIONS,
    CHANNEL_DM,
    INTENT_GUILD_PRESENCES,
    INTENT_MESSAGE_CONTENT,
    INTERACTION_COMMAND,
    Json,
    _emoji_payload,
    _iso,
    _now,
)
from .world import FakeChannel, FakeGuild, FakeMember, FakeMessage

if TYPE_CHECKING:
    from .gateway import _GatewaySession


class PayloadsMixin:
    """FakeDiscord's state as Discord would send it."""

    # ----------------------------------------------------------------- payloads

    def _user_payload(self, user_id: int) -> Json:
        return self.users[user_id].payload()

    def _member_payload(self, member: FakeMember, *, with_user: bool = False,
                        permissions: bool = False) -> Json:
        payload: Json = {"roles": [str(r) for r in member.role_ids], "nick": member.nick,
                         "joined_at": _iso(member.joined_at), "premium_since": None,
                         "deaf": False, "mute": False, "flags": 0, "pending": False,
                         "avatar": None, "banner": None, "communication_disabled_until": None}
        if with_user:
            payload["user"] = self._user_payload(member.user_id)
        if permissions:
            payload["permissions"] = str(self.permissions_of(member.guild_id, member.user_id))
        return payload

    def _channel_payload(self, channel: FakeChannel, *, for_user: int | None = None) -> Json:
        last = max((m.id for m in self.messages.values() if m.channel_id == channel.id
                    and not m.ephemeral), default=None)
        if channel.is_dm:
            payload: Json = {"id": str(channel.id), "type": CHANNEL_DM, "flags": 0,
                             "last_message_id": str(last) if last else None,
                             "recipients": [self._user_payload(u) for u in channel.recipient_ids]}
        else:
            payload = {"id": str(channel.id), "type": channel.type, "name": channel.name,
                       "guild_id": str(channel.guild_id), "position": channel.position,
                       "permission_overwrites": [], "topic": channel.topic, "nsfw": False,
                       "rate_limit_per_user": 0, "parent_id": None, "flags": 0,
                       "last_message_id": str(last) if last else None}
        if for_user is not None:
            payload["permissions"] = str(
                ALL_PERMISSIONS if channel.guild_id is None
                else self.permissions_of(channel.guild_id, for_user))
        return payload

    def _guild_create_payload(self, guild: FakeGuild, session: _GatewaySession) -> Json:
        # Without GUILD_PRESENCES Discord only sends the bot's own member; discord.py then
        # asks for the rest with REQUEST_GUILD_MEMBERS when it has GUILD_MEMBERS.
        if session.intents & INTENT_GUILD_PRESENCES:
            members = list(guild.members.values())
        else:
            members = [m for m in guild.members.values() if m.user_id == self.bot_user.id]
        bot_member = guild.members.get(self.bot_user.id)
        return {
            "id": str(guild.id), "name": guild.name, "icon": None, "splash": None,
            "discovery_splash": None, "banner": None, "description": None,
            "owner_id": str(guild.owner_id), "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US", "features": [],
            "system_channel_id": str(guild.channel_ids[0]) if guild.channel_ids else None,
            "system_channel_flags": 0, "rules_channel_id": None,
            "public_updates_channel_id": None, "application_id": None, "vanity_url_code": None,
            "max_members": 500000, "premium_progress_bar_enabled": False,
            "roles": [r.payload() for r in guild.roles.values()],
            "emojis": [], "stickers": [], "soundboard_sounds": [],
            "channels": [self._channel_payload(self.channels[c]) for c in guild.channel_ids],
            "threads": [], "stage_instances": [], "guild_scheduled_events": [],
            "voice_states": [], "presences": [],
            "members": [self._member_payload(m, with_user=True) for m in members],
            "member_count": len(guild.members), "large": False, "unavailable": False,
            "lazy": True, "joined_at": _iso(bot_member.joined_at if bot_member else _now()),
        }

    def _message_payload(self, message: FakeMessage, *, gateway: bool = False,
                         nested: bool = False) -> Json:
        author = self.users[message.author_id]
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        payload: Json = {
            "id": str(message.id), "channel_id": str(message.channel_id),
            "author": author.payload(), "content": message.content,
            "timestamp": _iso(message.created_at),
            "edited_timestamp": _iso(message.edited_at) if message.edited_at else None,
            "tts": message.tts, "mention_everyone": message.mention_everyone,
            "mentions": [self._mention_payload(guild, u) for u in message.mentions
                         if u in self.users],
            "mention_roles": [str(r) for r in message.mention_roles],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": message.embeds, "pinned": False, "type": message.type,
            "flags": message.flags, "components": message.components,
        }
        reactions = [(key, users) for key, users in message.reactions.items() if users]
        if reactions:
            payload["reactions"] = [
                {"emoji": _emoji_payload(key), "count": len(users), "me": self.bot_user.id in users,
                 "me_burst": False, "burst_colors": [],
                 "count_details": {"burst": 0, "normal": len(users)}}
                for key, users in reactions]
        if message.nonce is not None:
            payload["nonce"] = message.nonce
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(self.application_id)
        if message.interaction_id is not None and message.interaction_id in self.interactions:
            payload.update(self._interaction_metadata(message))
        if gateway and guild is not None:
            payload["guild_id"] = str(guild.id)
            member = guild.members.get(message.author_id)
            if member is not None and message.webhook_id is None:
                payload["member"] = self._member_payload(member)
        if message.reference_id is not None:
            referenced = self.messages.get(message.reference_id)
            payload["message_reference"] = {
                "type": 0, "message_id": str(message.reference_id),
                "channel_id": str(referenced.channel_id if referenced else message.channel_id),
                "fail_if_not_exists": False}
            if message.guild_id is not None:
                payload["message_reference"]["guild_id"] = str(message.guild_id)
            if not nested:
                payload["referenced_message"] = (
                    None if referenced is None or referenced.deleted
                    else self._message_payload(referenced, gateway=gateway, nested=True))
        return payload

    def _mention_payload(self, guild: FakeGuild | None, user_id: int) -> Json:
        payload = self._user_payload(user_id)
        member = guild.members.get(user_id) if guild else None
        if member is not None:
            payload["member"] = self._member_payload(member)
        return payload

    def _interaction_metadata(self, message: FakeMessage) -> Json:
        interaction = self.interactions[message.interaction_id]  # type: ignore[index]
        owners = ({"0": str(interaction.guild_id)} if interaction.guild_id
                  else {"1": str(interaction.user_id)})
        metadata: Json = {"id": str(interaction.id), "type": interaction.type,
                          "user": self._user_payload(interaction.user_id),
                          "authorizing_integration_owners": owners}
        if interaction.original_message_id not in (None, message.id):
            metadata["original_response_message_id"] = str(interaction.original_message_id)
        if interaction.source_message_id is not None:
            metadata["interacted_message_id"] = str(interaction.source_message_id)
        result: Json = {"interaction_metadata": metadata}
        if interaction.type == INTERACTION_COMMAND:
            result["interaction"] = {"id": str(interaction.id), "type": interaction.type,
                                     "name": interaction.payload["data"]["name"],
                                     "user": self._user_payload(interaction.user_id)}
        return result

    def _strip_content(self, payload: Json, session: _GatewaySession) -> Json:
        """What a session without MESSAGE_CONTENT sees of a guild message."""
        if session.intents & INTENT_MESSAGE_CONTENT or "guild_id" not in payload:
            return payload
        bot_id = str(self.bot_user.id)
        if payload["author"]["id"] == bot_id or any(m["id"] == bot_id
                                                    for m in payload["mentions"]):
            return payload
        stripped = dict(payload, content="", embeds=[], attachments=[], components=[])
        stripped.pop("poll", None)
        return stripped

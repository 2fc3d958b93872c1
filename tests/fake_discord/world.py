"""The fake's state (users, guilds, roles, members, channels, messages, attachments), the
default `World` every fake starts with, adding to it while a bot runs, and the permissions
that follow from roles."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import discord

from .protocol import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    BOT_PERMISSIONS,
    CHANNEL_DM,
    CHANNEL_TEXT,
    DISCORD_EPOCH_MS,
    EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILDS,
    MESSAGE_DEFAULT,
    Json,
    _id,
    _now,
    _snowflake_time,
    _unknown,
    _walk_components,
)


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> Json:
        return {"id": str(self.id), "username": self.username, "discriminator": "0",
                "global_name": self.global_name, "avatar": None, "bot": self.bot,
                "system": False, "public_flags": 0, "flags": 0, "banner": None,
                "accent_color": None, "avatar_decoration_data": None}


@dataclass
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False

    def payload(self) -> Json:
        return {"id": str(self.id), "name": self.name, "permissions": str(self.permissions),
                "position": self.position, "color": 0, "colors": {"primary_color": 0},
                "hoist": False, "icon": None, "unicode_emoji": None, "managed": self.managed,
                "mentionable": False, "flags": 0}


@dataclass
class FakeMember:
    guild_id: int
    user_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: datetime = field(default_factory=_now)


@dataclass
class FakeChannel:
    id: int
    type: int
    name: str | None
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    recipient_ids: list[int] = field(default_factory=list)

    @property
    def is_dm(self) -> bool:
        return self.type == CHANNEL_DM


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes = field(repr=False)
    url: str
    content_type: str | None = None
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> Json:
        result: Json = {"id": str(self.id), "filename": self.filename, "size": self.size,
                        "url": self.url, "proxy_url": self.url,
                        "content_type": self.content_type}
        if self.description is not None:
            result["description"] = self.description
        return result


@dataclass
class MessageVersion:
    """One state of a message: as created, then after each edit."""

    content: str
    embeds: list[Json]
    components: list[Json]
    attachments: list[str]
    flags: int
    at: datetime


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    type: int = MESSAGE_DEFAULT
    flags: int = 0
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    mentions: list[int] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    reference_id: int | None = None
    allowed_mentions: Json | None = None
    nonce: str | int | None = None
    tts: bool = False
    webhook_id: int | None = None
    interaction_id: int | None = None
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: dict[str, set[int]] = field(default_factory=dict)
    versions: list[MessageVersion] = field(default_factory=list)

    @property
    def created_at(self) -> datetime:
        return _snowflake_time(self.id)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def content_history(self) -> list[str]:
        """Every content the message had, oldest first (the last one is the current)."""
        return [version.content for version in self.versions]

    @property
    def edit_count(self) -> int:
        return len(self.versions) - 1

    def attachment(self, filename: str) -> FakeAttachment:
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(f"message {self.id} has no attachment {filename!r}: "
                       f"{[a.filename for a in self.attachments]}")

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def _snapshot(self) -> None:
        self.versions.append(MessageVersion(
            self.content, [dict(e) for e in self.embeds], list(self.components),
            [a.filename for a in self.attachments], self.flags, self.edited_at or _now()))


@dataclass
class World:
    """The guild, channels, roles and users every fake starts with (`FakeDiscord.world`)."""

    guild: FakeGuild
    general: FakeChannel
    random: FakeChannel
    everyone_role: FakeRole
    admin_role: FakeRole
    moderator_role: FakeRole
    bot_role: FakeRole
    owner: FakeUser
    alice: FakeUser  # holds admin_role (Administrator)
    bob: FakeUser
    carol: FakeUser
    other_bot: FakeUser


class WorldMixin:
    """Builds and reads FakeDiscord's state (the dicts its __init__ sets up)."""

    # ----------------------------------------------------------------- world building

    def _snowflake(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(self._last_snowflake + 1, candidate)
        return self._last_snowflake

    def _new_user(self, username: str, *, bot: bool = False,
                  global_name: str | None = None) -> FakeUser:
        user = FakeUser(self._snowflake(), username, bot, global_name)
        self.users[user.id] = user
        return user

    def _new_guild(self, name: str, owner_id: int) -> FakeGuild:
        guild = FakeGuild(self._snowflake(), name, owner_id)
        # The @everyone role shares the guild's id.
        guild.roles[guild.id] = FakeRole(guild.id, guild.id, "@everyone", EVERYONE_PERMISSIONS)
        self.guilds[guild.id] = guild
        return guild

    def _new_role(self, guild_id: int, name: str, permissions: int = 0, *,
                  managed: bool = False) -> FakeRole:
        guild = self.guilds[guild_id]
        role = FakeRole(self._snowflake(), guild_id, name, permissions, len(guild.roles), managed)
        guild.roles[role.id] = role
        return role

    def _new_channel(self, guild_id: int, name: str, *, type: int = CHANNEL_TEXT,
                     topic: str | None = None) -> FakeChannel:
        guild = self.guilds[guild_id]
        channel = FakeChannel(self._snowflake(), type, name, guild_id, len(guild.channel_ids),
                              topic)
        self.channels[channel.id] = channel
        guild.channel_ids.append(channel.id)
        return channel

    def _new_member(self, guild_id: int, user_id: int, role_ids: Iterable[int] = (),
                    nick: str | None = None) -> FakeMember:
        member = FakeMember(guild_id, user_id, [_id(r) for r in role_ids], nick)
        self.guilds[guild_id].members[user_id] = member
        return member

    def _populate(self) -> World:
        owner = self._new_user("owner", global_name="Olivia Owner")
        alice = self._new_user("alice", global_name="Alice")
        bob = self._new_user("bob", global_name="Bob")
        carol = self._new_user("carol", global_name="Carol")
        other_bot = self._new_user("OtherBot", bot=True)
        guild = self._new_guild("Fake Guild", owner.id)
        admin = self._new_role(guild.id, "Admin", ADMINISTRATOR)
        moderator = self._new_role(guild.id, "Moderator",
                                   discord.Permissions(manage_guild=True).value)
        bot_role = self._new_role(guild.id, self.bot_user.username, BOT_PERMISSIONS, managed=True)
        general = self._new_channel(guild.id, "general", topic="General chat")
        random = self._new_channel(guild.id, "random")
        self._new_member(guild.id, owner.id)
        self._new_member(guild.id, alice.id, [admin.id])
        self._new_member(guild.id, bob.id)
        self._new_member(guild.id, carol.id)
        self._new_member(guild.id, other_bot.id)
        self._new_member(guild.id, self.bot_user.id, [bot_role.id])
        return World(guild, general, random, guild.roles[guild.id], admin, moderator, bot_role,
                     owner, alice, bob, carol, other_bot)

    async def create_user(self, username: str, *, bot: bool = False,
                          global_name: str | None = None) -> FakeUser:
        return self._new_user(username, bot=bot, global_name=global_name)

    async def create_guild(self, name: str, *, owner_id: int,
                           with_bot: bool = True) -> FakeGuild:
        """A guild with its @everyone role; GUILD_CREATE is sent if the bot is in it."""
        guild = self._new_guild(name, _id(owner_id))
        self._new_member(guild.id, guild.owner_id)
        if with_bot:
            self._new_member(guild.id, self.bot_user.id)
            for session in list(self.sessions.values()):
                if session.intents & INTENT_GUILDS:
                    await self._send_dispatch(session, "GUILD_CREATE",
                                              self._guild_create_payload(guild, session))
        return guild

    async def create_channel(self, guild_id: int, name: str, *, type: int = CHANNEL_TEXT,
                             topic: str | None = None) -> FakeChannel:
        channel = self._new_channel(_id(guild_id), name, type=type, topic=topic)
        await self._dispatch("CHANNEL_CREATE", self._channel_payload(channel), INTENT_GUILDS)
        return channel

    async def create_role(self, guild_id: int, name: str, *, permissions: int = 0) -> FakeRole:
        role = self._new_role(_id(guild_id), name, permissions)
        await self._dispatch("GUILD_ROLE_CREATE",
                             {"guild_id": str(role.guild_id), "role": role.payload()},
                             INTENT_GUILDS)
        return role

    async def add_member(self, guild_id: int, user_id: int, *, roles: Iterable[int] = (),
                         nick: str | None = None) -> FakeMember:
        member = self._new_member(_id(guild_id), _id(user_id), roles, nick)
        payload = self._member_payload(member, with_user=True)
        payload["guild_id"] = str(member.guild_id)
        await self._dispatch("GUILD_MEMBER_ADD", payload, INTENT_GUILD_MEMBERS)
        return member

    async def set_member_roles(self, guild_id: int, user_id: int,
                               role_ids: Iterable[int]) -> FakeMember:
        """Replace a member's roles (e.g. make someone admin); sends GUILD_MEMBER_UPDATE."""
        member = self.member(guild_id, user_id)
        member.role_ids = [_id(r) for r in role_ids]
        payload = self._member_payload(member, with_user=True)
        payload["guild_id"] = str(member.guild_id)
        await self._dispatch("GUILD_MEMBER_UPDATE", payload, INTENT_GUILD_MEMBERS)
        return member

    async def dm_channel(self, user_id: int) -> FakeChannel:
        """The DM channel between a user and the bot (created on first use)."""
        return self._dm_channel(_id(user_id))

    def _dm_channel(self, user_id: int) -> FakeChannel:
        for channel in self.channels.values():
            if channel.is_dm and channel.recipient_ids == [user_id]:
                return channel
        if user_id not in self.users:
            raise _unknown("User")
        channel = FakeChannel(self._snowflake(), CHANNEL_DM, None, None, recipient_ids=[user_id])
        self.channels[channel.id] = channel
        return channel

    # ----------------------------------------------------------------- permissions

    def permissions_of(self, guild_id: int, user_id: int) -> int:
        """Guild-level permissions: owner and Administrator get everything."""
        guild = self.guilds[_id(guild_id)]
        user_id = _id(user_id)
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id)
        value = guild.roles[guild.id].permissions
        for role_id in member.role_ids if member else ():
            role = guild.roles.get(role_id)
            if role is not None:
                value |= role.permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

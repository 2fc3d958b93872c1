"""Messages as Discord keeps them: created (mentions resolved, uploads stored, limits
checked), edited (each version kept), deleted and reacted to, each change sent to the bot as
its gateway event. Shared by the REST handlers, interactions and the test driver."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .protocol import (
    _ROLE_MENTION,
    _USER_MENTION,
    FLAG_LOADING,
    INTENT_DIRECT_MESSAGE_REACTIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGE_REACTIONS,
    INTENT_GUILD_MESSAGES,
    MAX_CONTENT,
    MESSAGE_DEFAULT,
    MESSAGE_REPLY,
    UPLOAD_LIMIT,
    DiscordAPIError,
    Json,
    _emoji_key,
    _emoji_payload,
    _form_error,
    _now,
    _validate_components,
    _validate_embeds,
)
from .records import RecordedFile
from .world import FakeAttachment, FakeChannel, FakeMessage

if TYPE_CHECKING:
    from .interactions import FakeInteraction


class MessagesMixin:
    """What happens to FakeDiscord's messages, whoever asks."""

    # ----------------------------------------------------------------- reactions

    async def _react(self, user_id: int, message: FakeMessage, emoji: str, add: bool) -> None:
        key = _emoji_key(emoji)
        users = message.reactions.setdefault(key, set())
        if (user_id in users) == add:
            return  # Discord answers 204 and sends no event for a no-op
        if add:
            users.add(user_id)
        else:
            users.discard(user_id)
        payload: Json = {"user_id": str(user_id), "channel_id": str(message.channel_id),
                         "message_id": str(message.id), "emoji": _emoji_payload(key),
                         "burst": False, "type": 0}
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
            member = self.guilds[message.guild_id].members.get(user_id)
            if add and member is not None:
                payload["member"] = self._member_payload(member, with_user=True)
        if add:
            payload["message_author_id"] = str(message.author_id)
            payload["burst_colors"] = []
        intent = (INTENT_DIRECT_MESSAGE_REACTIONS if message.guild_id is None
                  else INTENT_GUILD_MESSAGE_REACTIONS)
        event = "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE"
        self._notify()
        await self._dispatch(event, payload, intent)

    # ----------------------------------------------------------------- messages

    def _resolve_mentions(self, message: FakeMessage, allowed: Json | None) -> None:
        guild = self.guilds.get(message.guild_id) if message.guild_id else None
        parse = set(allowed.get("parse", [])) if allowed is not None else {"users", "roles",
                                                                           "everyone"}
        allowed_users = {int(u) for u in (allowed or {}).get("users", [])}
        allowed_roles = {int(r) for r in (allowed or {}).get("roles", [])}
        users: list[int] = []
        for raw in _USER_MENTION.findall(message.content):
            user_id = int(raw)
            if user_id in self.users and user_id not in users and (
                    "users" in parse or user_id in allowed_users):
                users.append(user_id)
        if message.reference_id is not None:
            referenced = self.messages.get(message.reference_id)
            # Without allowed_mentions a reply pings its target; with them, only if asked.
            ping = allowed is None or allowed.get("replied_user", False)
            if referenced is not None and ping and referenced.author_id not in users:
                users.append(referenced.author_id)
        message.mentions = users
        message.mention_roles = [
            int(r) for r in _ROLE_MENTION.findall(message.content)
            if guild is not None and int(r) in guild.roles
            and ("roles" in parse or int(r) in allowed_roles)]
        message.mention_everyone = "everyone" in parse and (
            "@everyone" in message.content or "@here" in message.content)

    def _attachments_from(self, channel_id: int, body: Json,
                          files: Sequence[RecordedFile]) -> list[FakeAttachment]:
        """Attachments a body keeps (by id) plus the uploaded files (by `files[n]` index)."""
        described = {str(a.get("id")): a for a in body.get("attachments") or []}
        result: list[FakeAttachment] = []
        for meta in body.get("attachments") or []:
            # Kept attachments carry their snowflake; new uploads their `files[n]` index.
            existing = (self.attachments.get(int(meta["id"]))
                        if str(meta.get("id")).isdigit() else None)
            if existing is not None:
                result.append(existing)
        for index, upload in enumerate(files):
            key = upload.field[len("files["):-1] if upload.field.startswith("files[") \
                else str(index)
            meta = described.get(key, {})
            filename = meta.get("filename") or upload.filename
            if len(upload.data) > UPLOAD_LIMIT:
                raise DiscordAPIError(413, 40005, "Request entity too large")
            attachment_id = self._snowflake()
            content_type = upload.content_type
            if content_type in (None, "application/octet-stream"):
                content_type = mimetypes.guess_type(filename)[0] or content_type
            attachment = FakeAttachment(
                attachment_id, filename, upload.data,
                f"{self.url}/attachments/{channel_id}/{attachment_id}/{filename}",
                content_type, meta.get("description"))
            self.attachments[attachment_id] = attachment
            result.append(attachment)
        return result

    @staticmethod
    def _validate_body(content: str, embeds: Sequence[Json], components: Sequence[Json],
                       attachments: Sequence[FakeAttachment], body: Json) -> None:
        if len(content) > MAX_CONTENT:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH",
                              f"Must be {MAX_CONTENT} or fewer in length.")
        _validate_embeds(embeds)
        _validate_components(components)
        if not (content or embeds or attachments or components or body.get("sticker_ids")
                or body.get("poll")):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")

    def _create_message(self, channel: FakeChannel, author_id: int, body: Json,
                        files: Sequence[RecordedFile], *, type: int | None = None,
                        flags: int | None = None, interaction: FakeInteraction | None = None,
                        validate: bool = True) -> FakeMessage:
        content = body.get("content") or ""
        embeds = list(body.get("embeds") or [])
        components = list(body.get("components") or [])
        reference = body.get("message_reference")
        reference_id = None
        if reference and reference.get("message_id"):
            referenced = self.messages.get(int(reference["message_id"]))
            if referenced is None or referenced.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                      "Unknown message")
            else:
                reference_id = referenced.id
        attachments = self._attachments_from(channel.id, body, files)
        if validate:
            self._validate_body(content, embeds, components, attachments, body)
        message = FakeMessage(
            id=self._snowflake(), channel_id=channel.id, guild_id=channel.guild_id,
            author_id=author_id, content=content,
            type=type if type is not None else (MESSAGE_REPLY if reference_id
                                                else MESSAGE_DEFAULT),
            flags=flags if flags is not None else int(body.get("flags") or 0),
            embeds=embeds, components=components, attachments=attachments,
            reference_id=reference_id, allowed_mentions=body.get("allowed_mentions"),
            nonce=body.get("nonce"), tts=bool(body.get("tts")),
            webhook_id=self.application_id if interaction else None,
            interaction_id=interaction.id if interaction else None)
        self._resolve_mentions(message, message.allowed_mentions)
        message._snapshot()
        self.messages[message.id] = message
        self._notify()
        return message

    async def _edit_message(self, message: FakeMessage, body: Json,
                            files: Sequence[RecordedFile], *, clear_loading: bool = True) -> None:
        was_loading = message.loading
        content = (body.get("content") or "") if "content" in body else message.content
        embeds = list(body.get("embeds") or []) if "embeds" in body else message.embeds
        components = (list(body.get("components") or []) if "components" in body
                      else message.components)
        if "attachments" in body or files:
            kept = message.attachments if "attachments" not in body else []
            attachments = kept + self._attachments_from(message.channel_id, body, files)
        else:
            attachments = message.attachments
        self._validate_body(content, embeds, components, attachments, body)
        message.content, message.embeds, message.components = content, embeds, components
        message.attachments = attachments
        if "flags" in body and body["flags"] is not None:
            # Only SUPPRESS_EMBEDS can be changed; ephemeral/loading stay what they were.
            message.flags = (message.flags & ~4) | (int(body["flags"]) & 4)
        if clear_loading:
            message.flags &= ~FLAG_LOADING
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        self._resolve_mentions(message, message.allowed_mentions)
        # Completing a "thinking" message does not show as an edit in Discord.
        message.edited_at = None if was_loading else _now()
        message._snapshot()
        self._notify()
        await self._dispatch_message("MESSAGE_UPDATE", message)

    async def _remove_message(self, message: FakeMessage) -> None:
        message.deleted = True
        self._notify()
        if message.ephemeral:
            return
        payload: Json = {"id": str(message.id), "channel_id": str(message.channel_id)}
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
        intent = INTENT_DIRECT_MESSAGES if message.guild_id is None else INTENT_GUILD_MESSAGES
        await self._dispatch("MESSAGE_DELETE", payload, intent)

"""What the fake knows of Discord's side of the protocol: API v10 and gateway constants,
Discord-style error bodies, the limits it enforces on components and embeds, and the small
conversions every part uses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import discord
from aiohttp import web

Json = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
API_PREFIX = "/api/v10"
DEFAULT_TOKEN = "fake-bot-token.Gxyz12.abcdefghijklmnopqrstuvwxyz0123456789"
UPLOAD_LIMIT = 10 * 1024 * 1024
MAX_CONTENT = 2000

# Gateway opcodes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE_STATE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION = 6, 7, 8, 9
OP_HELLO, OP_HEARTBEAT_ACK = 10, 11

# Gateway intents (bits of IDENTIFY's `intents`).
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags and types.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
MESSAGE_DEFAULT, MESSAGE_REPLY, MESSAGE_CHAT_INPUT = 0, 19, 20

# Channel types.
CHANNEL_TEXT, CHANNEL_DM = 0, 1

# Interaction types and callback (response) types.
INTERACTION_COMMAND, INTERACTION_COMPONENT, INTERACTION_AUTOCOMPLETE = 2, 3, 4
INTERACTION_MODAL_SUBMIT = 5
CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE = 4, 5, 6
CALLBACK_UPDATE_MESSAGE, CALLBACK_AUTOCOMPLETE, CALLBACK_MODAL = 7, 8, 9
_ALLOWED_CALLBACKS: dict[int, set[int]] = {
    INTERACTION_COMMAND: {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_MODAL},
    INTERACTION_COMPONENT: {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE,
                            CALLBACK_UPDATE_MESSAGE, CALLBACK_MODAL},
    INTERACTION_AUTOCOMPLETE: {CALLBACK_AUTOCOMPLETE},
    INTERACTION_MODAL_SUBMIT: {CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE,
                               CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE},
}

ALL_PERMISSIONS = discord.Permissions.all().value
ADMINISTRATOR = discord.Permissions(administrator=True).value
EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, read_message_history=True, add_reactions=True,
    embed_links=True, attach_files=True, use_application_commands=True, external_emojis=True,
).value
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | discord.Permissions(manage_messages=True).value

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CUSTOM_EMOJI = re.compile(r"<?a?:?(?P<name>\w+):(?P<id>\d+)>?")
_UNKNOWN_CODES = {
    "Channel": 10003, "Guild": 10004, "Member": 10007, "Message": 10008, "Role": 10011,
    "User": 10013, "Emoji": 10014, "Webhook": 10015, "Interaction": 10062,
    "Application Command": 10063,
}


def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    # Exactly "application/json": discord.py treats anything else (even with a charset) as text.
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={**(headers or {}), "Content-Type": "application/json"})


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _now() -> datetime:
    return datetime.now(UTC)


def _snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, tz=UTC)


def _id(value: Any) -> int:
    """An id from an int, a numeric string or anything with an `id` (fakes, discord objects)."""
    return int(getattr(value, "id", value))


class DiscordAPIError(Exception):
    """Raised inside a route handler; becomes a Discord-style JSON error response."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: Json = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return _json(body, status=self.status)


def _unknown(what: str) -> DiscordAPIError:
    return DiscordAPIError(404, _UNKNOWN_CODES[what], f"Unknown {what}")


def _form_error(field_name: str, code: str, message: str) -> DiscordAPIError:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


# --------------------------------------------------------------------------- components, emoji


def _walk_components(components: Iterable[Json]) -> Iterable[Json]:
    """Every component, depth first (action rows, sections, containers, labels)."""
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from _walk_components([component[key]])


def _emoji_key(emoji: str) -> str:
    """Reactions are stored under "👍" (unicode) or "name:id" (custom), as the URL spells them."""
    match = _CUSTOM_EMOJI.fullmatch(emoji)
    if match:
        return f"{match['name']}:{match['id']}"
    return emoji


def _emoji_payload(key: str) -> Json:
    if ":" in key:
        name, emoji_id = key.split(":", 1)
        return {"id": emoji_id, "name": name, "animated": False}
    return {"id": None, "name": key}


def _validate_components(components: Sequence[Json], field_name: str = "components") -> None:
    seen: set[str] = set()
    # Five action rows, or up to 40 top-level components in a "components v2" layout.
    limit = 5 if all(c.get("type") == 1 for c in components) else 40
    if len(components) > limit:
        raise _form_error(field_name, "BASE_TYPE_MAX_LENGTH",
                          f"Must be {limit} or fewer in length.")
    for component in _walk_components(components):
        custom_id = component.get("custom_id")
        if custom_id is None:
            continue
        if not 1 <= len(custom_id) <= 100:
            raise _form_error(field_name, "BASE_TYPE_BAD_LENGTH",
                              f"custom_id {custom_id!r}: must be between 1 and 100 in length.")
        if custom_id in seen:
            raise _form_error(field_name, "COMPONENT_CUSTOM_ID_DUPLICATED",
                              f"Component custom id cannot be duplicated: {custom_id!r}")
        seen.add(custom_id)


def _validate_embeds(embeds: Sequence[Json]) -> None:
    if len(embeds) > 10:
        raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    for embed in embeds:
        if len(embed.get("title") or "") > 256:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "title: 256 or fewer.")
        if len(embed.get("description") or "") > 4096:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "description: 4096 or fewer.")
        total = len(embed.get("title") or "") + len(embed.get("description") or "") + sum(
            len(f.get("name", "")) + len(f.get("value", "")) for f in embed.get("fields", []))
        if total > 6000:
            raise _form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds 6000.")

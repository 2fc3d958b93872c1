"""A local fake Discord (HTTP API v10 + Gateway) for end-to-end tests of discord.py bots.

The real discord.py client logs in, connects to the gateway, receives messages, reactions and
interactions, and answers them, all against an aiohttp server on 127.0.0.1: no network needed.
Payloads follow what discord.py 2.7 parses; behaviour follows Discord where a bot could notice
the difference (intents, message content stripping, the 3 s interaction deadline, the first
follow-up after a "thinking" defer replacing it, 2000-character messages, ephemeral messages
never reaching the gateway, 429s with `Via` and `retry_after`).

Use it from a test module with::

    pytest_plugins = ("fake_discord",)

    async def test_hello(fake_discord):
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.all())
        await fake_discord.start_bot(bot)
        world = fake_discord.world
        await fake_discord.send_message(world.general.id, world.alice.id, "hi", mentions_bot=True)

Everything the bot sends is recorded (`calls`, `messages_in`, `interaction_responses`); waits
(`wait_for`, `wait_for_message`, `wait_until`) never sleep blindly. Faults: `fail_next` for
HTTP errors, `drop_gateway` / `invalidate_session` / `send_reconnect` for the gateway.

PYTEST_DONT_REWRITE: test modules import this before `pytest_plugins` loads it as a plugin,
and pytest would otherwise warn that it cannot rewrite this module's asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import discord
import pytest
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from discord.gateway import DiscordWebSocket
from discord.http import Route

log = logging.getLogger("fake_discord")

T = TypeVar("T")
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


# --------------------------------------------------------------------------- world model


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


# --------------------------------------------------------------------------- recording


@dataclass
class RecordedFile:
    field: str
    filename: str
    content_type: str | None
    data: bytes = field(repr=False)


@dataclass
class RecordedCall:
    """One HTTP request the bot made; `status` is 0 until the fake has answered it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]
    headers: dict[str, str] = field(repr=False)
    status: int = 0
    injected: bool = False
    at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.status != 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class ResponseRecord:
    """Something the bot did to answer an interaction, in the order it happened.

    kind: "callback" (then `type` is the callback type), "edit_original", "delete_original",
    "followup", "edit_followup" or "delete_followup".
    """

    kind: str
    type: int | None
    data: Json
    files: list[RecordedFile]
    message_id: int | None
    ephemeral: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str | None:
        return self.data.get("content")


@dataclass
class GatewayFrame:
    """A payload the client sent over the gateway."""

    connection: int
    op: int
    d: Any


@dataclass
class DispatchRecord:
    session_id: str
    seq: int
    event: str
    data: Json


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float
    is_global: bool


@dataclass(eq=False)
class _GatewayConnection:
    index: int
    ws: web.WebSocketResponse
    request: web.Request
    path: str
    query: dict[str, str]
    session: _GatewaySession | None = None


@dataclass(eq=False)
class _GatewaySession:
    id: str
    intents: int
    seq: int = 0
    conn: _GatewayConnection | None = None
    buffer: list[tuple[int, str]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake sent to the bot, and everything the bot answered."""

    fake: FakeDiscord = field(repr=False)
    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    guild_id: int | None
    payload: Json = field(repr=False)
    created_at: float = field(default_factory=time.monotonic)
    source_message_id: int | None = None
    responses: list[ResponseRecord] = field(default_factory=list)
    response_type: int | None = None
    original_message_id: int | None = None
    followup_message_ids: list[int] = field(default_factory=list)
    modal: Json | None = None
    choices: list[Json] | None = None
    expired: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def callback(self) -> ResponseRecord | None:
        return next((r for r in self.responses if r.kind == "callback"), None)

    @property
    def original_message(self) -> FakeMessage | None:
        if self.original_message_id is None:
            return None
        return self.fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> list[FakeMessage]:
        return [self.fake.messages[i] for i in self.followup_message_ids]

    @property
    def ephemeral(self) -> bool:
        """Whether the reply the user sees (the original response) is ephemeral."""
        message = self.original_message
        if message is not None:
            return message.ephemeral
        callback = self.callback
        return bool(callback and callback.ephemeral)

    async def wait_response(self, timeout: float = 5.0) -> ResponseRecord:
        """The initial callback, once the bot has sent it."""
        return await self.wait_for_response("callback", timeout=timeout)

    async def wait_for_response(self, kind: str | None = None, *,
                                predicate: Callable[[ResponseRecord], bool] | None = None,
                                timeout: float = 5.0) -> ResponseRecord:
        """The first response of `kind` (any kind if None) matching `predicate`."""

        def find() -> ResponseRecord | None:
            for record in self.responses:
                if (kind is None or record.kind == kind) and (predicate is None
                                                              or predicate(record)):
                    return record
            return None

        return await self.fake.wait_until(
            find, timeout=timeout, what=f"a {kind or 'any'} response to interaction {self.id}")

    async def wait_for_content(self, predicate: Callable[[str], bool], *,
                               timeout: float = 5.0) -> str:
        """Wait until the original response's content satisfies `predicate`, and return it."""

        def check() -> str | None:
            message = self.original_message
            if message is not None and not message.loading and predicate(message.content):
                return message.content
            return None

        return await self.fake.wait_until(check, timeout=timeout,
                                          what=f"the response to interaction {self.id}")


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- the fake


_Handler = Callable[..., Awaitable[Any]]


@dataclass
class _RouteEntry:
    method: str
    pattern: re.Pattern[str]
    handler: _Handler
    auth: bool


class FakeDiscord:
    """A fake Discord API + gateway on 127.0.0.1 for one bot application.

    Create it, `await start()`, `patch_discord()` (or use it as an async context manager, or
    the `fake_discord` fixture), then `start_bot(bot)`.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, bot_name: str = "TestBot",
                 populate: bool = True) -> None:
        self.token = token
        self.heartbeat_interval_ms = 41_250
        # Discord rejects an initial interaction response after 3 s ("Unknown interaction").
        self.interaction_deadline: float | None = 3.0
        self.enabled_privileged_intents = PRIVILEGED_INTENTS  # as ticked in the dev portal
        self.strict = True  # teardown fails on unhandled routes and internal errors

        self.users: dict[int, FakeUser] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.commands: dict[int, Json] = {}
        self.interactions: dict[int, FakeInteraction] = {}

        self.calls: list[RecordedCall] = []
        self.unhandled: list[RecordedCall] = []
        self.errors: list[str] = []
        self.typing: list[tuple[int, float]] = []
        self.presences: list[Json] = []
        self.gateway_frames: list[GatewayFrame] = []
        self.dispatched: list[DispatchRecord] = []
        self.gateway_connections: list[_GatewayConnection] = []
        self.sessions: dict[str, _GatewaySession] = {}

        self._last_snowflake = 0
        self._faults: list[_Fault] = []
        self._modals: list[tuple[FakeInteraction, Json]] = []
        self._pulse = asyncio.Event()
        self._gateway_gate = asyncio.Event()
        self._gateway_gate.set()
        self._bots: list[tuple[discord.Client, asyncio.Task[None]]] = []
        self._runner: web.AppRunner | None = None
        self._saved_urls: tuple[str, yarl.URL] | None = None
        self.port = 0

        self.bot_user = self._new_user(bot_name, bot=True)
        self.application_id = self.bot_user.id  # as for every bot created since 2020
        self._routes = self._build_routes()
        self.world: World = self._populate() if populate else None  # type: ignore[assignment]

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        # A different path from the initial gateway so tests can see discord.py used it.
        return f"ws://127.0.0.1:{self.port}/gateway/resume"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._handle_gateway)
        app.router.add_get("/gateway/resume", self._handle_gateway)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}",
                           self._handle_attachment)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle_api)
        app.router.add_route("*", "/{tail:.*}", self._handle_other)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.debug("fake Discord listening on %s", self.url)

    def patch_discord(self) -> None:
        """Point discord.py's REST base and default gateway at this fake."""
        if self._saved_urls is None:
            self._saved_urls = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        Route.BASE = self.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def restore_discord(self) -> None:
        if self._saved_urls is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved_urls
            self._saved_urls = None

    async def stop(self) -> None:
        """Close every bot started with `start_bot`, the gateway connections and the server."""
        await self.stop_bots()
        self._gateway_gate.set()
        for conn in self.gateway_connections:
            if not conn.ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.ws.close(code=1001), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        self.patch_discord()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.stop()
        finally:
            self.restore_discord()
        if self.strict and exc_info[0] is None:
            self.assert_clean()

    def assert_clean(self) -> None:
        """Fail if the bot used a route the fake lacks, or the fake itself broke."""
        problems = [f"unhandled {c.method} {c.path}" for c in self.unhandled] + self.errors
        assert not problems, "fake Discord: " + "; ".join(problems)

    # ----------------------------------------------------------------- running bots

    async def start_bot(self, bot: discord.Client, token: str | None = None, *,
                        timeout: float = 10.0, guild_ready_timeout: float | None = 0.1,
                        identify_delay: bool = False) -> discord.Client:
        """Run `bot.start(token)` in a task and return once the bot is ready.

        Raises what `start` raised (e.g. `discord.LoginFailure`) if it stops before ready.
        The bot is closed by `stop_bots()` / `stop()` (the fixture does it).

        Two discord.py waits that only make sense against the real Discord are shortened:
        `guild_ready_timeout` (2 s after the last GUILD_CREATE before on_ready; the fake
        sends them all at once) and, unless `identify_delay` or the bot's class overrides
        it, the 5 s `before_identify_hook` sleep before every re-IDENTIFY.
        """
        if guild_ready_timeout is not None:
            bot._connection.guild_ready_timeout = guild_ready_timeout
        if not identify_delay and \
                type(bot).before_identify_hook is discord.Client.before_identify_hook:

            async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
                return None

            bot.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
        task = asyncio.create_task(bot.start(token if token is not None else self.token),
                                   name=f"fake-discord-bot-{len(self._bots)}")
        self._bots.append((bot, task))
        deadline = time.monotonic() + timeout
        while not bot.is_ready():
            if task.done():
                task.result()  # raises what start() raised
                raise RuntimeError("bot.start() returned before the bot was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bot not ready after {timeout}s")
            await asyncio.sleep(0.01)
        # A loaded machine can stall past guild_ready_timeout; on_ready then comes before a
        # guild is complete, so also wait until every guild is available (and chunked).
        chunking = bot._connection._chunk_guilds
        wanted = [g.id for g in self.guilds.values() if self.bot_user.id in g.members]

        def guilds_complete() -> bool:
            guilds = [bot.get_guild(guild_id) for guild_id in wanted]
            return all(g is not None and not g.unavailable and (g.chunked or not chunking)
                       for g in guilds)

        await self.wait_until(guilds_complete, timeout=max(0.0, deadline - time.monotonic()),
                              what="the bot's guilds to be cached")
        return bot

    async def stop_bots(self) -> None:
        bots, self._bots = self._bots, []
        for bot, task in bots:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bot.close(), 5.0)
            try:
                await asyncio.wait_for(task, 5.0)
            except (Exception, asyncio.CancelledError) as exc:
                if not isinstance(exc, discord.LoginFailure):
                    log.debug("bot task ended with %r", exc)

    # ----------------------------------------------------------------- waiting

    def _notify(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    async def wait_until(self, condition: Callable[[], T], *, timeout: float = 5.0,
                         what: str = "condition") -> T:
        """Re-check `condition` whenever the fake's state changes; return its first truthy
        value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            pulse = self._pulse
            # The bot's own progress (not only the fake's) can make a condition true.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pulse.wait(), min(remaining, 0.05))

    async def wait_for(self, match: str | Callable[[RecordedCall], bool],
                       path: str | None = None, *, timeout: float = 5.0,
                       start: int = 0) -> RecordedCall:
        """The first answered call in `calls[start:]` that matches.

        `match` is a predicate, or a method with `path` a regex that must match the whole
        path after /api/v10 (e.g. `wait_for("POST", r"/channels/\\d+/messages")`), or
        "METHOD regex" in one string.
        """
        predicate = self._call_matcher(match, path)
        return await self.wait_until(
            lambda: next((c for c in self.calls[start:] if c.done and predicate(c)), None),
            timeout=timeout, what=f"a call matching {match!r} {path or ''}")

    def calls_matching(self, match: str | Callable[[RecordedCall], bool],
                       path: str | None = None) -> list[RecordedCall]:
        predicate = self._call_matcher(match, path)
        return [c for c in self.calls if predicate(c)]

    @staticmethod
    def _call_matcher(match: str | Callable[[RecordedCall], bool],
                      path: str | None) -> Callable[[RecordedCall], bool]:
        if callable(match):
            return match
        method = match
        if path is None:
            method, _, path = match.partition(" ")
        pattern = re.compile(path or ".*")
        return lambda c: c.method == method.upper() and pattern.fullmatch(c.path) is not None

    async def wait_for_message(self, predicate: Callable[[FakeMessage], bool] | None = None,
                               *, channel_id: int | None = None, author_id: int | None = None,
                               timeout: float = 5.0) -> FakeMessage:
        """The oldest live message (existing or future) matching all the filters."""

        def find() -> FakeMessage | None:
            for message in self.messages.values():
                if message.deleted or (channel_id is not None
                                       and message.channel_id != channel_id):
                    continue
                if author_id is not None and message.author_id != author_id:
                    continue
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.wait_until(find, timeout=timeout, what="a matching message")

    async def wait_for_bot_message(self, channel_id: int | None = None, *,
                                   predicate: Callable[[FakeMessage], bool] | None = None,
                                   after: int = 0, timeout: float = 5.0) -> FakeMessage:
        """The oldest message by the bot newer than message id `after`."""
        return await self.wait_for_message(
            lambda m: m.id > after and (predicate is None or predicate(m)),
            channel_id=channel_id, author_id=self.bot_user.id, timeout=timeout)

    async def wait_for_gateway(self, op: int, *, start: int = 0,
                               timeout: float = 5.0) -> GatewayFrame:
        """The first frame with `op` the client sent, from `gateway_frames[start:]`."""
        return await self.wait_until(
            lambda: next((f for f in self.gateway_frames[start:] if f.op == op), None),
            timeout=timeout, what=f"gateway op {op} from the client")

    # ----------------------------------------------------------------- accessors

    def messages_in(self, channel_id: int, *, include_deleted: bool = False) -> list[FakeMessage]:
        """Messages of a channel, oldest first, ephemeral ones included."""
        return [m for m in self.messages.values() if m.channel_id == _id(channel_id)
                and (include_deleted or not m.deleted)]

    def bot_messages(self, channel_id: int | None = None) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.author_id == self.bot_user.id
                and not m.deleted and (channel_id is None or m.channel_id == _id(channel_id))]

    def interaction_responses(self, interaction: FakeInteraction | int) -> list[ResponseRecord]:
        """Callback, edits and follow-ups of an interaction, in the order the bot sent them."""
        handle = self.interactions[_id(interaction)]
        return list(handle.responses)

    def events_dispatched(self, event: str) -> list[DispatchRecord]:
        return [d for d in self.dispatched if d.event == event]

    def member(self, guild_id: int, user_id: int) -> FakeMember:
        return self.guilds[_id(guild_id)].members[_id(user_id)]

    # ----------------------------------------------------------------- fault injection

    def fail_next(self, method: str, path_regex: str, *, status: int = 500, times: int = 1,
                  retry_after: float = 0.05, is_global: bool = False) -> None:
        """Answer the next `times` matching calls with `status` instead of handling them.

        429 answers carry what discord.py needs to retry: JSON `retry_after`, a
        `Retry-After` header and `Via` (without it discord.py assumes a Cloudflare ban).
        `path_regex` must match the whole path after /api/v10.
        """
        self._faults.append(_Fault(method.upper(), re.compile(path_regex), status, times,
                                   retry_after, is_global))

    def _take_fault(self, call: RecordedCall) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method == call.method and \
                    fault.pattern.fullmatch(call.path):
                fault.remaining -= 1
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after,
                    "global": fault.is_global, "code": 0}
            headers = {"Retry-After": str(fault.retry_after), "Via": "1.1 google",
                       "X-RateLimit-Scope": "global" if fault.is_global else "user",
                       "X-RateLimit-Global": "true" if fault.is_global else "false"}
            return _json(body, status=429, headers=headers)
        body = {"message": f"{fault.status}: injected by fake Discord", "code": 0}
        return _json(body, status=fault.status)

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

    # ----------------------------------------------------------------- gateway server

    async def _handle_gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = _GatewayConnection(len(self.gateway_connections), ws, request, request.path,
                                  dict(request.query))
        self.gateway_connections.append(conn)
        self._notify()
        if conn.query.get("encoding", "json") != "json" or conn.query.get("v") != "10":
            log.warning("fake Discord: gateway connected with %s (only v=10 JSON is faked)",
                        conn.query)
        try:
            await self._gateway_gate.wait()  # held by drop_gateway(hold=True)
            await self._ws_send(conn, {"op": OP_HELLO, "s": None, "t": None,
                                       "d": {"heartbeat_interval": self.heartbeat_interval_ms,
                                             "_trace": ["fake-discord"]}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    self.gateway_frames.append(GatewayFrame(conn.index, frame.get("op"),
                                                            frame.get("d")))
                    self._notify()
                    await self._on_gateway_frame(conn, frame)
                elif msg.type is WSMsgType.BINARY:
                    log.error("fake Discord: binary gateway frames (ETF) are not supported")
                    await ws.close(code=4002, message=b"Decode error")
        except (ConnectionError, RuntimeError) as exc:
            log.debug("gateway connection %d ended: %r", conn.index, exc)
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # A clean close ends the session; anything else leaves it resumable.
                if ws.close_code in (1000, 1001):
                    self.sessions.pop(session.id, None)
            self._notify()
        return ws

    async def _ws_send(self, conn: _GatewayConnection, payload: Json) -> None:
        if not conn.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(json.dumps(payload))

    async def _on_gateway_frame(self, conn: _GatewayConnection, frame: Json) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == OP_HEARTBEAT:
            await self._ws_send(conn, {"op": OP_HEARTBEAT_ACK, "s": None, "t": None, "d": None})
        elif op == OP_IDENTIFY:
            await self._identify(conn, data)
        elif op == OP_RESUME:
            await self._resume(conn, data)
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == OP_REQUEST_MEMBERS:
            await self._send_member_chunk(conn.session, data)
        elif op == OP_PRESENCE:
            self.presences.append(data)
        elif op == OP_VOICE_STATE:
            log.info("fake Discord: voice is not faked (voice state update ignored)")
        else:
            log.error("fake Discord: unknown gateway op %r", op)
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, conn: _GatewayConnection, data: Json) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.enabled_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = _GatewaySession(secrets.token_hex(16), intents)
        self.sessions[session.id] = session
        conn.session = session
        session.conn = conn
        ready = {
            "v": 10, "user": dict(self.bot_user.payload(), verified=True, mfa_enabled=False),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self.guilds.values()
                       if self.bot_user.id in g.members],
            "session_id": session.id, "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self._application_flags()},
            "private_channels": [], "relationships": [], "presences": [],
            "guild_join_requests": [], "geo_ordered_rtc_regions": [], "user_settings": {},
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._send_dispatch(session, "READY", ready)
        if intents & INTENT_GUILDS:
            for guild in self.guilds.values():
                if self.bot_user.id in guild.members:
                    await self._send_dispatch(session, "GUILD_CREATE",
                                              self._guild_create_payload(guild, session))

    async def _resume(self, conn: _GatewayConnection, data: Json) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self.sessions.get(data.get("session_id", ""))
        if session is None:
            await self._ws_send(conn, {"op": OP_INVALID_SESSION, "s": None, "t": None,
                                       "d": False})
            return
        seq = data.get("seq") or 0
        async with session.lock:
            conn.session = session
            for frame_seq, text in session.buffer:
                if frame_seq > seq:
                    await conn.ws.send_str(text)
            session.conn = conn
        await self._send_dispatch(session, "RESUMED", {"_trace": ["fake-discord"]})

    async def _send_member_chunk(self, session: _GatewaySession, data: Json) -> None:
        guild = self.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.user_id in wanted]
        elif data.get("query"):
            query = data["query"].lower()
            members = [m for m in members
                       if self.users[m.user_id].username.lower().startswith(query)]
        if data.get("limit"):
            members = members[:data["limit"]]
        chunk: Json = {"guild_id": str(guild.id), "chunk_index": 0, "chunk_count": 1,
                       "members": [self._member_payload(m, with_user=True) for m in members],
                       "not_found": []}
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _application_flags(self) -> int:
        flags = 0
        if self.enabled_privileged_intents & INTENT_GUILD_PRESENCES:
            flags |= 1 << 13
        if self.enabled_privileged_intents & INTENT_GUILD_MEMBERS:
            flags |= 1 << 15
        if self.enabled_privileged_intents & INTENT_MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    async def _send_dispatch(self, session: _GatewaySession, event: str, data: Json) -> None:
        async with session.lock:
            session.seq += 1
            text = json.dumps({"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data})
            # Kept for RESUME: events sent while the connection is down get replayed.
            session.buffer.append((session.seq, text))
            self.dispatched.append(DispatchRecord(session.id, session.seq, event, data))
            conn = session.conn
            if conn is not None and not conn.ws.closed:
                try:
                    await conn.ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    session.conn = None
        self._notify()

    async def _dispatch(self, event: str, data: Json, intent: int | None = None,
                        transform: Callable[[Json, _GatewaySession], Json] | None = None) -> int:
        """Send an event to every session subscribed to `intent`; returns how many."""
        sent = 0
        for session in list(self.sessions.values()):
            if intent is not None and not session.intents & intent:
                continue
            await self._send_dispatch(session, event,
                                      transform(data, session) if transform else data)
            sent += 1
        if not self.sessions:
            log.warning("fake Discord: %s not delivered, no bot is connected", event)
        return sent

    async def _dispatch_message(self, event: str, message: FakeMessage) -> None:
        if message.ephemeral:
            return  # Discord never sends ephemeral messages over the gateway
        intent = INTENT_DIRECT_MESSAGES if message.guild_id is None else INTENT_GUILD_MESSAGES
        await self._dispatch(event, self._message_payload(message, gateway=True), intent,
                             self._strip_content)

    # ----------------------------------------------------------------- gateway faults

    async def drop_gateway(self, *, hold: bool = False, code: int | None = None) -> None:
        """Cut every gateway connection; sessions stay resumable.

        `code=None` aborts the TCP connection (no close frame); a code sends a close frame.
        With `hold=True` new connections wait before HELLO until `release_gateway()`, so
        events dispatched meanwhile are certain to be missed and replayed on RESUME.
        """
        if hold:
            self._gateway_gate.clear()
        for session in self.sessions.values():
            async with session.lock:
                session.conn = None
        for conn in self.gateway_connections:
            if conn.ws.closed:
                continue
            if code is None:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.ws.close(code=code), 2.0)

    def release_gateway(self) -> None:
        self._gateway_gate.set()

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; unless resumable, the session is forgotten."""
        for session in list(self.sessions.values()):
            if session.conn is not None:
                await self._ws_send(session.conn, {"op": OP_INVALID_SESSION, "s": None,
                                                   "t": None, "d": resumable})
            if not resumable:
                self.sessions.pop(session.id, None)

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT (the client should close and RESUME)."""
        for session in list(self.sessions.values()):
            if session.conn is not None:
                await self._ws_send(session.conn, {"op": OP_RECONNECT, "s": None, "t": None,
                                                   "d": None})

    # ----------------------------------------------------------------- HTTP server

    async def _read_body(self, request: web.Request) -> tuple[Any, list[RecordedFile]]:
        files: list[RecordedFile] = []
        body: Any = None
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # nested multipart: unused
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    files.append(RecordedFile(part.name or "", part.filename or "",
                                              part.headers.get("Content-Type"),
                                              bytes(await part.read())))
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        return body, files

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(API_PREFIX):] or "/"
        body, files = await self._read_body(request)
        call = RecordedCall(request.method, path, dict(request.query), body, files,
                            dict(request.headers))
        self.calls.append(call)
        fault = self._take_fault(call)
        if fault is not None:
            call.injected = True
            response = self._fault_response(fault)
        else:
            try:
                response = await self._route(request, call)
            except DiscordAPIError as exc:
                response = exc.response()
            except Exception as exc:
                # 4xx, not 5xx: discord.py retries 5xx for ~25 s, which would hide the bug.
                log.exception("fake Discord: internal error on %s %s", call.method, call.path)
                self.errors.append(f"internal error on {call.method} {call.path}: {exc!r}")
                response = _json({"message": f"fake Discord bug: {exc!r}", "code": 0},
                                 status=400)
        call.status = response.status
        self._notify()
        return response

    async def _route(self, request: web.Request, call: RecordedCall) -> web.StreamResponse:
        path_matched = False
        for entry in self._routes:
            match = entry.pattern.fullmatch(call.path)
            if match is None:
                continue
            path_matched = True
            if entry.method != call.method:
                continue
            if entry.auth and request.headers.get("Authorization") != f"Bot {self.token}":
                return _json({"message": "401: Unauthorized", "code": 0}, status=401)
            req = _Request(call.method, call.path, call.query, call.json, call.files)
            result = await entry.handler(req, **match.groupdict())
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=204)
            return _json(result)
        self.unhandled.append(call)
        log.warning("fake Discord: UNHANDLED %s %s%s (add a route to tests/fake_discord.py)",
                    call.method, API_PREFIX, call.path)
        if path_matched:
            return _json({"message": "405: Method Not Allowed", "code": 0}, status=405)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _handle_other(self, request: web.Request) -> web.Response:
        call = RecordedCall(request.method, request.path, dict(request.query), None, [],
                            dict(request.headers), status=404)
        self.calls.append(call)
        self.unhandled.append(call)
        log.warning("fake Discord: UNHANDLED %s %s (outside %s)", request.method, request.path,
                    API_PREFIX)
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _handle_attachment(self, request: web.Request) -> web.Response:
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=attachment.data,
                            content_type=attachment.content_type or "application/octet-stream")

    def _build_routes(self) -> list[_RouteEntry]:
        channel = r"/channels/(?P<channel_id>\d+)"
        message = channel + r"/messages/(?P<message_id>\d+)"
        reaction = message + r"/reactions/(?P<emoji>[^/]+)"
        commands = r"/applications/(?P<app_id>\d+)(?:/guilds/(?P<guild_id>\d+))?/commands"
        webhook = r"/webhooks/(?P<app_id>\d+)/(?P<token>[^/]+)"
        table: list[tuple[str, str, _Handler, bool]] = [
            ("GET", r"/users/@me", self._get_me, True),
            ("GET", r"/users/(?P<user_id>\d+)", self._get_user, True),
            ("POST", r"/users/@me/channels", self._create_dm, True),
            ("GET", r"/(?:oauth2/)?applications/@me", self._get_application, True),
            ("GET", r"/gateway", self._get_gateway, False),
            ("GET", r"/gateway/bot", self._get_gateway_bot, True),
            ("GET", commands, self._get_commands, True),
            ("PUT", commands, self._put_commands, True),
            ("POST", commands, self._post_command, True),
            ("GET", commands + r"/(?P<command_id>\d+)", self._get_command, True),
            ("PATCH", commands + r"/(?P<command_id>\d+)", self._patch_command, True),
            ("DELETE", commands + r"/(?P<command_id>\d+)", self._delete_command, True),
            ("GET", channel, self._get_channel, True),
            ("GET", channel + r"/messages", self._get_messages, True),
            ("POST", channel + r"/messages", self._post_message, True),
            ("POST", channel + r"/typing", self._post_typing, True),
            ("GET", message, self._get_message, True),
            ("PATCH", message, self._patch_message, True),
            ("DELETE", message, self._delete_message, True),
            ("PUT", reaction + r"/@me", self._put_reaction, True),
            ("DELETE", reaction + r"/@me", self._delete_own_reaction, True),
            ("DELETE", reaction + r"/(?P<user_id>\d+)", self._delete_user_reaction, True),
            ("GET", reaction, self._get_reactions, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)", self._get_guild, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/channels", self._get_guild_channels, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/roles", self._get_guild_roles, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/members", self._get_guild_members, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/members/(?P<user_id>\d+)", self._get_member,
             True),
            ("POST", r"/interactions/(?P<interaction_id>\d+)/(?P<token>[^/]+)/callback",
             self._interaction_callback, False),
            ("POST", webhook, self._post_followup, False),
            ("GET", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._get_webhook_message, False),
            ("PATCH", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._patch_webhook_message, False),
            ("DELETE", webhook + r"/messages/(?P<message_id>@original|\d+)",
             self._delete_webhook_message, False),
        ]
        return [_RouteEntry(m, re.compile(p), h, a) for m, p, h, a in table]

    # ----------------------------------------------------------------- REST: users, app

    async def _get_me(self, req: _Request) -> Json:
        return dict(self.bot_user.payload(), verified=True, mfa_enabled=False, locale="en-US")

    async def _get_user(self, req: _Request, user_id: str) -> Json:
        if int(user_id) not in self.users:
            raise _unknown("User")
        return self._user_payload(int(user_id))

    async def _create_dm(self, req: _Request) -> Json:
        channel = self._dm_channel(int(req.json["recipient_id"]))
        return self._channel_payload(channel)

    async def _get_application(self, req: _Request) -> Json:
        owner = self.world.owner if self.world else self.bot_user
        return {"id": str(self.application_id), "name": self.bot_user.username,
                "description": "", "icon": None, "bot_public": False,
                "bot_require_code_grant": False, "owner": owner.payload(), "team": None,
                "verify_key": "0" * 64, "summary": "", "flags": self._application_flags(),
                "bot": self.bot_user.payload(), "interactions_endpoint_url": None,
                "redirect_uris": [], "tags": []}

    async def _get_gateway(self, req: _Request) -> Json:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, req: _Request) -> Json:
        return {"url": self.gateway_url, "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999,
                                        "reset_after": 86_400_000, "max_concurrency": 1}}

    # ----------------------------------------------------------------- REST: app commands

    def _check_app(self, app_id: str, guild_id: str | None) -> int | None:
        if int(app_id) != self.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access")
        if guild_id is not None and int(guild_id) not in self.guilds:
            raise _unknown("Guild")
        return int(guild_id) if guild_id is not None else None

    def _scoped_commands(self, guild_id: int | None) -> list[Json]:
        return [c for c in self.commands.values()
                if c["guild_id"] == (str(guild_id) if guild_id else None)]

    @staticmethod
    def _validate_command(command: Json) -> None:
        name = command.get("name", "")
        kind = command.get("type", 1)
        if kind == 1:
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise _form_error("name", "APPLICATION_COMMAND_INVALID_NAME",
                                  f"Command name is invalid: {name!r}")
            if not 1 <= len(command.get("description", "")) <= 100:
                raise _form_error("description", "BASE_TYPE_BAD_LENGTH",
                                  f"{name}: description must be 1-100 characters.")
        options = command.get("options") or []
        if len(options) > 25:
            raise _form_error("options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")
        optional_seen = False
        for option in options:
            if option["type"] in (1, 2):
                FakeDiscord._validate_command(dict(option, type=1))
                continue
            if option.get("required"):
                if optional_seen:
                    raise _form_error("options", "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                      f"{name}: required options must come first.")
            else:
                optional_seen = True

    def _store_command(self, payload: Json, guild_id: int | None,
                       existing: Json | None = None) -> Json:
        self._validate_command(payload)
        command = dict(payload)
        command.setdefault("type", 1)
        command["id"] = existing["id"] if existing else str(self._snowflake())
        command["application_id"] = str(self.application_id)
        command["guild_id"] = str(guild_id) if guild_id else None
        command["version"] = str(self._snowflake())
        command.setdefault("default_member_permissions", None)
        self.commands[int(command["id"])] = command
        return command

    async def _get_commands(self, req: _Request, app_id: str, guild_id: str | None) -> list[Json]:
        return self._scoped_commands(self._check_app(app_id, guild_id))

    async def _put_commands(self, req: _Request, app_id: str, guild_id: str | None) -> list[Json]:
        scope = self._check_app(app_id, guild_id)
        old = {(c["name"], c["type"]): c for c in self._scoped_commands(scope)}
        for command in old.values():
            del self.commands[int(command["id"])]
        # Discord keeps a command's id when a bulk overwrite keeps its name and type.
        return [self._store_command(p, scope, old.get((p["name"], p.get("type", 1))))
                for p in req.json or []]

    async def _post_command(self, req: _Request, app_id: str, guild_id: str | None) -> Json:
        scope = self._check_app(app_id, guild_id)
        existing = next((c for c in self._scoped_commands(scope)
                         if (c["name"], c["type"]) == (req.json["name"],
                                                       req.json.get("type", 1))), None)
        return self._store_command(req.json, scope, existing)

    def _command(self, app_id: str, guild_id: str | None, command_id: str) -> Json:
        scope = self._check_app(app_id, guild_id)
        command = self.commands.get(int(command_id))
        if command is None or command["guild_id"] != (str(scope) if scope else None):
            raise _unknown("Application Command")
        return command

    async def _get_command(self, req: _Request, app_id: str, guild_id: str | None,
                           command_id: str) -> Json:
        return self._command(app_id, guild_id, command_id)

    async def _patch_command(self, req: _Request, app_id: str, guild_id: str | None,
                             command_id: str) -> Json:
        command = self._command(app_id, guild_id, command_id)
        return self._store_command(dict(command, **req.json), self._check_app(app_id, guild_id),
                                   command)

    async def _delete_command(self, req: _Request, app_id: str, guild_id: str | None,
                              command_id: str) -> None:
        self.commands.pop(int(self._command(app_id, guild_id, command_id)["id"]))

    # ----------------------------------------------------------------- REST: channels

    def _channel(self, channel_id: str | int) -> FakeChannel:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _unknown("Channel")
        return channel

    def _message(self, channel_id: str | int, message_id: str | int) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if (message is None or message.deleted or message.channel_id != int(channel_id)
                or message.ephemeral):
            raise _unknown("Message")
        return message

    async def _get_channel(self, req: _Request, channel_id: str) -> Json:
        return self._channel_payload(self._channel(channel_id))

    async def _get_messages(self, req: _Request, channel_id: str) -> list[Json]:
        self._channel(channel_id)
        limit = max(1, min(100, int(req.query.get("limit", 50))))
        history = [m for m in self.messages_in(int(channel_id)) if not m.ephemeral]
        if "around" in req.query:
            around = int(req.query["around"])
            older = [m for m in history if m.id <= around][-((limit + 1) // 2):]
            newer = [m for m in history if m.id > around][:limit // 2]
            selected = older + newer
        elif "after" in req.query:
            selected = [m for m in history if m.id > int(req.query["after"])][:limit]
        else:
            before = int(req.query.get("before", 0)) or None
            selected = [m for m in history if before is None or m.id < before][-limit:]
        return [self._message_payload(m) for m in reversed(selected)]  # newest first

    async def _post_typing(self, req: _Request, channel_id: str) -> None:
        self.typing.append((self._channel(channel_id).id, time.monotonic()))

    async def _post_message(self, req: _Request, channel_id: str) -> Json:
        channel = self._channel(channel_id)
        message = self._create_message(channel, self.bot_user.id, req.json or {}, req.files)
        await self._dispatch_message("MESSAGE_CREATE", message)
        return self._message_payload(message)

    async def _get_message(self, req: _Request, channel_id: str, message_id: str) -> Json:
        return self._message_payload(self._message(channel_id, message_id))

    async def _patch_message(self, req: _Request, channel_id: str, message_id: str) -> Json:
        message = self._message(channel_id, message_id)
        body = req.json or {}
        if message.author_id != self.bot_user.id and set(body) - {"flags"}:
            raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
        await self._edit_message(message, body, req.files)
        return self._message_payload(message)

    async def _delete_message(self, req: _Request, channel_id: str, message_id: str) -> None:
        await self._remove_message(self._message(channel_id, message_id))

    # ----------------------------------------------------------------- REST: reactions

    async def _put_reaction(self, req: _Request, channel_id: str, message_id: str,
                            emoji: str) -> None:
        await self._react(self.bot_user.id, self._message(channel_id, message_id), emoji, True)

    async def _delete_own_reaction(self, req: _Request, channel_id: str, message_id: str,
                                   emoji: str) -> None:
        await self._react(self.bot_user.id, self._message(channel_id, message_id), emoji, False)

    async def _delete_user_reaction(self, req: _Request, channel_id: str, message_id: str,
                                    emoji: str, user_id: str) -> None:
        await self._react(int(user_id), self._message(channel_id, message_id), emoji, False)

    async def _get_reactions(self, req: _Request, channel_id: str, message_id: str,
                             emoji: str) -> list[Json]:
        message = self._message(channel_id, message_id)
        users = sorted(message.reactions.get(_emoji_key(emoji), set()))
        return [self._user_payload(u) for u in users]

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

    # ----------------------------------------------------------------- REST: guilds

    def _guild(self, guild_id: str) -> FakeGuild:
        guild = self.guilds.get(int(guild_id))
        if guild is None or self.bot_user.id not in guild.members:
            raise _unknown("Guild")
        return guild

    async def _get_guild(self, req: _Request, guild_id: str) -> Json:
        guild = self._guild(guild_id)
        return {"id": str(guild.id), "name": guild.name, "owner_id": str(guild.owner_id),
                "icon": None, "splash": None, "discovery_splash": None, "banner": None,
                "description": None, "features": [], "emojis": [], "stickers": [],
                "roles": [r.payload() for r in guild.roles.values()],
                "verification_level": 0, "default_message_notifications": 0,
                "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
                "premium_tier": 0, "preferred_locale": "en-US", "afk_timeout": 300,
                "system_channel_flags": 0, "approximate_member_count": len(guild.members)}

    async def _get_guild_channels(self, req: _Request, guild_id: str) -> list[Json]:
        return [self._channel_payload(self.channels[c]) for c in self._guild(guild_id).channel_ids]

    async def _get_guild_roles(self, req: _Request, guild_id: str) -> list[Json]:
        return [r.payload() for r in self._guild(guild_id).roles.values()]

    async def _get_guild_members(self, req: _Request, guild_id: str) -> list[Json]:
        after = int(req.query.get("after", 0))
        limit = int(req.query.get("limit", 1))
        members = sorted((m for m in self._guild(guild_id).members.values()
                          if m.user_id > after), key=lambda m: m.user_id)[:limit]
        return [self._member_payload(m, with_user=True) for m in members]

    async def _get_member(self, req: _Request, guild_id: str, user_id: str) -> Json:
        member = self._guild(guild_id).members.get(int(user_id))
        if member is None:
            raise _unknown("Member")
        return self._member_payload(member, with_user=True)

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

    # ----------------------------------------------------------------- interactions (REST)

    def _interaction_by_token(self, app_id: str, token: str) -> FakeInteraction:
        if int(app_id) != self.application_id:
            raise _unknown("Webhook")
        for interaction in self.interactions.values():
            if interaction.token == token:
                if not interaction.acknowledged:
                    raise _unknown("Webhook")  # no webhook until the interaction is answered
                return interaction
        raise _unknown("Webhook")

    async def _interaction_callback(self, req: _Request, interaction_id: str,
                                    token: str) -> Json | None:
        interaction = self.interactions.get(int(interaction_id))
        if interaction is None or interaction.token != token:
            raise _unknown("Interaction")
        if interaction.acknowledged:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        elapsed = time.monotonic() - interaction.created_at
        if self.interaction_deadline is not None and elapsed > self.interaction_deadline:
            interaction.expired = True
            log.warning("fake Discord: interaction %s answered after %.2fs (limit %.2fs)",
                        interaction.id, elapsed, self.interaction_deadline)
            raise _unknown("Interaction")
        body = req.json or {}
        rtype = int(body.get("type", 0))
        data = body.get("data") or {}
        if rtype not in _ALLOWED_CALLBACKS.get(interaction.type, set()):
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                              f"callback type {rtype} is invalid for interaction type "
                              f"{interaction.type}")
        channel = self.channels[interaction.channel_id]
        message: FakeMessage | None = None
        if rtype == CALLBACK_MESSAGE:
            message = self._create_message(
                channel, self.bot_user.id, data, req.files, interaction=interaction,
                type=MESSAGE_CHAT_INPUT if interaction.type == INTERACTION_COMMAND
                else MESSAGE_DEFAULT, flags=int(data.get("flags") or 0) & (FLAG_EPHEMERAL | 4))
        elif rtype == CALLBACK_DEFERRED_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._create_message(channel, self.bot_user.id, {}, [], flags=flags,
                                           interaction=interaction, validate=False,
                                           type=MESSAGE_CHAT_INPUT
                                           if interaction.type == INTERACTION_COMMAND
                                           else MESSAGE_DEFAULT)
        elif rtype in (CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE):
            if interaction.source_message_id is None:
                raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID",
                                  "this interaction has no message to update")
            message = self.messages[interaction.source_message_id]
        elif rtype == CALLBACK_AUTOCOMPLETE:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise _form_error("data", "BASE_TYPE_MAX_LENGTH", "25 choices at most.")
            interaction.choices = choices
        elif rtype == CALLBACK_MODAL:
            if len(data.get("title", "")) > 45:
                raise _form_error("data", "BASE_TYPE_MAX_LENGTH", "Modal title: 45 at most.")
            _validate_components(data.get("components") or [], "data.components")
            interaction.modal = data
            self._modals.append((interaction, data))
        interaction.response_type = rtype
        if message is not None:
            interaction.original_message_id = message.id
        interaction.responses.append(ResponseRecord(
            "callback", rtype, data, list(req.files), message.id if message else None,
            bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)))
        self._notify()
        if rtype == CALLBACK_UPDATE_MESSAGE and message is not None:
            await self._edit_message(message, data, req.files)
        elif rtype in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE) and message is not None:
            await self._dispatch_message("MESSAGE_CREATE", message)
        if "with_response" not in req.query:
            return None
        resource: Json = {"type": rtype}
        callback: Json = {"id": str(interaction.id), "type": interaction.type}
        if message is not None:
            resource["message"] = self._message_payload(message)
            callback.update(response_message_id=str(message.id),
                            response_message_loading=message.loading,
                            response_message_ephemeral=message.ephemeral)
        return {"interaction": callback, "resource": resource}

    def _webhook_target(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            target_id = interaction.original_message_id
        else:
            target_id = int(message_id)
            if target_id not in (interaction.original_message_id,
                                 *interaction.followup_message_ids):
                raise _unknown("Message")
        message = self.messages.get(target_id) if target_id is not None else None
        if message is None or message.deleted:
            raise _unknown("Message")
        return message

    async def _post_followup(self, req: _Request, app_id: str, token: str) -> Json | None:
        interaction = self._interaction_by_token(app_id, token)
        body = req.json or {}
        original = interaction.original_message
        if (interaction.response_type == CALLBACK_DEFERRED_MESSAGE and original is not None
                and original.loading and not original.deleted):
            # The first follow-up after a "thinking" defer replaces it, and keeps the
            # defer's ephemerality whatever the follow-up's flags say.
            await self._edit_message(original, body, req.files)
            message = original
        else:
            channel = self.channels[interaction.channel_id]
            flags = int(body.get("flags") or 0) & (FLAG_EPHEMERAL | 4)
            message = self._create_message(channel, self.bot_user.id, body, req.files,
                                           flags=flags, interaction=interaction)
            interaction.followup_message_ids.append(message.id)
            await self._dispatch_message("MESSAGE_CREATE", message)
        interaction.responses.append(ResponseRecord(
            "followup", None, body, list(req.files), message.id, message.ephemeral))
        self._notify()
        if req.query.get("wait") in ("1", "true", "True"):
            return self._message_payload(message)
        return None

    async def _get_webhook_message(self, req: _Request, app_id: str, token: str,
                                   message_id: str) -> Json:
        interaction = self._interaction_by_token(app_id, token)
        return self._message_payload(self._webhook_target(interaction, message_id))

    async def _patch_webhook_message(self, req: _Request, app_id: str, token: str,
                                     message_id: str) -> Json:
        interaction = self._interaction_by_token(app_id, token)
        message = self._webhook_target(interaction, message_id)
        await self._edit_message(message, req.json or {}, req.files)
        kind = "edit_original" if message.id == interaction.original_message_id \
            else "edit_followup"
        interaction.responses.append(ResponseRecord(kind, None, req.json or {}, list(req.files),
                                                    message.id, message.ephemeral))
        self._notify()
        return self._message_payload(message)

    async def _delete_webhook_message(self, req: _Request, app_id: str, token: str,
                                      message_id: str) -> None:
        interaction = self._interaction_by_token(app_id, token)
        message = self._webhook_target(interaction, message_id)
        kind = "delete_original" if message.id == interaction.original_message_id \
            else "delete_followup"
        await self._remove_message(message)
        interaction.responses.append(ResponseRecord(kind, None, {}, [], message.id,
                                                    message.ephemeral))
        self._notify()

    # ----------------------------------------------------------------- test driver: messages

    async def send_message(self, channel_id: int, author_id: int, content: str = "", *,
                           mentions_bot: bool = False, reply_to: int | None = None,
                           mention_replied: bool = True,
                           attachments: Sequence[tuple[str, bytes]] = (),
                           embeds: Sequence[Json] = ()) -> FakeMessage:
        """A user posts a message; the bot gets MESSAGE_CREATE.

        `mentions_bot` prefixes `<@bot>`; any `<@id>`/`<@&id>` in content are mentions too.
        `reply_to` makes it a reply (message_reference + referenced_message) that pings the
        replied author unless `mention_replied=False`. `attachments` are (filename, bytes).
        """
        channel = self.channels[_id(channel_id)]
        author_id = _id(author_id)
        if channel.guild_id is not None and author_id not in self.guilds[channel.guild_id].members:
            raise ValueError(f"user {author_id} is not a member of guild {channel.guild_id}")
        mention = f"<@{self.bot_user.id}>"
        if mentions_bot and mention not in content:
            content = f"{mention} {content}".rstrip()
        body: Json = {"content": content, "embeds": list(embeds)}
        if reply_to is not None:
            body["message_reference"] = {"message_id": str(_id(reply_to))}
            if not mention_replied:
                body["allowed_mentions"] = {"parse": ["users", "roles", "everyone"],
                                            "replied_user": False}
        files = [RecordedFile(f"files[{i}]", name, None, data)
                 for i, (name, data) in enumerate(attachments)]
        message = self._create_message(channel, author_id, body, files)
        await self._dispatch_message("MESSAGE_CREATE", message)
        return message

    async def send_dm(self, user_id: int, content: str, **kwargs: Any) -> FakeMessage:
        """A user DMs the bot (MESSAGE_CREATE without guild_id)."""
        channel = self._dm_channel(_id(user_id))
        return await self.send_message(channel.id, user_id, content, **kwargs)

    async def edit_message(self, message_id: int, content: str) -> FakeMessage:
        """A user edits their message; the bot gets MESSAGE_UPDATE."""
        message = self.messages[_id(message_id)]
        await self._edit_message(message, {"content": content}, [])
        return message

    async def delete_message(self, message_id: int) -> None:
        await self._remove_message(self.messages[_id(message_id)])

    async def add_reaction(self, user_id: int, channel_id: int, message_id: int,
                           emoji: str) -> None:
        """A user reacts; the bot gets MESSAGE_REACTION_ADD (with member in guilds)."""
        await self._react(_id(user_id), self._message(_id(channel_id), _id(message_id)),
                          emoji, True)

    async def remove_reaction(self, user_id: int, channel_id: int, message_id: int,
                              emoji: str) -> None:
        await self._react(_id(user_id), self._message(_id(channel_id), _id(message_id)),
                          emoji, False)

    # ----------------------------------------------------------------- test driver: interactions

    def _find_command(self, name: str, guild_id: int | None, type: int = 1) -> Json:
        scopes = [str(guild_id), None] if guild_id else [None]
        for scope in scopes:
            for command in self.commands.values():
                if (command["name"], command["type"], command["guild_id"]) == (name, type, scope):
                    return command
        registered = sorted(f"{c['name']} (guild {c['guild_id']})" for c in self.commands.values())
        raise LookupError(f"no command {name!r} registered for guild {guild_id}; the bot "
                          f"registered: {registered or 'nothing (did it sync its tree?)'}")

    def _option_value(self, definition: Json, value: Any, resolved: Json,
                      guild: FakeGuild | None) -> Any:
        kind = definition["type"]
        if kind == 3:
            return str(value)
        if kind == 4:
            return int(value)
        if kind == 10:
            return float(value)
        if kind == 5:
            return bool(value)
        if kind == 11:
            if isinstance(value, FakeAttachment):
                attachment = value
            else:
                filename, data = value
                channel_id = 0
                attachment = self._attachments_from(
                    channel_id, {}, [RecordedFile("files[0]", filename, None, data)])[0]
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        target = _id(value)
        if kind in (6, 9) and target in self.users:
            resolved.setdefault("users", {})[str(target)] = self._user_payload(target)
            member = guild.members.get(target) if guild else None
            if member is not None:
                resolved.setdefault("members", {})[str(target)] = self._member_payload(
                    member, permissions=True)
        elif kind in (8, 9) and guild is not None and target in guild.roles:
            resolved.setdefault("roles", {})[str(target)] = guild.roles[target].payload()
        elif kind == 7 and target in self.channels:
            channel = self.channels[target]
            resolved.setdefault("channels", {})[str(target)] = self._channel_payload(
                channel, for_user=self.bot_user.id)
        else:
            raise ValueError(f"option {definition['name']!r}: nothing to resolve for {value!r}")
        return str(target)

    def _build_options(self, command: Json, values: Mapping[str, Any], *,
                       group: str | None, subcommand: str | None, focused: str | None,
                       guild: FakeGuild | None) -> tuple[list[Json], Json]:
        definitions = command.get("options") or []
        path: list[tuple[int, str]] = []
        for kind, wanted in ((2, group), (1, subcommand)):
            if wanted is None:
                continue
            option = next((o for o in definitions if o["type"] == kind
                           and o["name"] == wanted), None)
            if option is None:
                raise LookupError(f"/{command['name']} has no "
                                  f"{'group' if kind == 2 else 'subcommand'} {wanted!r}")
            path.append((kind, wanted))
            definitions = option.get("options") or []
        if any(o["type"] in (1, 2) for o in definitions):
            names = [o["name"] for o in definitions]
            raise LookupError(f"/{command['name']} needs a subcommand/group: {names}")
        by_name = {o["name"]: o for o in definitions}
        unknown = set(values) - set(by_name)
        if unknown:
            raise LookupError(f"/{command['name']} has no options {sorted(unknown)}; "
                              f"it has {sorted(by_name)}")
        if focused is None:
            missing = [n for n, o in by_name.items() if o.get("required") and n not in values]
            if missing:
                raise ValueError(f"/{command['name']}: required options missing: {missing}")
        resolved: Json = {}
        options: list[Json] = []
        for name, value in values.items():
            definition = by_name[name]
            if name == focused:
                options.append({"name": name, "type": definition["type"], "value": str(value),
                                "focused": True})
                continue
            converted = self._option_value(definition, value, resolved, guild)
            choices = definition.get("choices")
            if choices and converted not in [c["value"] for c in choices]:
                raise ValueError(f"option {name!r}={converted!r} is not one of the choices "
                                 f"{[c['value'] for c in choices]}")
            options.append({"name": name, "type": definition["type"], "value": converted})
        for kind, wanted in reversed(path):
            options = [{"name": wanted, "type": kind, "options": options}]
        return options, resolved

    def _command_visible(self, command: Json, user_id: int, channel: FakeChannel) -> None:
        if channel.guild_id is None:
            contexts = command.get("contexts")
            if command.get("dm_permission") is False or (contexts is not None
                                                         and 1 not in contexts):
                raise PermissionError(f"/{command['name']} is not available in DMs")
            return
        required = command.get("default_member_permissions")
        if required is not None:
            have = self.permissions_of(channel.guild_id, user_id)
            if int(required) & ~have:
                raise PermissionError(
                    f"user {user_id} lacks default_member_permissions={required} for "
                    f"/{command['name']}: Discord would not offer the command")

    async def _send_interaction(self, itype: int, data: Json, *, user_id: int, channel_id: int,
                                message: FakeMessage | None = None) -> FakeInteraction:
        channel = self.channels[_id(channel_id)]
        user_id = _id(user_id)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        interaction_id = self._snowflake()
        token = f"aW50ZXJhY3Rpb24.{interaction_id}.{secrets.token_urlsafe(24)}"
        payload: Json = {
            "id": str(interaction_id), "application_id": str(self.application_id),
            "type": itype, "data": data, "token": token, "version": 1,
            "channel_id": str(channel.id),
            "channel": self._channel_payload(channel, for_user=user_id),
            "app_permissions": str(self.permissions_of(guild.id, self.bot_user.id)
                                   if guild else ALL_PERMISSIONS),
            "locale": "en-US", "entitlements": [], "attachment_size_limit": UPLOAD_LIMIT,
            "context": 0 if guild else 1,
            "authorizing_integration_owners": ({"0": str(guild.id)} if guild
                                               else {"1": str(user_id)}),
        }
        if guild is not None:
            member = guild.members.get(user_id)
            if member is None:
                raise ValueError(f"user {user_id} is not a member of guild {guild.id}")
            payload.update(guild_id=str(guild.id), guild_locale="en-US",
                           guild={"id": str(guild.id), "locale": "en-US", "features": []},
                           member=self._member_payload(member, with_user=True, permissions=True))
        else:
            payload["user"] = self._user_payload(user_id)
        if message is not None:
            payload["message"] = self._message_payload(message, gateway=True)
        interaction = FakeInteraction(self, interaction_id, token, itype, user_id, channel.id,
                                      guild.id if guild else None, payload,
                                      source_message_id=message.id if message else None)
        self.interactions[interaction_id] = interaction
        await self._dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def invoke_command(self, name: str, options: Mapping[str, Any] | None = None, *,
                             user_id: int, channel_id: int, subcommand: str | None = None,
                             group: str | None = None, crafted: bool = False) -> FakeInteraction:
        """A user runs a slash command the bot registered (INTERACTION_CREATE type 2).

        `group` is a subcommand group (`/cmd group sub`), `subcommand` the subcommand.
        Option values are Python values; users, roles, channels (ids or fakes) are resolved,
        attachments are `(filename, bytes)`. Mistakes a Discord client would not let a user
        make (unknown or missing options, a value outside the choices, a command the user
        cannot see) raise here. `crafted=True` skips only the visibility check, as a
        hand-made request would: the bot's own server-side checks must refuse it.
        """
        channel = self.channels[_id(channel_id)]
        command = self._find_command(name, channel.guild_id)
        if not crafted:
            self._command_visible(command, _id(user_id), channel)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, resolved = self._build_options(command, options or {}, group=group,
                                              subcommand=subcommand, focused=None, guild=guild)
        data: Json = {"id": command["id"], "name": name, "type": command["type"],
                      "options": built}
        if resolved:
            data["resolved"] = resolved
        if command["guild_id"]:
            data["guild_id"] = command["guild_id"]
        return await self._send_interaction(INTERACTION_COMMAND, data, user_id=user_id,
                                            channel_id=channel.id)

    async def autocomplete(self, name: str, options: Mapping[str, Any], *, focused: str,
                           user_id: int, channel_id: int, subcommand: str | None = None,
                           group: str | None = None) -> FakeInteraction:
        """A user types into option `focused` (INTERACTION_CREATE type 4); the bot's choices
        land in `interaction.choices` (await `wait_response()` first)."""
        channel = self.channels[_id(channel_id)]
        command = self._find_command(name, channel.guild_id)
        guild = self.guilds.get(channel.guild_id) if channel.guild_id else None
        built, resolved = self._build_options(command, options, group=group,
                                              subcommand=subcommand, focused=focused,
                                              guild=guild)
        data: Json = {"id": command["id"], "name": name, "type": command["type"],
                      "options": built}
        if resolved:
            data["resolved"] = resolved
        if command["guild_id"]:
            data["guild_id"] = command["guild_id"]
        return await self._send_interaction(INTERACTION_AUTOCOMPLETE, data, user_id=user_id,
                                            channel_id=channel.id)

    def _component(self, message: FakeMessage, custom_id: str) -> Json:
        for component in _walk_components(message.components):
            if component.get("custom_id") == custom_id:
                if component.get("disabled"):
                    raise ValueError(f"component {custom_id!r} is disabled")
                return component
        raise LookupError(f"message {message.id} has no component {custom_id!r}; it has "
                          f"{message.custom_ids()}")

    async def click_button(self, message_id: int, custom_id: str, *,
                           user_id: int) -> FakeInteraction:
        """A user clicks a button (INTERACTION_CREATE type 3, message included)."""
        message = self.messages[_id(message_id)]
        component = self._component(message, custom_id)
        if component["type"] != 2:
            raise ValueError(f"component {custom_id!r} is not a button")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(INTERACTION_COMPONENT, data, user_id=user_id,
                                            channel_id=message.channel_id, message=message)

    async def select(self, message_id: int, custom_id: str, values: Sequence[str], *,
                     user_id: int) -> FakeInteraction:
        """A user picks options of a select menu (string selects: option values)."""
        message = self.messages[_id(message_id)]
        component = self._component(message, custom_id)
        if component["type"] not in (3, 5, 6, 7, 8):
            raise ValueError(f"component {custom_id!r} is not a select menu")
        data = {"custom_id": custom_id, "component_type": component["type"],
                "values": [str(v) for v in values]}
        return await self._send_interaction(INTERACTION_COMPONENT, data, user_id=user_id,
                                            channel_id=message.channel_id, message=message)

    async def submit_modal(self, custom_id: str, values: Mapping[str, str], *, user_id: int,
                           channel_id: int | None = None) -> FakeInteraction:
        """A user fills in and submits the latest modal the bot opened with `custom_id`.

        `values` maps text inputs' custom_ids to what the user typed.
        """
        opened = next(((i, m) for i, m in reversed(self._modals)
                       if m.get("custom_id") == custom_id), None)
        if opened is None:
            shown = [m.get("custom_id") for _, m in self._modals]
            raise LookupError(f"the bot opened no modal {custom_id!r}; it opened {shown}")
        source, modal = opened
        inputs = {c["custom_id"]: c for c in _walk_components(modal.get("components", []))
                  if "custom_id" in c}
        unknown = set(values) - set(inputs)
        if unknown:
            raise LookupError(f"modal {custom_id!r} has no inputs {sorted(unknown)}; "
                              f"it has {sorted(inputs)}")

        def fill(components: Sequence[Json]) -> list[Json]:
            filled: list[Json] = []
            for component in components:
                kind = component["type"]
                if kind == 1:
                    filled.append({"type": 1, "components": fill(component["components"])})
                elif kind == 18:
                    filled.append({"type": 18, "id": component.get("id"),
                                   "component": fill([component["component"]])[0]})
                elif kind == 4:
                    value = values.get(component["custom_id"], component.get("value") or "")
                    if component.get("required", True) and not value:
                        raise ValueError(f"text input {component['custom_id']!r} is required")
                    if len(value) > component.get("max_length", 4000) or \
                            len(value) < component.get("min_length", 0):
                        raise ValueError(f"text input {component['custom_id']!r}: length "
                                         f"{len(value)} is out of bounds")
                    filled.append({"type": 4, "id": component.get("id"),
                                   "custom_id": component["custom_id"], "value": value})
                elif "custom_id" in component:
                    picked = values.get(component["custom_id"], [])
                    filled.append({"type": kind, "id": component.get("id"),
                                   "custom_id": component["custom_id"],
                                   "values": [picked] if isinstance(picked, str) else picked})
            return filled

        data = {"custom_id": custom_id, "components": fill(modal.get("components", []))}
        message = (self.messages.get(source.source_message_id)
                   if source.source_message_id else None)
        return await self._send_interaction(
            INTERACTION_MODAL_SUBMIT, data, user_id=user_id,
            channel_id=channel_id if channel_id is not None else source.channel_id,
            message=message)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started fake with discord.py pointed at it; bots started on it are closed after."""
    async with FakeDiscord() as fake:
        yield fake

"""`FakeDiscord`, the parts put together: its state, starting and stopping the server and
pointing discord.py at it, running bots, waiting on what happens, and the `fake_discord`
fixture.

PYTEST_DONT_REWRITE: as for the package (see its docstring), so `assert_clean` is the same
plain assert however the package was first imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import discord
import pytest
import yarl
from aiohttp import web
from discord.gateway import DiscordWebSocket
from discord.http import Route

from .driver import DriverMixin
from .gateway import GatewayMixin, _GatewayConnection, _GatewaySession
from .interactions import FakeInteraction, InteractionsMixin
from .messages import MessagesMixin
from .payloads import PayloadsMixin
from .protocol import API_PREFIX, DEFAULT_TOKEN, PRIVILEGED_INTENTS, Json, _id
from .records import DispatchRecord, GatewayFrame, RecordedCall, ResponseRecord
from .rest import RestMixin, _Fault
from .world import (
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeUser,
    World,
    WorldMixin,
)

log = logging.getLogger("fake_discord")

T = TypeVar("T")


class FakeDiscord(DriverMixin, InteractionsMixin, MessagesMixin, RestMixin, GatewayMixin,
                  PayloadsMixin, WorldMixin):
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
        # an interaction's webhook token (follow-ups, their edits) lives 15 minutes; tests
        # move the fake's clock forward instead of waiting
        self.webhook_token_ttl_s = 15 * 60.0
        self.clock_offset_s = 0.0
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


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started fake with discord.py pointed at it; bots started on it are closed after."""
    async with FakeDiscord() as fake:
        yield fake

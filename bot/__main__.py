"""`python -m bot`: the Discord bot when DISCORD_TOKEN is set, else the console chat."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from settings import Config, discord_token, load_config_or_exit, settings_markdown
from settings.logs import configure_logging, register_secret
from storage import Database, StorageError
from trainer.modeling import ModelError

if TYPE_CHECKING:  # annotations only: `python -m bot settings` loads none of these
    from .engine_base import GenerationEngine
    from .http import HttpServer
    from .routing import Router

log = logging.getLogger("bot")

HEARTBEAT_FILE = "heartbeat"
HEARTBEAT_EVERY_S = 15
HEARTBEAT_STALE_S = 90


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="A Discord bot that learns from its own channel. Without DISCORD_TOKEN "
                    "in the environment it starts the console chat.")
    parser.add_argument("--config", help="settings file (default: $BOT_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="Discord bot if DISCORD_TOKEN is set, else console (default)")
    sub.add_parser("chat", help="console chat on stdin/stdout, even when a token is set")
    sub.add_parser("healthcheck", help="exit 0 if a running bot wrote its heartbeat recently")
    sub.add_parser("settings", help="print every setting with its default (Markdown)")
    return parser


async def until_terminated(work) -> int:
    """Await `work`; SIGTERM (`docker stop`, systemd) cancels it as Ctrl-C does, so every
    `finally` closes what it opened: the Discord session, the engine, the HTTP server,
    the database. Returns 143 (128 + SIGTERM) then."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    terminated = asyncio.Event()

    def terminate() -> None:
        if terminated.is_set():  # a second SIGTERM must not cut the shutdown short
            log.info("SIGTERM again: still shutting down")
            return
        log.info("SIGTERM: shutting down")
        terminated.set()
        task.cancel()

    # (where the loop cannot take signal handlers, SIGTERM keeps its default action)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await work
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        log.info("stopped cleanly after SIGTERM")
        return 143
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _heartbeat(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        await asyncio.to_thread(path.write_text, f"{time.time():.0f}\n")
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def with_http_server(config: Config, engine: GenerationEngine, db: Database,
                     router: Router) -> tuple[GenerationEngine, HttpServer | None]:
    """The HTTP server when `[http] enabled` (else None), and the engine the bot should
    use: the server's metered one, so that /metrics counts every answer, not only the API's.
    Raises HttpConfigError (no token, ...) before anything loads."""
    from .http import HttpConfigError, HttpServer

    if not config.http.enabled:
        if config.web.enabled:
            raise HttpConfigError("[web] enabled = true needs the bot's HTTP server, which "
                                  "serves the review page: set [http] enabled = true too")
        return engine, None

    server = HttpServer.from_config(config, engine, db, router)
    return server.engine, server


def mount_review_site(config: Config, server: HttpServer, db: Database,
                      engine: GenerationEngine, *, training=None, describe_channel=None,
                      check_admin=None):
    """The web review page on the HTTP server when `[web] enabled`; its sessions (or None)."""
    if not config.web.enabled:
        return None
    from .web.app import create_review_app
    from .web.sessions import MOUNT_PATH, ReviewSessions

    sessions = ReviewSessions.from_config(config.web)
    server.mount(MOUNT_PATH, create_review_app(
        config=config, db=db, sessions=sessions, training=training, promote=engine.promote,
        describe_channel=describe_channel, check_admin=check_admin))
    return sessions


async def run_console(config: Config) -> int:
    from .console import ConsoleChat
    from .memory import with_memory
    from .remote_engine import create_engine
    from .routing import Router
    from .training import TrainingService

    heartbeat = asyncio.create_task(_heartbeat(config.data_dir / HEARTBEAT_FILE))
    try:
        async with Database(config.database_path,
                            busy_timeout_ms=config.storage.busy_timeout_ms) as db:
            router = Router(config, db)
            engine = with_memory(config, db, create_engine(config, router))
            engine, server = with_http_server(config, engine, db, router)
            chat = ConsoleChat(config, engine, db,
                               training=TrainingService(config, db, engine))  # one per process
            sessions = (mount_review_site(config, server, db, engine, training=chat.training)
                        if server is not None else None)
            await engine.start()
            try:
                if server is not None:
                    await server.start()
                if sessions is not None:  # the console's user is the admin
                    print(f"review page: {sessions.mint_link(0, 'console')}", flush=True)
                return await chat.run()
            finally:
                if server is not None:
                    await server.close()
                await engine.close()
    finally:
        heartbeat.cancel()


async def run_discord(config: Config, token: str) -> int:
    import discord

    from .discord_bot import ChannelBot
    from .memory import with_memory
    from .remote_engine import create_engine
    from .routing import Router
    from .scheduler import NightlyTraining
    from .training import TrainingService

    heartbeat = asyncio.create_task(_heartbeat(config.data_dir / HEARTBEAT_FILE))
    try:
        async with Database(config.database_path,
                            busy_timeout_ms=config.storage.busy_timeout_ms) as db:
            router = Router(config, db)
            engine = with_memory(config, db, create_engine(config, router))
            engine, server = with_http_server(config, engine, db, router)
            training = TrainingService(config, db, engine)  # one per process
            bot = ChannelBot(config, db, engine, router, training)
            if server is not None:
                bot.review_sessions = mount_review_site(
                    config, server, db, engine, training=bot.training,
                    describe_channel=lambda c: getattr(bot.get_channel(c), "name", None),
                    check_admin=bot.still_admin)
            nightly = NightlyTraining(config, db, bot.training)  # owns its catch-up run
            try:
                await bot.login(token)  # a wrong token fails here, before the model loads
                await engine.start()
                if server is not None:
                    await server.start()
                await bot.training.recover()
                await nightly.start()
                await bot.connect()
            except discord.LoginFailure:
                print("error: Discord refused DISCORD_TOKEN (401 Unauthorized): copy the bot "
                      "token again from the Developer Portal (Bot → Reset Token)",
                      file=sys.stderr)
                return 1
            except discord.PrivilegedIntentsRequired:
                print("error: the Message Content intent is not enabled for this bot: turn it "
                      "on in the Developer Portal (Bot → Privileged Gateway Intents)",
                      file=sys.stderr)
                return 1
            finally:
                await nightly.close()  # a catch-up run still going is cancelled
                await bot.training.close()
                await bot.close()
                if server is not None:
                    await server.close()
                await engine.close()
    finally:
        heartbeat.cancel()
    return 0


def healthcheck(config: Config) -> int:
    path = config.data_dir / HEARTBEAT_FILE
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: no heartbeat at {path}")
        return 1
    if age > HEARTBEAT_STALE_S:
        print(f"unhealthy: last heartbeat {age:.0f} s ago")
        return 1
    print(f"healthy: heartbeat {age:.0f} s ago")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "settings":
        print(settings_markdown(), end="")
        return 0
    token = discord_token()
    register_secret(token)
    config = load_config_or_exit(args.config)
    configure_logging(config.logging.level)
    if not config.model.allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads unless allowed
    command = args.command or "run"
    if command == "healthcheck":
        return healthcheck(config)
    from .generation import EngineError
    from .http import HttpConfigError
    from .memory import MemoryUnavailable

    try:
        if command == "run" and token:
            return asyncio.run(until_terminated(run_discord(config, token)))
        return asyncio.run(until_terminated(run_console(config)))
    except (ModelError, StorageError, EngineError, HttpConfigError, MemoryUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

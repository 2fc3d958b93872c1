"""Console chat: the same engine, storage and feedback loop as Discord, on stdin/stdout.

Interactive (a `you>` prompt on a terminal) or scripted (one prompt per line
of piped stdin, answers on stdout, exit 0 at end of input). The console is one
channel (id 0) with one user (id 0) who is also its admin: a single /good
makes an answer a review candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from storage import Database, StorageError

from .config import Config
from .engine import Engine, EngineError, GenerationRequest, Sampling
from .training import TrainingBusy, TrainingService

log = logging.getLogger(__name__)

CONSOLE_CHANNEL_ID = 0
CONSOLE_USER_ID = 0
CONSOLE_MIN_SCORE = 1  # the console has one voter

HELP = """Type a question and press Enter. Commands:
  /good, /bad                 vote on the last answer (a /good makes it a review candidate)
  /adapter list               adapters, their serving version, the one this console uses
  /adapter use NAME           answer with adapter NAME from now on (/adapter use base: none)
  /adapter create NAME        a new, untrained adapter
  /adapter info NAME          its versions and their metrics
  /adapter prompt NAME TEXT   its system prompt (/adapter prompt NAME -: the default)
  /adapter rollback NAME [V]  serve an earlier version again (default: the one before)
  /review                     the next pair waiting for review
  /review approve|reject [ID] decide on it (default: the pair shown by /review)
  /review edit ID TEXT        approve with a corrected answer
  /review also ID QUESTION    approve, and teach QUESTION as another way to ask it
  /stats                      answers, votes, pairs, adapters
  /train [NAME]               train this console's adapter (or NAME) on its approved pairs
  /help                       this text
  /quit                       leave (end of input does the same)"""


def pair_id(text: str) -> int:
    """The ID argument of /review; ValueError (shown as an error line) says what to type."""
    if not text.lstrip("#").isdigit():
        raise ValueError(f"{text!r} is not a pair number: /review shows the next pair with "
                         f"its number (#12), e.g. /review approve 12")
    return int(text.lstrip("#"))


class ConsoleChat:
    def __init__(self, config: Config, engine: Engine, db: Database,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
        self.config, self.engine, self.db = config, engine, db
        self.stdin, self.stdout = stdin, stdout
        self.interactive = stdin.isatty()
        self.history: list[dict[str, str]] = []
        self.last_turn: int | None = None
        self.shown_review: int | None = None
        self.served: tuple[str | None, int | None] = (None, None)  # who answered last
        self.training = TrainingService(config, engine=engine, db=db)
        self.commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "/good": lambda args: self.vote(+1), "/bad": lambda args: self.vote(-1),
            "/adapter": self.adapter, "/review": self.review, "/stats": self.stats,
            "/train": self.train, "/help": self.help,
        }

    def say(self, text: str = "", end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    async def run(self) -> int:
        await self.training.recover()
        if self.interactive:
            self.say("Console chat. /help lists the commands, /quit leaves.")
        while True:
            if self.interactive:
                self.say("you> ", end="")
            line = await self.read_line()
            if not line:  # end of input
                return 0
            text = line.strip()
            if not text:
                continue
            if text.split()[0].lower() in ("/quit", "/exit"):
                return 0
            if text.startswith("/"):
                await self.command(text)
            else:
                await self.ask(text)

    async def read_line(self) -> str:
        """One line of input, read in a daemon thread: a read blocked on the terminal never
        holds up the shutdown (SIGTERM or Ctrl-C would otherwise wait for a line)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()

        def settle(line: str | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(line or "")

        def read() -> None:
            try:
                line, error = self.stdin.readline(), None
            except Exception as exc:
                line, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, line, error)

        threading.Thread(target=read, name="console-input", daemon=True).start()
        return await future

    async def command(self, text: str) -> None:
        name, *args = text.split()
        handler = self.commands.get(name.lower())
        if handler is None:
            self.say(f"unknown command {name}; /help lists the commands")
            return
        try:
            await handler(args)
        except (StorageError, EngineError, ValueError) as exc:
            self.say(f"error: {exc}")

    async def ask(self, question: str) -> str:
        router = getattr(self.engine, "router", None)
        route = await router.current(CONSOLE_CHANNEL_ID) if router is not None else None
        if route is not None and self.history and (route.adapter, route.version) != self.served:
            self.restart()  # promoted overnight, or another adapter chosen
        messages = [*self.history[-2 * self.config.discord.history_turns:],
                    {"role": "user", "content": question}]
        request = GenerationRequest(channel_id=CONSOLE_CHANNEL_ID, messages=messages,
                                    sampling=Sampling.from_config(self.config.engine),
                                    route=route)
        if self.interactive:
            self.say("bot> ", end="")
        try:
            generation = await self.engine.submit(request)
            async for chunk in generation:
                self.say(chunk, end="")
        except Exception:
            log.exception("generation failed")
            self.say("(sorry, the model failed to answer; see the log)")
            return ""
        answer = generation.text.strip()
        self.say()
        route = generation.route
        if route.version is not None and (route.adapter, route.version) != self.served:
            self.say(f"(answered by {route.adapter} v{route.version})")
        self.served = (route.adapter, route.version)
        self.last_turn = await self.db.record_turn(
            source="console", channel_id=CONSOLE_CHANNEL_ID, author_id=CONSOLE_USER_ID,
            question=question, answer=answer, context=messages[:-1],
            adapter_name=route.adapter, adapter_version=route.version,
            latency_ms=generation.latency_ms)
        self.history += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        return answer

    async def vote(self, value: int) -> None:
        if self.last_turn is None:
            self.say("nothing to vote on yet: ask a question first")
            return
        result = await self.db.cast_vote(self.last_turn, CONSOLE_USER_ID, value,
                                         min_score=CONSOLE_MIN_SCORE)
        mark = "👍" if value > 0 else "👎"
        note = " — now a review candidate (/review)" if result.became_candidate else ""
        self.say(f"{mark} recorded on answer #{self.last_turn} (score {result.score}){note}")

    async def adapter(self, args: list[str]) -> None:
        action = args[0].lower() if args else "list"
        if action == "list":
            bound = await self.db.resolve_adapter_for(CONSOLE_CHANNEL_ID)
            adapters = await self.db.list_adapters()
            if not adapters:
                self.say("no adapters yet: /adapter create NAME")
            for record in adapters:
                serving = await self.db.serving_version(record.name)
                state = f"v{serving.version} serving" if serving else "not trained yet"
                here = "  ← this console" if bound and bound.name == record.name else ""
                self.say(f"  {record.name}: {state}{here}")
            if bound is None:
                self.say("this console answers with the base model")
        elif action == "use" and len(args) == 2:
            if args[1] == "base":
                await self.db.unbind_channel(CONSOLE_CHANNEL_ID)
                self.say("this console now answers with the base model")
            else:
                await self.db.bind_channel(CONSOLE_CHANNEL_ID, args[1],
                                           bound_by=CONSOLE_USER_ID)
                serving = await self.db.serving_version(args[1])
                version = f"v{serving.version}" if serving else "the base model until trained"
                self.say(f"this console now answers with {args[1]} ({version})")
        elif action == "create" and len(args) == 2:
            await self.db.create_adapter(args[1], self.config.model.name,
                                         created_by=CONSOLE_USER_ID)
            self.say(f"created adapter {args[1]}; /adapter use {args[1]} to answer with it")
        elif action == "info" and len(args) == 2:
            await self.db.require_adapter(args[1])
            versions = await self.db.versions(args[1])
            if not versions:
                self.say(f"{args[1]} has no trained version yet")
            for v in versions:
                metrics = ", ".join(f"{k} {val:.4g}" if isinstance(val, float) else f"{k} {val}"
                                    for k, val in v.metrics.items())
                self.say(f"  v{v.version} {v.status} ({v.created_at[:16]}) {metrics}")
            channels = await self.db.channels_of(args[1])
            self.say(f"  bound to channels: {', '.join(map(str, channels)) or 'none'}")
        elif action == "prompt" and len(args) >= 3:
            text = " ".join(args[2:])
            await self.db.set_system_prompt(args[1], None if text == "-" else text)
            self.say(f"{args[1]} now answers with "
                     f"{'the default system prompt' if text == '-' else 'your system prompt'}")
        elif action == "rollback" and len(args) in (2, 3):
            await self.rollback(args[1], int(args[2]) if len(args) == 3 else None)
        else:
            self.say("usage: /adapter list | use NAME | create NAME | info NAME | "
                     "prompt NAME TEXT | rollback NAME [VERSION]")

    async def rollback(self, name: str, version: int | None) -> None:
        serving = await self.db.serving_version(name)
        if version is None:
            older = [v.version for v in await self.db.versions(name)
                     if serving is None or v.version < serving.version]
            if not older:
                self.say(f"{name} has no earlier version to roll back to")
                return
            version = older[-1]
        await self.engine.promote(name, version, reason="rollback from the console")
        self.say(f"{name} now serves v{version}")

    async def review(self, args: list[str]) -> None:
        action = args[0].lower() if args else "next"
        if action == "next":
            items = await self.db.reviews("pending", limit=1)
            if not items:
                self.say("nothing waiting for review")
                return
            item = items[0]
            self.shown_review = item.turn.id
            left = await self.db.count_reviews("pending")
            self.say(f"#{item.turn.id} [{item.adapter_name or 'base'}] score {item.score} "
                     f"({left} waiting)\n  Q: {item.turn.question}\n  A: {item.turn.answer}\n"
                     f"  /review approve | /review reject | /review edit {item.turn.id} TEXT"
                     f" | /review also {item.turn.id} QUESTION")
            return
        if action in ("approve", "reject"):
            turn_id = pair_id(args[1]) if len(args) > 1 else self.shown_review
            if turn_id is None:
                self.say("which pair? /review shows the next one")
                return
            status = "approved" if action == "approve" else "rejected"
            await self.db.decide_review(turn_id, status, reviewer_id=CONSOLE_USER_ID)
            self.say(f"#{turn_id} {status}")
        elif action == "edit" and len(args) >= 3:
            await self.db.decide_review(pair_id(args[1]), "approved", reviewer_id=CONSOLE_USER_ID,
                                        edited_answer=" ".join(args[2:]))
            self.say(f"#{args[1]} approved with your answer")
        elif action == "also" and len(args) >= 3:
            item = await self.db.get_review(pair_id(args[1]))
            if item is None:
                self.say(f"#{args[1]} is not a review candidate; /review shows the next one")
                return
            item = await self.db.decide_review(
                item.turn.id, "approved", reviewer_id=CONSOLE_USER_ID,
                edited_answer=item.edited_answer,
                also_asked=[*item.also_asked, " ".join(args[2:])])
            self.say(f"#{item.turn.id} approved; also asked as: "
                     + " · ".join(item.also_asked))
        else:
            self.say("usage: /review | /review approve [ID] | /review reject [ID] | "
                     "/review edit ID TEXT | /review also ID QUESTION")

    async def stats(self, args: list[str]) -> None:
        stats = await self.db.stats()
        self.say("  " + ", ".join(f"{k} {v}" for k, v in stats.items()))

    async def train(self, args: list[str]) -> None:
        adapter = args[0] if args else None
        if adapter is None:
            bound = await self.db.resolve_adapter_for(CONSOLE_CHANNEL_ID)
            if bound is None:
                self.say("which adapter? /train NAME, or /adapter use NAME first")
                return
            adapter = bound.name
        try:
            run = await self.training.start(adapter, trigger="manual",
                                            requested_by=CONSOLE_USER_ID)
        except TrainingBusy as exc:
            self.say(f"error: {exc}")
            return
        self.say(f"training {adapter} (run {run.id})…")
        last = 0.0

        async def on_event(event: dict) -> None:
            nonlocal last
            if event.get("event") == "eval" or time.monotonic() - last > 10:
                last = time.monotonic()
                if self.training.active is not None:
                    self.say(f"  {self.training.active.progress()}")

        outcome = await self.training.follow(on_event)
        self.say(outcome.summary())
        if outcome.report_table():
            self.say(outcome.report_table())
        if outcome.promoted and self.history:
            self.restart()

    def restart(self) -> None:
        # the earlier turns were answered by another model; carried along, a new
        # version copies their answers (measured: the old wrong answer, repeated)
        self.history = []
        self.say("(conversation restarted: the new version answers from a fresh start)")

    async def help(self, args: list[str]) -> None:
        self.say(HELP)

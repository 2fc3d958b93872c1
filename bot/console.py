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
from pathlib import Path
from typing import TextIO

from settings import Config, layout
from storage import Database, StorageError
from storage.jsonl import write_text_atomic

from .commands import (
    FORGET_WARNING,
    Attachment,
    Caller,
    Commands,
    Refused,
    Reply,
    Services,
    plain,
)
from .commands.review import review_card
from .engine import EngineError, GenerationEngine, GenerationRequest, Sampling
from .training import TrainingService

log = logging.getLogger(__name__)

CONSOLE_CHANNEL_ID = 0
CONSOLE_USER_ID = 0
CONSOLE_MIN_SCORE = 1  # the console has one voter

HELP = """Type a question and press Enter. Commands:
  /good, /bad                 vote on the last answer (a /good makes it a review candidate)
  /adapter list               adapters, their serving version, the one this console uses
  /adapter use NAME           answer with adapter NAME from now on (/adapter use base: none)
  /adapter unbind             answer with the base model from now on
  /adapter create NAME [BASE] a new adapter (starting from BASE's serving version, if given)
  /adapter info [NAME]        its versions and their metrics (default: this console's)
  /adapter prompt NAME TEXT   its system prompt (/adapter prompt NAME -: the default)
  /adapter rollback NAME [V]  serve an earlier version again (default: the one before)
  /review                     the next pair waiting for review
  /review approve|reject [ID] decide on it (default: the pair shown by /review)
  /review edit ID TEXT        approve with a corrected answer
  /review also ID QUESTION    approve, and teach QUESTION as another way to ask it
  /review bulk SCORE [NAME]   approve every pending pair with at least this score
  /stats                      answers, votes, pairs, adapters
  /memory search TEXT         what the channel memory would do with TEXT: pairs and scores
  /import FILE [NAME]         store FILE's question/answer rows as approved pairs
  /export [NAME]              approved pairs as JSONL, written under the data directory
  /forget yes                 delete every question and vote of this console
  /train [start] [NAME]       train this console's adapter (or NAME) on its approved pairs;
                              the console follows the run to its end before the next line
  /train status | cancel      the last runs; stop a run going on (as on Discord)
  /help                       this text
  /quit                       leave (end of input does the same)"""


def number(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a {what}: give a whole number, e.g. 2")
    return int(text)


def write_export(data_dir: Path, reply: Reply) -> Path:
    """The export's file under data_dir/exports/, written whole or not at all."""
    path = data_dir / layout.EXPORTS_DIR / reply.attachment.filename
    write_text_atomic(path, reply.attachment.data.decode("utf-8"))
    return path


def pair_id(text: str) -> int:
    """The ID argument of /review; ValueError (shown as an error line) says what to type."""
    if not text.lstrip("#").isdigit():
        raise ValueError(f"{text!r} is not a pair number: /review shows the next pair with "
                         f"its number (#12), e.g. /review approve 12")
    return int(text.lstrip("#"))


class ConsoleChat:
    def __init__(self, config: Config, engine: GenerationEngine, db: Database,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, *,
                 training: TrainingService | None = None):
        self.config, self.engine, self.db = config, engine, db
        self.stdin, self.stdout = stdin, stdout
        self.interactive = stdin.isatty()
        self.history: list[dict[str, str]] = []
        self.last_turn: int | None = None
        self.shown_review: int | None = None
        self.served: tuple[str | None, int | None] = (None, None)  # who answered last
        self.training = training or TrainingService(config, engine=engine, db=db)
        self.core = Commands(Services(config=config, db=db, training=self.training,
                                      promote=engine.promote,
                                      memory=getattr(engine, "memory", None)))
        # the console is one channel whose single user is its admin
        # whoever runs the console owns the bot: the direct scope is theirs
        self.caller = Caller(user_id=CONSOLE_USER_ID, channel_id=CONSOLE_CHANNEL_ID,
                             is_admin=True, name="console", is_owner=True)
        self.commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "/good": lambda args: self.vote(+1), "/bad": lambda args: self.vote(-1),
            "/adapter": self.adapter, "/review": self.review, "/stats": self.stats,
            "/export": self.export, "/forget": self.forget, "/train": self.train,
            "/memory": self.memory, "/import": self.import_file, "/help": self.help,
        }

    def say(self, text: str = "", end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    def show(self, reply: Reply) -> None:
        for line in reply.lines():
            self.say(line)

    async def run(self) -> int:
        await self.training.recover()
        if self.training.reattached is not None:
            run = self.training.reattached
            self.say(f"(training run {run.id} of {run.adapter_label}, started before, is still "
                     f"going: /train status shows how far it is)")
        try:
            return await self._loop()
        finally:
            await self.training.close()

    async def _loop(self) -> int:
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
        except Refused as exc:
            self.say(plain(str(exc)))
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
        recalled = getattr(generation, "recalled", None)
        if recalled is not None:
            self.say(f"(from approved answer #{recalled.turn_id})")
        elif route.version is not None and (route.adapter, route.version) != self.served:
            self.say(f"(answered by {route.adapter} v{route.version})")
        self.served = (route.adapter, route.version)
        self.last_turn = await self.db.record_turn(
            source="console", channel_id=CONSOLE_CHANNEL_ID, author_id=CONSOLE_USER_ID,
            question=question, answer=answer, context=messages[:-1],
            adapter_name=route.adapter, adapter_version=route.version,
            latency_ms=generation.latency_ms,
            recalled_from=recalled.turn_id if recalled is not None else None)
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
        ops, me = self.core.adapters, self.caller
        if action == "list" and len(args) <= 1:
            self.show(await ops.list(me))
        elif action == "use" and len(args) == 2:
            self.show(await ops.use(me, args[1]))
        elif action == "unbind" and len(args) == 1:
            self.show(await ops.unbind(me))
        elif action == "create" and len(args) in (2, 3):
            self.show(await ops.create(me, args[1], args[2] if len(args) == 3 else None))
        elif action == "info" and len(args) in (1, 2):
            self.show(await ops.info(me, args[1] if len(args) == 2 else None))
        elif action == "prompt" and len(args) >= 3:
            self.show(await ops.prompt(me, args[1], " ".join(args[2:])))
        elif action == "rollback" and len(args) in (2, 3):
            self.show(await ops.rollback(me, args[1], number(args[2], "version")
                                         if len(args) == 3 else None))
        else:
            self.say("usage: /adapter list | use NAME | unbind | create NAME [BASE] | "
                     "info [NAME] | prompt NAME TEXT | rollback NAME [VERSION]")

    async def review(self, args: list[str]) -> None:
        action = args[0].lower() if args else "next"
        ops, me = self.core.review, self.caller
        if action == "next":
            item, waiting = await ops.next(me)
            if item is None:
                self.say("nothing waiting for review")
                return
            self.shown_review = item.turn.id
            self.show(review_card(item, waiting))
            self.say(f"/review approve | /review reject | /review edit {item.turn.id} TEXT | "
                     f"/review also {item.turn.id} QUESTION")
        elif action in ("approve", "reject") and len(args) <= 2:
            turn_id = pair_id(args[1]) if len(args) > 1 else self.shown_review
            if turn_id is None:
                self.say("which pair? /review shows the next one")
                return
            status = "approved" if action == "approve" else "rejected"
            self.show(await ops.decide(me, turn_id, status))
        elif action == "edit" and len(args) >= 3:
            self.show(await ops.decide(me, pair_id(args[1]), "approved",
                                       edited=" ".join(args[2:])))
        elif action == "also" and len(args) >= 3:
            self.show(await ops.also(me, pair_id(args[1]), " ".join(args[2:])))
        elif action == "bulk" and len(args) in (2, 3):
            score, adapter = number(args[1], "score"), (args[2] if len(args) == 3 else None)
            done = await ops.approve_at_least(me, score, adapter)
            self.show(done if done.values["approved"] else ops.nothing_at_least(score))
        else:
            self.say("usage: /review | /review approve [ID] | /review reject [ID] | "
                     "/review edit ID TEXT | /review also ID QUESTION | "
                     "/review bulk SCORE [ADAPTER]")

    async def stats(self, args: list[str]) -> None:
        self.show(await self.core.data.stats(self.caller))

    async def import_file(self, args: list[str]) -> None:
        if not args:
            raise ValueError("give the file to import: /import FILE [ADAPTER]")
        path = Path(args[0]).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        attachment = Attachment(path.name, path.read_bytes())
        self.show(await self.core.data.import_file(self.caller, attachment,
                                                   args[1] if len(args) > 1 else None))

    async def memory(self, args: list[str]) -> None:
        if args and args[0].lower() == "search":  # `/memory search TEXT`, as on Discord
            args = args[1:]
        self.show(await self.core.memory.search(self.caller, " ".join(args)))

    async def export(self, args: list[str]) -> None:
        reply = await self.core.data.export(self.caller, args[0] if args else None)
        path = await asyncio.to_thread(write_export, self.config.data_dir, reply)
        self.say(f"{reply.text} Written to {path}")

    async def forget(self, args: list[str]) -> None:
        if args != ["yes"]:
            self.say(FORGET_WARNING + " Type /forget yes to go ahead.")
            return
        reply, turn_ids = await self.core.data.forget(self.caller)
        self.show(reply)
        cleaned = await self.core.data.forget_files(turn_ids)
        if cleaned is not None:
            self.show(cleaned)
        self.history, self.last_turn, self.shown_review = [], None, None

    async def train(self, args: list[str]) -> None:
        ops, me = self.core.training, self.caller
        if args and args[0].lower() in ("status", "cancel") and len(args) == 1:
            self.show(await (ops.status(me) if args[0].lower() == "status" else ops.cancel(me)))
            return
        if args and args[0].lower() == "start":  # `/train start NAME`, as on Discord
            args = args[1:]
        run = await ops.start(me, args[0] if args else None)
        self.say(f"training {run.adapter_label} (run {run.id})…")
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

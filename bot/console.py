"""Console chat: the same engine and storage as Discord, on stdin/stdout.

Interactive (a `you>` prompt on a terminal) or scripted (one prompt per line
of piped stdin, answers on stdout, exit 0 at end of input).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from storage import Database

from .config import Config
from .engine import Engine, GenerationRequest, Sampling

log = logging.getLogger(__name__)

CONSOLE_CHANNEL_ID = 0
CONSOLE_USER_ID = 0

HELP = """Type a question and press Enter. Commands:
  /help   this text
  /quit   leave (end of input does the same)"""


class ConsoleChat:
    def __init__(self, config: Config, engine: Engine, db: Database,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
        self.config, self.engine, self.db = config, engine, db
        self.stdin, self.stdout = stdin, stdout
        self.interactive = stdin.isatty()

    def say(self, text: str = "", end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    async def run(self) -> int:
        if self.interactive:
            self.say("Console chat. /help lists the commands, /quit leaves.")
        while True:
            if self.interactive:
                self.say("you> ", end="")
            line = await asyncio.to_thread(self.stdin.readline)
            if not line:  # end of input
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if await self.command(text) == "quit":
                    return 0
                continue
            await self.ask(text)

    async def command(self, text: str) -> str | None:
        name = text.split()[0].lower()
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            self.say(HELP)
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return None

    async def ask(self, question: str) -> str:
        messages = [{"role": "system", "content": self.config.model.system_prompt},
                    {"role": "user", "content": question}]
        request = GenerationRequest(channel_id=CONSOLE_CHANNEL_ID, messages=messages,
                                    sampling=Sampling.from_config(self.config.engine))
        started = time.perf_counter()
        parts: list[str] = []
        if self.interactive:
            self.say("bot> ", end="")
        try:
            async for chunk in self.engine.generate(request):
                parts.append(chunk)
                self.say(chunk, end="")
        except Exception:
            log.exception("generation failed")
            self.say("(sorry, the model failed to answer; see the log)")
            return ""
        answer = "".join(parts).strip()
        self.say()
        await self.db.record_turn(
            source="console", channel_id=CONSOLE_CHANNEL_ID, author_id=CONSOLE_USER_ID,
            question=question, answer=answer, context=messages[:-1],
            latency_ms=(time.perf_counter() - started) * 1000)
        return answer

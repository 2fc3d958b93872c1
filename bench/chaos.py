"""Chaos: kill -9 the bot process in the middle of a burst of votes; nothing acknowledged is lost.

  python bench/chaos.py                          # 5 rounds of 1,000 reactions from 50 users
  python bench/chaos.py --rounds 1 --reactions 200 --users 20 --seed 7

Each round, in a fresh data directory and a fresh fake Discord (tests/fake_discord/):

1. the real bot starts as its own process (`python -m bot run` through
   tests/chaos_child.py, which only points discord.py at the fake) on the tiny model;
2. it answers seed questions, enough for every user to vote once on each answer;
3. a burst of reactions (👍 or 👎, one per user and answer, in random order) goes out;
4. when a random share (10-90%) of the votes has been acknowledged, the process is killed
   with SIGKILL while it is still working through the burst;
5. checks: every acknowledged vote is in the database, `PRAGMA integrity_check` says ok;
6. the bot is started again and must answer a new question.

"Acknowledged" is the vote's log line (`vote +1 by U on answer T: score S`): the feedback
cog writes it only after `cast_vote` has committed, and nothing else tells a voter that a
vote counted. A vote committed but killed before its log line is counted apart; votes the
dead process never read are neither acknowledged nor lost (Discord does not replay them to
a new session either).

tests/test_chaos.py runs one smaller round of the same code in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos_child import API_ENV, GATEWAY_ENV  # noqa: E402
from tests.fake_discord import FakeDiscord  # noqa: E402

VOTE_LINE = re.compile(r"bot\.cogs\.feedback: vote ([+-]\d+) by (\d+) on answer (\d+): score")
START_TIMEOUT_S = 180  # importing torch and loading the model on a loaded 2-core machine


@dataclass
class RoundResult:
    seed: int
    sent: int  # reactions the fake delivered or queued for the bot
    acknowledged: int  # vote log lines written before the kill
    found: int  # of the sent votes, how many the database holds after the kill
    lost: int  # acknowledged but not in the database (the goal: 0)
    unacknowledged_committed: int  # in the database, killed before its log line
    integrity: str  # PRAGMA integrity_check after the kill
    answered_after_restart: bool
    seconds: float


class BotProcess:
    """The bot as a child process whose log is a file; started, killed, started again."""

    def __init__(self, fake: FakeDiscord, config_path: Path, log_path: Path):
        self.fake, self.config_path, self.log_path = fake, config_path, log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the bot and return once the fake has sent it its guild."""
        known = set(self.fake.sessions)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        env.update({"DISCORD_TOKEN": self.fake.token, API_ENV: self.fake.api_base,
                    GATEWAY_ENV: self.fake.gateway_url, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.chaos_child", "--config", str(self.config_path),
                "run", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log)

        def ready() -> bool:
            if self.process.returncode is not None:
                raise RuntimeError(f"the bot exited with {self.process.returncode} before it "
                                   f"was ready:\n{self.log_tail()}")
            return any(d.event == "GUILD_CREATE" and d.session_id not in known
                       for d in self.fake.dispatched)

        await self.fake.wait_until(ready, timeout=START_TIMEOUT_S, what="the bot process")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self) -> None:
        """Ctrl-C, as an operator would; SIGKILL if it does not end in 30 s."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.kill()
            await self.process.wait()

    async def wait_for_acknowledged(self, count: int, timeout: float) -> None:
        """Return as soon as the log holds `count` vote lines (read as it grows, every 5 ms,
        so that the kill lands while the burst is still being worked through)."""
        deadline = time.monotonic() + timeout
        seen, offset, partial = 0, 0, b""
        while seen < count:
            if self.process.returncode is not None:
                raise RuntimeError(f"the bot exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen} of {count} votes acknowledged after {timeout} s")
            with self.log_path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            seen += sum(1 for line in lines if VOTE_LINE.search(line.decode("utf-8", "replace")))
            if seen < count:
                await asyncio.sleep(0.005)

    def log_text(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[:text.rfind("\n") + 1]  # whole lines only: the last may be cut by a kill

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def acknowledged(self) -> set[tuple[int, int, int]]:
        """(turn id, user id, value) of every vote the bot logged as counted."""
        return {(int(turn), int(user), int(value))
                for value, user, turn in VOTE_LINE.findall(self.log_text())}


def write_config(workdir: Path, model_dir: Path, guild_id: int) -> Path:
    config = workdir / "chaos.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{(workdir / "data").as_posix()}"\n'
        f'[model]\nname = "{model_dir.as_posix()}"\n'
        "[engine]\nmax_new_tokens = 8\ntemperature = 1.0\n"  # the untrained tiny model
        # says nothing when greedy; sampled, it always says something
        f"[discord]\ndev_guild_ids = [{guild_id}]\nuser_cooldown_s = 0.0\n"
        "stream_edit_interval_s = 0.2\n", encoding="utf-8")
    return config


async def seed_answers(fake: FakeDiscord, count: int) -> list:
    """`count` questions answered by the bot; returns the answer messages (with 👍/👎)."""
    w = fake.world
    questions = [await fake.send_message(w.general.id, w.bob.id, f"Question number {i}?",
                                         mentions_bot=True) for i in range(count)]

    def answered():
        by_question = {m.reference_id: m for m in fake.bot_messages(w.general.id)
                       if "👎" in m.reactions}
        found = [by_question.get(q.id) for q in questions]
        return found if all(found) else None

    return await fake.wait_until(answered, timeout=60 + 5 * count, what="the seed answers")


def database_votes(path: Path) -> tuple[str, set[tuple[int, int, int]]]:
    """What a fresh reader finds in the file the killed process left: (integrity, votes)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        votes = {tuple(row) for row in conn.execute(
            "SELECT turn_id, user_id, value FROM feedback")}
    return integrity, votes


async def chaos_round(workdir: Path, model_dir: Path, *, reactions: int, users: int,
                      seed: int) -> RoundResult:
    rng = random.Random(seed)
    started = time.monotonic()
    async with FakeDiscord() as fake:
        guild, general = fake.world.guild, fake.world.general
        voters = [await fake.create_user(f"voter{i}") for i in range(users)]
        for voter in voters:
            await fake.add_member(guild.id, voter.id)
        config = write_config(workdir, model_dir, guild.id)
        bot = BotProcess(fake, config, workdir / "bot.log")
        await bot.start()
        try:
            answers = await seed_answers(fake, math.ceil(reactions / users))
            plan = [(voter.id, answer.id, rng.choice("👍👎"))
                    for answer in answers for voter in voters]
            rng.shuffle(plan)
            plan = plan[:reactions]
            kill_at = rng.randint(max(1, reactions // 10), reactions * 9 // 10)

            async def burst() -> None:
                for user_id, message_id, emoji in plan:
                    await fake.add_reaction(user_id, general.id, message_id, emoji)

            sending = asyncio.create_task(burst())
            await bot.wait_for_acknowledged(kill_at, timeout=120)
            bot.kill()
            await bot.wait()
            await sending
            acknowledged = bot.acknowledged()
            integrity, stored = database_votes(workdir / "data" / "bot.sqlite3")

            await bot.start()
            question = await fake.send_message(general.id, fake.world.carol.id,
                                               "Are you back?", mentions_bot=True)
            with contextlib.suppress(TimeoutError):
                await fake.wait_until(
                    lambda: any(m.reference_id == question.id and "👎" in m.reactions
                                for m in fake.bot_messages(general.id)),
                    timeout=60, what="an answer after the restart")
            answered = any(m.reference_id == question.id and "👎" in m.reactions
                           for m in fake.bot_messages(general.id))
        finally:
            await bot.stop()
    # the burst is the only source of votes here (the bot's own 👍/👎 never count)
    return RoundResult(seed=seed, sent=len(plan), acknowledged=len(acknowledged),
                       found=len(stored), lost=len(acknowledged - stored),
                       unacknowledged_committed=len(stored - acknowledged),
                       integrity=integrity, answered_after_restart=answered,
                       seconds=time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reactions", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seed", type=int, help="first round's seed (default: random)")
    args = parser.parse_args()
    from tests.tiny_model import save_tiny_model

    logging.getLogger("fake_discord").setLevel(logging.ERROR)  # "no bot connected" notes

    first_seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()} · {date.today()} · {args.rounds} rounds of "
          f"{args.reactions} reactions from {args.users} users · first seed {first_seed}")
    print(f"{'round':>5} {'seed':>10} {'sent':>5} {'acked':>6} {'found':>6} {'lost':>5} "
          f"{'unacked':>8} {'integrity':>9} {'restart':>8} {'s':>5}")
    results = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        model_dir = save_tiny_model(Path(tmp) / "tiny-model")
        for index in range(args.rounds):
            workdir = Path(tmp) / f"round-{index}"
            workdir.mkdir()
            result = await chaos_round(workdir, model_dir, reactions=args.reactions,
                                       users=args.users, seed=first_seed + index)
            results.append(result)
            restart = "answered" if result.answered_after_restart else "NO"
            print(f"{index + 1:>5} {result.seed:>10} {result.sent:>5} {result.acknowledged:>6} "
                  f"{result.found:>6} {result.lost:>5} {result.unacknowledged_committed:>8} "
                  f"{result.integrity:>9} {restart:>8} {result.seconds:>5.0f}", flush=True)
    print(f"kills: {len(results)}; votes sent: {sum(r.sent for r in results)}; acknowledged: "
          f"{sum(r.acknowledged for r in results)}; found: {sum(r.found for r in results)}; "
          f"lost: {sum(r.lost for r in results)}; committed but not yet acknowledged: "
          f"{sum(r.unacknowledged_committed for r in results)}; integrity ok: "
          f"{sum(r.integrity == 'ok' for r in results)}/{len(results)}; answered after "
          f"restart: {sum(r.answered_after_restart for r in results)}/{len(results)}")


if __name__ == "__main__":
    asyncio.run(main())

"""Load: 200 messages from 20 channels within a few seconds; none may be lost.

  python bench/load.py                                   # 200 messages, 20 channels, 3 s
  python bench/load.py --messages 400 --channels 20 --users 100 --spread 3
  python bench/load.py --torch-threads 1     # see BENCHMARKS.md: CPU threads vs the loop

The real bot (discord.py client, cogs, engine on the tiny model, SQLite) runs in this
process against the fake Discord (tests/fake_discord/). Messages mention the bot from
`--users` people spread over `--channels` channels, paced evenly over `--spread` seconds.
Each must end answered (a stored answer carrying 👍/👎) or explicitly refused (the user
cooldown note, `discord.user_cooldown_s` = 3 s by default); any other outcome is counted, and
one that never gets a reply is lost.

Reported: the outcomes, time from the first message to the last reply, reply latency
(p50/p95, polled every 50 ms), the process's peak RSS (bot, engine and fake together) and
its RSS before and after, and the event loop's lateness measured by a task that sleeps 5 ms
(p50/p99/max) while the load lasts; the engine issue set p99 < 50 ms as the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.cogs.chat import APOLOGY, EMPTY_QUESTION, NO_ANSWER  # noqa: E402
from bot.discord_bot import ChannelBot  # noqa: E402
from bot.engine import Engine  # noqa: E402
from bot.routing import Router  # noqa: E402
from settings import parse_config  # noqa: E402
from storage import Database  # noqa: E402
from tests.fake_discord import FakeDiscord  # noqa: E402
from tests.tiny_model import save_tiny_model  # noqa: E402

REFUSAL = "⏳ One question every"
LAG_TICK_S = 0.005


class LagProbe:
    """How late a 5 ms sleep wakes up: the event loop's stalls."""

    def __init__(self):
        self.late_ms: list[float] = []
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK_S)
            self.late_ms.append((loop.time() - before - LAG_TICK_S) * 1000)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def summary(self) -> str:
        lags = sorted(self.late_ms)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        return (f"p50 {statistics.median(lags):.1f} ms · p99 {p99:.1f} ms · max {lags[-1]:.1f} ms "
                f"over {len(lags)} ticks")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bot_replies(fake: FakeDiscord) -> dict[int, list[str]]:
    """What the bot replied to each message (deleted replies too: the cooldown note goes)."""
    replies: dict[int, list[str]] = {}
    for message in list(fake.messages.values()):
        if message.author_id == fake.bot_user.id and message.reference_id is not None:
            replies.setdefault(message.reference_id, []).append(message.content)
    return replies


def outcome(question_id: int, answered_ids: set[int],
            replies: dict[int, list[str]]) -> str | None:
    if question_id in answered_ids:
        return "answered"
    for content in replies.get(question_id, ()):
        if content.startswith(REFUSAL):
            return "refused (cooldown)"
        if content in (NO_ANSWER, APOLOGY, EMPTY_QUESTION):
            return f"note: {content[:40]}"
    return None


async def run(args, workdir: Path) -> None:
    model_dir = save_tiny_model(workdir / "tiny-model")
    async with FakeDiscord() as fake:
        guild = fake.world.guild
        channels = [await fake.create_channel(guild.id, f"load-{i}")
                    for i in range(args.channels)]
        users = [await fake.create_user(f"user{i}") for i in range(args.users)]
        for user in users:
            await fake.add_member(guild.id, user.id)
        config = parse_config(
            f'[storage]\ndata_dir = "{(workdir / "data").as_posix()}"\n'
            f'[model]\nname = "{model_dir.as_posix()}"\n'
            f"[engine]\nmax_new_tokens = {args.tokens}\ntemperature = 1.0\n"
            f"[discord]\ndev_guild_ids = [{guild.id}]\n", base_dir=workdir)
        async with Database(config.database_path) as db:
            router = Router(config, db)
            engine = Engine(config, router)
            await engine.start()
            bot = ChannelBot(config, db, engine, router)
            await fake.start_bot(bot)
            rss_before = rss_mib()
            rng = random.Random(args.seed)
            probe = LagProbe()
            probe.start()
            sent: list[tuple[object, float]] = []
            started = time.monotonic()
            for index in range(args.messages):
                due = started + index * args.spread / args.messages
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                channel = channels[index % len(channels)]
                question = await fake.send_message(channel.id, rng.choice(users).id,
                                                   f"Question {index}: what is {index} plus 1?",
                                                   mentions_bot=True)
                sent.append((question, time.monotonic()))
            last_sent = time.monotonic() - started
            replied_at: dict[int, float] = {}
            outcomes: dict[int, str] = {}

            async def classify() -> bool:
                rows = await db._all("SELECT question_message_id FROM turns")
                answered_ids = {row[0] for row in rows}
                replies = bot_replies(fake)
                for question, _ in sent:
                    if question.id not in outcomes:
                        found = outcome(question.id, answered_ids, replies)
                        if found:
                            outcomes[question.id] = found
                            replied_at[question.id] = time.monotonic()
                return len(outcomes) == len(sent)

            deadline = time.monotonic() + args.timeout
            while not await classify() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            finished = time.monotonic() - started
            await probe.stop()
            rss_after = rss_mib()
            await fake.stop_bots()
            await engine.close()

    counts: dict[str, int] = {}
    for question, _ in sent:
        key = outcomes.get(question.id, "LOST (no reply)")
        counts[key] = counts.get(key, 0) + 1
    latencies = sorted(replied_at[q.id] - at for q, at in sent if q.id in replied_at)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()} · {date.today()} · tiny model, {args.tokens} new "
          f"tokens at most, user cooldown {config.discord.user_cooldown_s:g} s, torch threads "
          f"{torch_threads()}")
    print(f"sent {len(sent)} messages from {args.users} users in {args.channels} channels "
          f"over {last_sent:.1f} s; last reply after {finished:.1f} s")
    for key, count in sorted(counts.items()):
        print(f"  {key}: {count}")
    print(f"lost: {counts.get('LOST (no reply)', 0)}")
    if latencies:
        print(f"reply latency: p50 {statistics.median(latencies):.2f} s · p95 "
              f"{latencies[int(len(latencies) * 0.95) - 1]:.2f} s · max {latencies[-1]:.2f} s")
    print(f"RSS: {rss_before:.0f} MiB before the load, {rss_after:.0f} MiB after; peak "
          f"{peak_rss_mib():.0f} MiB")
    print(f"event-loop lateness (5 ms ticker): {probe.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--spread", type=float, default=3.0, help="seconds to send them over")
    parser.add_argument("--tokens", type=int, default=32, help="engine.max_new_tokens")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads before the "
                        "engine starts (default: torch's own choice, as the bot runs)")
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("fake_discord").setLevel(logging.ERROR)  # "no bot connected" notes
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()

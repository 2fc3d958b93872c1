"""Start-up and storage figures of the foundation, as ratios within one run.

  python bench/startup.py            # default model + 2,000 votes
  python bench/startup.py --votes 500

1. Provisioning: converting the default model's GGUF (first start) versus
   loading the cached safetensors directory (every later start).
2. Storage: 2,000 votes each committed before it returns (what the bot
   acknowledges) versus the same rows in one bulk transaction (the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import Database  # noqa: E402
from trainer import modeling  # noqa: E402


def _load_and_run(path: Path) -> None:
    """Load and run one forward pass: safetensors are memory-mapped, so a bare
    load reads almost nothing; the forward pass touches every weight."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.inference_mode():
        model(torch.ones((1, 8), dtype=torch.long))


def bench_provisioning() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        path = modeling.provision_default_model(Path(cache))
        _load_and_run(path)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        _load_and_run(path)
        warm = time.perf_counter() - started
    return cold, warm


async def bench_votes(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Database(Path(tmp) / "votes.sqlite3") as db:
            turn = await db.record_turn(channel_id=1, author_id=1, question="q", answer="a")
            started = time.perf_counter()
            for user in range(n):
                await db.cast_vote(turn, user, 1, min_score=10**9)
            acknowledged = time.perf_counter() - started
        conn = sqlite3.connect(Path(tmp) / "votes.sqlite3")
        conn.execute("DELETE FROM feedback")
        conn.commit()
        started = time.perf_counter()
        with conn:
            conn.executemany("INSERT INTO feedback (turn_id, user_id, value) VALUES (?, ?, 1)",
                             [(turn, user) for user in range(n)])
        bulk = time.perf_counter() - started
        conn.close()
    return acknowledged, bulk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=2000)
    args = parser.parse_args()
    print(f"# {date.today()} · {platform.machine()} · {platform.python_version()} · "
          f"CPU cores: {__import__('os').cpu_count()}")
    cold, warm = bench_provisioning()
    print(f"model ready for a forward pass: first start (GGUF → safetensors) {cold:.1f} s · "
          f"later starts (cached) {warm:.2f} s · ratio {cold / warm:.0f}×")
    acknowledged, bulk = asyncio.run(bench_votes(args.votes))
    print(f"votes: {args.votes} committed one by one {args.votes / acknowledged:,.0f}/s · "
          f"one bulk transaction {args.votes / bulk:,.0f}/s · per-vote durability costs "
          f"{acknowledged / bulk:.0f}× the floor")


if __name__ == "__main__":
    main()

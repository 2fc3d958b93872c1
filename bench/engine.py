"""Engine figures on the default model (CPU or GPU), each against a baseline in the same run.

  python bench/engine.py                      # 8 requests, 4 adapters, 64 tokens each
  python bench/engine.py --tokens 32 --requests 8

1. Throughput: 8 concurrent requests spread over 4 LoRA adapters (r16, all
   linear layers), micro-batched into mixed-adapter forward passes, against the
   same 8 requests one at a time. Generated tokens per second, as a ratio.
2. Hot swap under load: a stream of requests to one adapter while it is
   promoted from v1 to v2; the promotion's latency and the failed requests.
3. Event-loop lag while generating: a task that sleeps 5 ms and measures how
   late it wakes, p50 and p99 over the batched phase.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.engine import Engine, GenerationRequest, Sampling  # noqa: E402
from bot.routing import Router  # noqa: E402
from settings import load_config  # noqa: E402
from storage import Database  # noqa: E402
from trainer import modeling  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Give me a tip for writing clear emails.",
             "Why is the sky blue?", "What is a good name for a cat?",
             "How do plants make food?", "What is 12 plus 30?",
             "Name three colours of the rainbow.", "What does a baker do?"]


def make_adapters(base_dir: str, root: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # small random weights: answers change but stay fluent
                torch.nn.init.normal_(parameter, std=0.002)
        model.save_pretrained(root / f"bench-{i}" / "v1")
        paths.append(root / f"bench-{i}" / "v1")
    return paths


class LagProbe:
    def __init__(self):
        self.lags: list[float] = []
        self._stop = asyncio.Event()

    async def run(self):
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lags.append((time.perf_counter() - before - 0.005) * 1000)

    def stop(self):
        self._stop.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args) -> None:
    config = load_config(ROOT / "config.toml", environ={})
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapters_root = tmp / "adapters"
        paths = make_adapters(source, adapters_root, 5)
        from settings import parse_config

        config = parse_config(
            f'[storage]\ndata_dir = "{tmp.as_posix()}"\nadapters_dir = "adapters"\n'
            f'[model]\nname = "{source}"\n'
            f"[engine]\nmax_batch_size = {args.requests}\nbatch_wait_ms = 50\n"
            "max_loaded_adapters = 8\n", base_dir=tmp)
        async with Database(config.database_path) as db:
            for i, path in enumerate(paths):
                await db.create_adapter(f"bench-{i}", "default")
                await db.add_version(f"bench-{i}", path=str(path.relative_to(adapters_root)),
                                     status="serving")
                await db.bind_channel(100 + i, f"bench-{i}")
            engine = Engine(config, Router(config, db))
            await engine.start()
            sampling = Sampling(max_new_tokens=args.tokens)
            requests = [GenerationRequest(100 + i % 4, [{"role": "user", "content": q}],
                                          sampling)
                        for i, q in enumerate(QUESTIONS[:args.requests])]
            for r in requests[:4]:  # load the adapters before timing anything
                await (await engine.submit(GenerationRequest(r.channel_id, r.messages,
                                                             Sampling(max_new_tokens=1)))).complete()

            started = time.perf_counter()
            sequential_tokens = 0
            for request in requests:
                generation = await engine.submit(request)
                await generation.complete()
                sequential_tokens += generation.token_count
            sequential_s = time.perf_counter() - started

            probe = LagProbe()
            probe_task = asyncio.create_task(probe.run())
            started = time.perf_counter()
            generations = [await engine.submit(r) for r in requests]
            await asyncio.gather(*(g.complete() for g in generations))
            batched_s = time.perf_counter() - started
            batched_tokens = sum(g.token_count for g in generations)
            probe.stop()
            await probe_task

            # hot swap under load: v2 of bench-0 appears and is promoted mid-stream
            v2 = make_adapters(source, tmp / "v2", 1)[0]
            target = adapters_root / "bench-0" / "v2"
            v2.rename(target)
            await db.add_version("bench-0", path=str(target.relative_to(adapters_root)))
            failed, served = 0, []

            async def client(delay: float):
                nonlocal failed
                await asyncio.sleep(delay)
                try:
                    g = await engine.submit(GenerationRequest(
                        100, [{"role": "user", "content": QUESTIONS[0]}],
                        Sampling(max_new_tokens=16)))
                    await g.complete()
                    served.append(g.route.version)
                except Exception:
                    failed += 1

            clients = [asyncio.create_task(client(i * 0.25)) for i in range(16)]
            await asyncio.sleep(1.0)
            swap_started = time.perf_counter()
            await engine.promote("bench-0", 2)
            swap_s = time.perf_counter() - swap_started
            await asyncio.gather(*clients)
            await engine.close()

    seq_rate, batch_rate = sequential_tokens / sequential_s, batched_tokens / batched_s
    device = engine.placement.device
    print(f"# {date.today()} · {platform.machine()} · {device} · {args.requests} requests × "
          f"up to {args.tokens} tokens over 4 adapters")
    print(f"throughput: batched {batch_rate:.1f} tok/s ({batched_tokens} tokens) · one at a "
          f"time {seq_rate:.1f} tok/s ({sequential_tokens} tokens) · ratio "
          f"{batch_rate / seq_rate:.2f}× (goal ≥ 2×)")
    print(f"hot swap under load: promote took {swap_s * 1000:.0f} ms (goal < 1000 ms) · "
          f"{failed} of 16 requests failed (goal 0) · served by versions "
          f"{''.join(str(v) for v in served)}")
    print(f"event-loop lag while generating: p50 {statistics.median(probe.lags):.1f} ms · "
          f"p99 {percentile(probe.lags, 0.99):.1f} ms · max {max(probe.lags):.1f} ms "
          f"over {len(probe.lags)} ticks (goal p99 < 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

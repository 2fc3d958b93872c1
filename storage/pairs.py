"""Approved pairs as JSONL: one object per line, UTF-8, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from .errors import PairsFileError
from .records import Pair


def normalise(text: str) -> str:
    """Case, Unicode form and whitespace do not make two texts different (the trainer
    de-duplicates and splits pairs by this too)."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def clean_also_asked(values: object, question: str = "") -> list[str]:
    """Other ways to ask `question`: stripped, without blanks, repeats or the question
    itself (compared ignoring case, spacing and Unicode form). ValueError unless a list
    of strings."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("'also_asked' must be a list of questions (strings), "
                         'e.g. "also_asked": ["Who makes our coffee?"]')
    seen = {normalise(question)}
    kept = []
    for value in values:
        if value.strip() and normalise(value) not in seen:
            seen.add(normalise(value))
            kept.append(value.strip())
    return kept


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
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    pairs.append(_pair_from_line(line, default_adapter))
                except ValueError as exc:
                    problems.append(f"{path}:{number}: {exc}")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        f"save it as UTF-8")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"]
                                 if len(problems) > 20 else [])
        raise PairsFileError("bad pairs file:\n  " + "\n  ".join(shown))
    return pairs


def _pair_from_line(line: str, default_adapter: str | None) -> Pair:
    """One JSONL line → a Pair; ValueError says what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("expected an object with question and answer")
    missing = [k for k in ("question", "answer")
               if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        raise ValueError(f"missing or empty {' and '.join(missing)} (strings required)")
    # these become INTEGER columns and the training context: wrong types are refused here,
    # not stored as text that a later run chokes on
    for key in ("score", "turn_id", "channel_id"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"'{key}' must be an integer, not {value!r}")
    context = row.get("context") or []
    if not isinstance(context, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in context):
        raise ValueError("'context' must be a list of {\"role\", \"content\"} objects")
    adapter = row.get("adapter") or default_adapter
    if adapter is not None and not isinstance(adapter, str):
        raise ValueError(f"'adapter' must be a string, not {adapter!r}")
    return Pair(question=row["question"], answer=row["answer"], adapter=adapter,
                turn_id=row.get("turn_id"), score=row.get("score") or 0,
                channel_id=row.get("channel_id"), context=context,
                created_at=row.get("created_at"),
                also_asked=clean_also_asked(row.get("also_asked") or [], row["question"]))

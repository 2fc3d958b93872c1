"""Approved pairs as JSONL: one object per line, UTF-8, written atomically.

The one pair format of the project: `/export` and the web page's download
(`pairs_jsonl`), `Database.export_approved` (`write_pairs_jsonl`) and imports
(`read_pairs_jsonl`) all go through here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import PairsFileError
from .jsonl import json_line, jsonl_rows, parse_rows, problem_listing, write_jsonl
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


def pair_jsonl_line(pair: Pair) -> str:
    """One pair as the export's line: every field, UTF-8 kept as is."""
    return json_line(asdict(pair))


def pairs_jsonl(pairs: Iterable[Pair]) -> bytes:
    """The export file's bytes (`/export`, the web page's download)."""
    return "".join(map(pair_jsonl_line, pairs)).encode("utf-8")


def write_pairs_jsonl(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write to a temporary file beside `path`, then rename it into place."""
    return write_jsonl((asdict(pair) for pair in pairs), path)


def read_pairs_jsonl(path: str | Path, default_adapter: str | None = None) -> list[Pair]:
    """Read pairs; every bad line is reported with its number, all at once."""
    path = Path(path)
    pairs, problems = parse_rows(path, jsonl_rows,
                                 lambda row, _number: pair_from_row(row, default_adapter))
    if problems:
        raise PairsFileError(problem_listing("bad pairs file", problems))
    return pairs


def pair_from_row(row: Any, default_adapter: str | None) -> Pair:
    """One decoded JSONL row → a Pair; ValueError says what is wrong with it."""
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

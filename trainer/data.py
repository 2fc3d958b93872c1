"""Training examples: from approved pairs (and files, trainer/datafiles.py), cleaned,
de-duplicated, split.

An example is a question (the last user turn), the answer to learn, an optional
system prompt, optional earlier turns (`history`) and other ways to ask the
question (`also_asked`): each is trained with the same answer, on the same side
of the split as its pair.

The held-out set of an adapter (what the promotion gate measures on) is decided
by a stable hash of the normalised question salted with the adapter name: the
same pair lands on the same side in every run and every version, whatever the
order or the rest of the data, and two answers to one question never straddle
the split.

Approved pairs carry their net votes and when they were answered, so sampling
may favour well-liked and recent pairs (`sampling_weights`); file examples weigh 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.jsonl import problem_listing
from storage.pairs import clean_also_asked, normalise

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data that cannot be used; the message names the file, line and fix."""

    def __init__(self, problems: list[str], header: str = "bad training data"):
        self.problems = problems
        super().__init__(problem_listing(header, problems))


DB_SOURCE_PREFIX = "db:turn "  # an Example's source when it is an approved pair
_DB_SOURCE = re.compile(rf"^{re.escape(DB_SOURCE_PREFIX)}(\d+)\b")


def source_turn_id(source: str) -> int | None:
    """The turn id of an approved pair's example ("db:turn 7", or a rewording of it:
    "db:turn 7 (also asked)"); None for file examples."""
    match = _DB_SOURCE.match(source or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    system: str = ""  # empty: the trainer's default system prompt applies
    history: list[dict[str, str]] = field(default_factory=list)  # turns before the question
    source: str = ""  # "file.jsonl:12" or "db:turn 7", for messages about this example
    votes: int = 0  # net 👍 minus 👎 of an approved pair (0 for file examples)
    created_at: str = ""  # when an approved pair was answered (ISO-8601; empty for files)
    also_asked: list[str] = field(default_factory=list)  # other ways to ask, same answer

    def to_row(self) -> dict[str, Any]:
        # datasets cannot infer a type for a column of empty lists: lists travel as JSON
        row = asdict(self)
        row["history"] = json.dumps(self.history, ensure_ascii=False)
        row["also_asked"] = json.dumps(self.also_asked, ensure_ascii=False)
        return row

    def rewordings(self) -> list[Example]:
        """One example per other way to ask: same answer and system, asked afresh."""
        return [Example(q, self.answer, self.system, [], f"{self.source} (also asked)",
                        self.votes, self.created_at) for q in self.also_asked]


# --- normalisation and the stable split ----------------------------------------------

def dedup_key(question: str, answer: str) -> str:
    return hashlib.sha256(f"{normalise(question)}\x1f{normalise(answer)}".encode()).hexdigest()


def held_out_score(question: str, salt: str) -> float:
    """A number in [0, 1) fixed by the question and the salt (the adapter name)."""
    digest = hashlib.sha256(f"{salt}\x1f{normalise(question)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(question: str, salt: str, fraction: float) -> bool:
    return held_out_score(question, salt) < fraction


def examples_from_pairs(pairs: Iterable[Any]) -> list[Example]:
    """storage.Pair rows (the edited answer already wins there) → Examples."""
    examples = []
    for pair in pairs:
        history = [{"role": m["role"], "content": m["content"]} for m in (pair.context or [])
                   if isinstance(m, dict) and m.get("role") in ("user", "assistant")
                   and isinstance(m.get("content"), str)]
        examples.append(Example(pair.question.strip(), pair.answer.strip(), "", history,
                                f"{DB_SOURCE_PREFIX}{pair.turn_id}", int(pair.score or 0),
                                pair.created_at or "",
                                clean_also_asked(pair.also_asked, pair.question)))
    return examples


def load_from_db(database: str | Path, adapter: str) -> list[Example]:
    from storage import SyncStore

    with SyncStore(database) as store:
        return examples_from_pairs(store.approved_pairs(adapter))


# --- the dataset ---------------------------------------------------------------------

@dataclass(frozen=True)
class SplitCounts:
    read: int
    duplicates: int
    train: int
    validation: int
    held_out: int
    also_asked: int = 0  # rows added for other ways to ask (counted in the three above)


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """The first occurrence of each normalised question+answer wins (and gathers the other
    ways to ask of its repeats)."""
    first: dict[str, int] = {}
    kept: list[Example] = []
    for example in examples:
        key = dedup_key(example.question, example.answer)
        if key not in first:
            first[key] = len(kept)
            kept.append(example)
        elif example.also_asked:
            winner = kept[first[key]]
            known = {normalise(q) for q in winner.also_asked}
            extra = [q for q in example.also_asked if normalise(q) not in known]
            kept[first[key]] = replace(winner, also_asked=[*winner.also_asked, *extra])
    return kept, len(examples) - len(kept)


def data_hash(examples: Iterable[Example]) -> str:
    """Order-independent fingerprint of the data (recorded with each version)."""
    keys = sorted(dedup_key(e.question, e.answer) + normalise(e.system)
                  + "".join(f"\x1f{normalise(q)}" for q in e.also_asked) for e in examples)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def build_splits(examples: list[Example], *, salt: str, held_out_fraction: float,
                 validation_fraction: float, seed: int) -> tuple[Any, SplitCounts]:
    """De-duplicate, hold out by hash, then split the rest train/validation (seeded).

    Returns a `datasets.DatasetDict` with `train`, `validation` and `held_out`
    (the last two may be empty) and the counts.
    """
    from datasets import DatasetDict

    unique, duplicates = deduplicate(examples)
    if duplicates:
        log.info("dropped %d duplicate example(s)", duplicates)
    held = [e for e in unique if is_held_out(e.question, salt, held_out_fraction)]
    rest = [e for e in unique if not is_held_out(e.question, salt, held_out_fraction)]
    if not rest:
        raise DataError([f"all {len(unique)} example(s) fell into the held-out set; add more "
                         f"data or lower training.validation_fraction"], header="no training data")
    rest, held = _rewordings_apart(rest, held)
    train = examples_dataset(rest)
    validation = examples_dataset([])
    if validation_fraction > 0 and len(rest) >= 2:
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    # a pair's other ways to ask follow it to its side of the split (a rewording of a
    # held-out question in training would leak the answer the gate measures)
    pairs = len(train) + len(validation) + len(held)
    train, validation = _with_rewordings(train), _with_rewordings(validation)
    held, _ = deduplicate([r for e in held for r in (e, *e.rewordings())])
    splits = DatasetDict(train=train, validation=validation, held_out=examples_dataset(held))
    counts = SplitCounts(len(examples), duplicates, len(train), len(validation), len(held),
                         len(train) + len(validation) + len(held) - pairs)
    return splits, counts


def row_to_example(row: dict[str, Any]) -> Example:
    return Example(row["question"], row["answer"], row.get("system") or "",
                   json.loads(row.get("history") or "[]"), row.get("source") or "",
                   int(row.get("votes") or 0), row.get("created_at") or "",
                   json.loads(row.get("also_asked") or "[]"))


def examples_dataset(examples: Sequence[Example]) -> Any:
    """A datasets.Dataset with one row per Example (typed, so empty ones concatenate too)."""
    from datasets import Dataset, Features, Value

    features = Features({name: Value("int64" if name == "votes" else "string")
                         for name in Example.__dataclass_fields__})
    rows = [e.to_row() for e in examples]
    return Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)


def _rewordings_apart(rest: list[Example], held: list[Example],
                      ) -> tuple[list[Example], list[Example]]:
    """No question on both sides of the split through a rewording: a held-out pair's
    rewording that is a training question, and a training pair's rewording that is asked
    on the held-out side, are left out (else the gate would measure what was taught)."""
    taught = {normalise(e.question) for e in rest}
    held = [replace(e, also_asked=[q for q in e.also_asked if normalise(q) not in taught])
            for e in held]
    judged = {normalise(q) for e in held for q in (e.question, *e.also_asked)}
    rest = [replace(e, also_asked=[q for q in e.also_asked if normalise(q) not in judged])
            for e in rest]
    return rest, held


def _with_rewordings(split: Any) -> Any:
    """The split with one more row per rewording of its pairs (none twice)."""
    from datasets import concatenate_datasets

    seen = {dedup_key(q, a) for q, a in zip(split["question"], split["answer"], strict=True)}
    added = []
    for row in split:
        for reworded in row_to_example(row).rewordings():
            key = dedup_key(reworded.question, reworded.answer)
            if key not in seen:
                seen.add(key)
                added.append(reworded)
    return concatenate_datasets([split, examples_dataset(added)]) if added else split


# --- sampling weights ----------------------------------------------------------------

def sampling_weights(votes: Sequence[int], created_at: Sequence[str], *, vote_weight: float,
                     vote_baseline: int, half_life_days: float) -> list[float] | None:
    """How often each example should be drawn, relative to the others; None = uniform
    (the options are off, or every example weighs the same).

    A pair weighs `1 + vote_weight * (net votes above vote_baseline)` (the baseline
    is the score that made it a review candidate), halved for every `half_life_days`
    it is older than the newest pair. Age counts from the newest pair, not from the clock,
    so the same data gives the same weights on every run (and a resumed run draws
    what the interrupted one would have). Examples without a date (files) are never
    decayed, and with no votes they weigh 1.
    """
    if vote_weight <= 0 and half_life_days <= 0:
        return None
    dates = [_parse_time(text) if text else None for text in created_at]
    newest = max((d for d in dates if d is not None), default=None)
    weights = []
    for score, date in zip(votes, dates, strict=True):
        weight = 1.0 + max(vote_weight, 0.0) * max(0, int(score) - vote_baseline)
        if half_life_days > 0 and date is not None and newest is not None:
            age_days = (newest - date).total_seconds() / 86_400
            weight *= 0.5 ** (age_days / half_life_days)
        weights.append(weight)
    # equal weights are uniform sampling: keep the plain shuffle (each example once)
    return weights if len(set(weights)) > 1 else None


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError([f"created_at {text!r} is not an ISO-8601 time"],
                        header="cannot weigh training data") from None
    # the database writes UTC; a time without a zone is taken as UTC too
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

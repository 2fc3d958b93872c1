"""The channel memory's rows: the keys every approved pair is found by, as float32 bytes.

Storage knows no embedder: the bot embeds, this module stores and reads. The keys can
only be those of pairs approved now — the schema's trigger and cascades drop them with
the review change or the deletion that takes a pair out (migration 0009) — and a key is
added only while its pair is still approved as it was read (one statement checks it).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ..connection import write_transaction

# approved pairs of an adapter that have no key for `model` yet (what the bot embeds next)
UNINDEXED = """
SELECT r.turn_id, t.question, r.also_asked
FROM review r JOIN turns t ON t.id = r.turn_id
WHERE r.status = 'approved' AND r.adapter_name = ?1
  AND NOT EXISTS (SELECT 1 FROM memory_keys k WHERE k.turn_id = r.turn_id AND k.model = ?2)
ORDER BY r.turn_id LIMIT ?3"""
ADD_KEY = """
INSERT OR IGNORE INTO memory_keys (turn_id, adapter_name, kind, text, model, vector)
SELECT ?1, ?2, ?3, ?4, ?5, ?6
WHERE EXISTS (SELECT 1 FROM review WHERE turn_id = ?1 AND status = 'approved'
              AND adapter_name = ?2 AND also_asked = ?7)"""
SIGNATURE = """
SELECT COUNT(*), COALESCE(MAX(id), 0) FROM memory_keys WHERE adapter_name = ? AND model = ?"""
KEYS = "SELECT id, turn_id, vector FROM memory_keys WHERE adapter_name = ? AND model = ? " \
       "ORDER BY id"
RECALLED = """
SELECT t.id AS turn_id, t.question, COALESCE(r.edited_answer, t.answer) AS answer
FROM review r JOIN turns t ON t.id = r.turn_id
WHERE r.status = 'approved' AND r.adapter_name = ? AND t.id IN ({})"""
SIZE = """
SELECT COUNT(DISTINCT turn_id), COUNT(*) FROM memory_keys WHERE adapter_name = ?"""


@dataclass(frozen=True)
class Unindexed:
    turn_id: int
    question: str
    also_asked: list[str]
    also_asked_json: str  # as stored: the key rows are added only while it is unchanged

    def key_texts(self) -> list[tuple[str, str]]:
        """(kind, text) of every key the pair is found by."""
        return [("question", self.question), *(("also_asked", a) for a in self.also_asked)]


def unindexed(conn: sqlite3.Connection, adapter: str, model: str,
              limit: int = 256) -> list[Unindexed]:
    return [Unindexed(row["turn_id"], row["question"], json.loads(row["also_asked"] or "[]"),
                      row["also_asked"]) for row in conn.execute(UNINDEXED, (adapter, model,
                                                                              limit))]


def add_keys(conn: sqlite3.Connection, adapter: str, model: str, pair: Unindexed,
             vectors: list[bytes]) -> int:
    """The pair's keys (in `pair.key_texts()` order), if it is still approved as it was read;
    returns how many were added (0: it changed meanwhile, and is read again next time)."""
    with write_transaction(conn):
        return sum(conn.execute(ADD_KEY, (pair.turn_id, adapter, kind, text, model, vector,
                                          pair.also_asked_json)).rowcount
                   for (kind, text), vector in zip(pair.key_texts(), vectors, strict=True))


def signature(conn: sqlite3.Connection, adapter: str, model: str) -> tuple[int, int]:
    """(key count, highest key id): changes whenever a key is added or dropped."""
    count, highest = conn.execute(SIGNATURE, (adapter, model)).fetchone()
    return int(count), int(highest)


def keys(conn: sqlite3.Connection, adapter: str, model: str) -> list[tuple[int, int, bytes]]:
    return [(r[0], r[1], r[2]) for r in conn.execute(KEYS, (adapter, model))]


def recalled(conn: sqlite3.Connection, adapter: str,
             turn_ids: list[int]) -> dict[int, tuple[str, str]]:
    """turn id → (question, answer as approved now) of those still approved for `adapter`."""
    if not turn_ids:
        return {}
    sql = RECALLED.format(", ".join("?" * len(turn_ids)))
    return {r["turn_id"]: (r["question"], r["answer"])
            for r in conn.execute(sql, (adapter, *turn_ids))}


def size(conn: sqlite3.Connection, adapter: str) -> tuple[int, int]:
    """(pairs, keys) in the adapter's memory."""
    pairs, count = conn.execute(SIZE, (adapter,)).fetchone()
    return int(pairs), int(count)

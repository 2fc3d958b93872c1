"""Turns and votes, the review of candidates, imported pairs, forgetting a user."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import queries as q
from ..connection import write_transaction
from ..errors import StorageError
from ..pairs import clean_also_asked
from ..records import Pair, ReviewItem, Turn, VoteResult
from .adapters import require_adapter

REVIEW_STATUSES = ("pending", "approved", "rejected")


def _count(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> int:
    return conn.execute(sql, params).fetchone()[0]


# --- turns and votes ------------------------------------------------------------------

def record_turn(conn: sqlite3.Connection, *, channel_id: int, author_id: int, question: str,
                answer: str, context: list[dict[str, str]] | None = None,
                source: str = "discord", guild_id: int | None = None,
                question_message_id: int | None = None, answer_message_id: int | None = None,
                adapter_name: str | None = None, adapter_version: int | None = None,
                latency_ms: float | None = None, recalled_from: int | None = None) -> int:
    with write_transaction(conn):
        return conn.execute(q.INSERT_TURN, (
            source, guild_id, channel_id, author_id, question_message_id, answer_message_id,
            question, json.dumps(context or [], ensure_ascii=False), answer, adapter_name,
            adapter_version, latency_ms, recalled_from, None)).lastrowid


def get_turn(conn: sqlite3.Connection, turn_id: int) -> Turn | None:
    row = conn.execute(q.SELECT_TURN, (turn_id,)).fetchone()
    return Turn.from_row(row) if row else None


def turn_for_answer_message(conn: sqlite3.Connection, message_id: int) -> Turn | None:
    row = conn.execute(q.SELECT_TURN_BY_ANSWER_MESSAGE, (message_id,)).fetchone()
    return Turn.from_row(row) if row else None


def recent_turns(conn: sqlite3.Connection, channel_id: int, limit: int = 10) -> list[Turn]:
    rows = conn.execute(q.RECENT_TURNS, (channel_id, limit)).fetchall()
    return [Turn.from_row(r) for r in reversed(rows)]


def cast_vote(conn: sqlite3.Connection, turn_id: int, user_id: int, value: int, *,
              min_score: int) -> VoteResult:
    """One vote per user per answer (a new vote replaces the old). Committed on return."""
    if value not in (-1, 1):
        raise ValueError(f"a vote is +1 or -1, not {value!r}")
    with write_transaction(conn):
        conn.execute(q.UPSERT_VOTE, (turn_id, user_id, value))
        score = _count(conn, q.SCORE, (turn_id,))
        became = False
        if score >= min_score:
            became = conn.execute(q.INSERT_REVIEW_CANDIDATE, (turn_id,)).rowcount == 1
        else:
            conn.execute(q.WITHDRAW_PENDING_BELOW, (turn_id, min_score))
        reopened = None
        if value < 0:  # 👎 on an answer given from memory: its approved pair is looked at again
            reopened = conn.execute(q.REOPEN_RECALLED, (turn_id,)).fetchone()
    return VoteResult(score, became, reopened[0] if reopened else None)


def retract_vote(conn: sqlite3.Connection, turn_id: int, user_id: int, value: int, *,
                 min_score: int) -> int:
    """Remove the user's vote if it is `value` (removing 👍 leaves a 👎 alone).

    A pending candidate that falls below `min_score` is withdrawn; reviewed
    pairs keep their decision.
    """
    with write_transaction(conn):
        conn.execute(q.RETRACT_VOTE, (turn_id, user_id, value))
        conn.execute(q.WITHDRAW_PENDING_BELOW, (turn_id, min_score))
        return _count(conn, q.SCORE, (turn_id,))


def score(conn: sqlite3.Connection, turn_id: int) -> int:
    return _count(conn, q.SCORE, (turn_id,))


# --- review ---------------------------------------------------------------------------

def review_item(row: sqlite3.Row) -> ReviewItem:
    return ReviewItem(Turn.from_row(row), row["review_adapter"], row["status"], row["score"],
                      row["edited_answer"], row["reviewer_id"], row["reviewed_at"],
                      json.loads(row["also_asked"] or "[]"), row["review_label"])


# `scope`: the pairs of one guild (records.scope_of; None: of every guild)

def reviews(conn: sqlite3.Connection, status: str = "pending", adapter: str | None = None,
            limit: int = 25, scope: int | None = None) -> list[ReviewItem]:
    rows = conn.execute(q.SELECT_REVIEWS, (status, adapter, adapter, scope, scope, limit))
    return [review_item(r) for r in rows]


def count_reviews(conn: sqlite3.Connection, status: str = "pending",
                  adapter: str | None = None, scope: int | None = None) -> int:
    return _count(conn, q.COUNT_REVIEWS, (status, adapter, adapter, scope, scope))


def get_review(conn: sqlite3.Connection, turn_id: int) -> ReviewItem | None:
    row = conn.execute(q.SELECT_REVIEW, (turn_id,)).fetchone()
    return review_item(row) if row else None


def decide_review(conn: sqlite3.Connection, turn_id: int, status: str, *, reviewer_id: int,
                  edited_answer: str | None = None,
                  also_asked: list[str] | None = None) -> ReviewItem:
    """Approve or reject a candidate; `also_asked` (None keeps what is stored) lists
    other ways to ask its question, trained with the same answer."""
    if status not in REVIEW_STATUSES:
        raise ValueError(f"review status must be one of {REVIEW_STATUSES}, not {status!r}")
    if edited_answer is not None and not edited_answer.strip():
        raise ValueError("an edited answer cannot be empty")
    asked = None
    if also_asked is not None:  # the question itself is no other way to ask it
        turn = get_turn(conn, turn_id)
        asked = json.dumps(clean_also_asked(also_asked, turn.question if turn else ""),
                           ensure_ascii=False)
    with write_transaction(conn):
        cursor = conn.execute(q.DECIDE_REVIEW,
                              (status, edited_answer, asked, reviewer_id, turn_id))
        if cursor.rowcount != 1:
            raise StorageError(f"answer {turn_id} is not a review candidate")
    return get_review(conn, turn_id)


def count_pending_at_least(conn: sqlite3.Connection, min_score: int,
                           adapter: str | None = None, scope: int | None = None) -> int:
    return _count(conn, q.COUNT_PENDING_AT_LEAST, (adapter, adapter, scope, scope, min_score))


def approve_pending_at_least(conn: sqlite3.Connection, min_score: int, *, reviewer_id: int,
                             adapter: str | None = None, scope: int | None = None) -> int:
    """Bulk approval: every pending pair whose net score is at least `min_score`."""
    with write_transaction(conn):
        return conn.execute(q.APPROVE_PENDING_AT_LEAST, (reviewer_id, adapter, adapter, scope,
                                                         scope, min_score)).rowcount


def approved_pairs(conn: sqlite3.Connection, adapter: str | None = None,
                   scope: int | None = None) -> list[Pair]:
    """The approved pairs of an adapter (key) — only those of its own guild — or of a
    scope (None and no adapter: all)."""
    if adapter is not None and scope is None:
        scope = require_adapter(conn, adapter).guild_id
    rows = conn.execute(q.APPROVED_PAIRS, (adapter, adapter, scope, scope))
    return [Pair.from_row(r) for r in rows]


def import_pairs(conn: sqlite3.Connection, pairs: list[Pair], adapter: str, *,
                 reviewer_id: int | None = None) -> int:
    """Add `pairs` (read by storage.pairs.read_pairs_jsonl or trainer.datafiles.read_pairs)
    as approved pairs of `adapter`, approved by `reviewer_id` (who imported them): all of
    them or, when one fails, none."""
    guild_id = require_adapter(conn, adapter).guild_id or None  # they join its guild
    with write_transaction(conn):
        for pair in pairs:
            turn_id = conn.execute(q.INSERT_TURN, (
                "import", guild_id, pair.channel_id or 0, 0, None, None,
                pair.question, json.dumps(pair.context, ensure_ascii=False), pair.answer,
                adapter, None, None, None, pair.origin)).lastrowid
            conn.execute(q.INSERT_APPROVED_REVIEW, (
                turn_id, adapter, json.dumps(pair.also_asked, ensure_ascii=False),
                reviewer_id))
    return len(pairs)


def forget_question(conn: sqlite3.Connection, message_id: int) -> list[int]:
    """A question deleted where it was asked: its turn goes, with its answer, votes,
    review and memory keys; returns the deleted turn ids (trained versions' files name
    them)."""
    with write_transaction(conn):
        return [row[0] for row in conn.execute(q.DELETE_TURN_OF_QUESTION, (message_id,))]


def forget_user(conn: sqlite3.Connection, user_id: int, *, min_score: int) -> dict[str, Any]:
    """Delete a user's questions (with their answers, votes and reviews) and votes.

    Pending candidates that relied on the user's votes are withdrawn. The rows are
    gone from the files too: secure_delete zeroes them in the database, and the WAL,
    whose older frames still hold them, is checkpointed and emptied. Returns the
    counts and the ids of the deleted turns (trained versions' files name them).
    """
    with write_transaction(conn):
        turn_ids = [row[0] for row in conn.execute(q.TURN_IDS_OF_AUTHOR, (user_id,))]
        votes = conn.execute(q.DELETE_VOTES_OF_USER, (user_id,)).rowcount
        turns = conn.execute(q.DELETE_TURNS_OF_AUTHOR, (user_id,)).rowcount
        conn.execute(q.PRUNE_PENDING_BELOW, (min_score,))
    truncate_wal(conn)
    return {"turns": turns, "votes": votes, "turn_ids": turn_ids}


def truncate_wal(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file and empty it; False if a reader (the
    trainer) still used it, in which case SQLite overwrites it as writes go on."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


# --- the web review page ----------------------------------------------------------------

def search_reviews(conn: sqlite3.Connection, status: str = "pending", *,
                   adapter: str | None = None, channel_id: int | None = None,
                   min_score: int | None = None, text: str | None = None,
                   sort: str = "score", limit: int = 100, offset: int = 0,
                   scope: int | None = None) -> list[ReviewItem]:
    """Review items filtered by adapter (BASE_ADAPTER: the base model's), channel,
    least score and a text in the question or answer, in one of `q.REVIEW_SORTS`."""
    params = q.review_search_params(status, adapter, channel_id, min_score, text, scope)
    rows = conn.execute(q.search_reviews_sql(sort), (*params, limit, offset))
    return [review_item(r) for r in rows]


def count_search_reviews(conn: sqlite3.Connection, status: str = "pending", *,
                         adapter: str | None = None, channel_id: int | None = None,
                         min_score: int | None = None, text: str | None = None,
                         scope: int | None = None) -> int:
    params = q.review_search_params(status, adapter, channel_id, min_score, text, scope)
    return _count(conn, q.search_reviews_sql("score", count=True), params)


def review_counts(conn: sqlite3.Connection,
                  scope: int | None = None) -> dict[str | None, dict[str, int]]:
    """{adapter (None: the base model's pairs): {status: count}} over the scope's pairs."""
    counts: dict[str | None, dict[str, int]] = {}
    for row in conn.execute(q.REVIEW_COUNTS, (scope, scope)):
        counts.setdefault(row["adapter_name"], {s: 0 for s in REVIEW_STATUSES})[
            row["status"]] = row["n"]
    return counts


def review_channels(conn: sqlite3.Connection, status: str = "pending",
                    scope: int | None = None) -> list[int]:
    """Channels that have pairs in `status` (what a channel filter can offer)."""
    return [r[0] for r in conn.execute(q.REVIEW_CHANNELS, (status, scope, scope))]

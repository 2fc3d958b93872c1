"""The async repository the bot uses: one aiosqlite connection, owned here.

Every write runs in one IMMEDIATE transaction under a lock (tasks sharing the
connection must not interleave statements of different transactions) and is
committed before the method returns, so a caller may acknowledge it to a user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite

from . import queries as q
from .connection import PRAGMAS, connect_sync, describe_error
from .errors import AdapterExistsError, StorageError, UnknownAdapterError, UnknownVersionError
from .pairs import clean_also_asked, read_pairs_jsonl, write_pairs_jsonl
from .records import (
    Adapter,
    AdapterVersion,
    Pair,
    ResolvedAdapter,
    ReviewItem,
    TrainingRun,
    Turn,
    VoteResult,
    validate_adapter_name,
)

REVIEW_STATUSES = ("pending", "approved", "rejected")


class Database:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------
    async def open(self) -> Database:
        # migrations run on a plain connection first (the same code the trainer uses)
        await asyncio.to_thread(lambda: connect_sync(self.path, self.busy_timeout_ms).close())
        conn = await aiosqlite.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                       isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            for pragma in PRAGMAS:
                await conn.execute(pragma)
        except sqlite3.Error as exc:
            await conn.close()
            raise describe_error(exc, str(self.path)) from exc
        self._conn = conn
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError("database is not open: call `await db.open()` first")
        return self._conn

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            conn = self.conn
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                await asyncio.shield(conn.rollback())  # a no-op unless BEGIN went through
                raise describe_error(exc, str(self.path)) from exc
            except BaseException:
                # cancelled while aiosqlite's thread still ran BEGIN: never leave it open
                await asyncio.shield(conn.rollback())
                raise
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:  # the body failed, was cancelled, or COMMIT itself failed
                await asyncio.shield(conn.rollback())
                raise

    async def _one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        async with self.conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        async with self.conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def schema_version(self) -> int:
        row = await self._one("PRAGMA user_version")
        return row[0]

    # --- adapters -------------------------------------------------------------------
    async def create_adapter(self, name: str, base_model: str, *, based_on: str | None = None,
                             description: str = "", system_prompt: str | None = None,
                             created_by: int | None = None) -> Adapter:
        validate_adapter_name(name)
        if based_on is not None:
            await self.require_adapter(based_on)
        try:
            async with self._write() as conn:
                await conn.execute(q.INSERT_ADAPTER, (name, base_model, description,
                                                      system_prompt, based_on, created_by))
        except sqlite3.IntegrityError:
            raise AdapterExistsError(name) from None
        return await self.require_adapter(name)

    async def get_adapter(self, name: str) -> Adapter | None:
        row = await self._one(q.SELECT_ADAPTER, (name,))
        return Adapter.from_row(row) if row else None

    async def require_adapter(self, name: str) -> Adapter:
        adapter = await self.get_adapter(name)
        if adapter is None:
            raise UnknownAdapterError(name, await self.adapter_names())
        return adapter

    async def list_adapters(self) -> list[Adapter]:
        return [Adapter.from_row(r) for r in await self._all(q.LIST_ADAPTERS)]

    async def adapter_names(self) -> list[str]:
        return [r["name"] for r in await self._all(q.LIST_ADAPTER_NAMES)]

    async def set_system_prompt(self, adapter: str, prompt: str | None) -> None:
        """The adapter's own system prompt (None: the configured default)."""
        await self.require_adapter(adapter)
        async with self._write() as conn:
            await conn.execute(q.SET_SYSTEM_PROMPT, (prompt or None, adapter))

    async def add_version(self, adapter: str, *, path: str, metrics: dict[str, Any] | None = None,
                          status: str = "candidate", scale: float = 1.0,
                          reason: str | None = None, run_id: int | None = None) -> AdapterVersion:
        """Record the next version number of `adapter` (a serving one retires the old)."""
        record = await self.require_adapter(adapter)
        async with self._write() as conn:
            async with conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)) as cursor:
                (number,) = await cursor.fetchone()
            if status == "serving":
                await conn.execute(q.RETIRE_SERVING, (record.id,))
            await conn.execute(q.INSERT_VERSION, (record.id, number, path, status, scale,
                                                  json.dumps(metrics or {}), reason, run_id))
        return await self.get_version(adapter, number)

    async def get_version(self, adapter: str, version: int) -> AdapterVersion:
        row = await self._one(q.SELECT_VERSION, (adapter, version))
        if row is None:
            await self.require_adapter(adapter)
            known = [v.version for v in await self.versions(adapter)]
            raise UnknownVersionError(f"adapter {adapter!r} has no version {version}; "
                                      f"versions: {known or 'none yet'}")
        return AdapterVersion.from_row(row)

    async def versions(self, adapter: str) -> list[AdapterVersion]:
        return [AdapterVersion.from_row(r) for r in await self._all(q.SELECT_VERSIONS, (adapter,))]

    async def serving_version(self, adapter: str) -> AdapterVersion | None:
        row = await self._one(q.SELECT_SERVING_VERSION, (adapter,))
        return AdapterVersion.from_row(row) if row else None

    async def set_serving(self, adapter: str, version: int,
                          reason: str | None = None) -> AdapterVersion:
        """Promote (or roll back to) `version`; the one serving before is retired."""
        record = await self.require_adapter(adapter)
        await self.get_version(adapter, version)  # clear error for an unknown version
        async with self._write() as conn:
            await conn.execute(q.RETIRE_SERVING, (record.id,))
            await conn.execute(q.MAKE_SERVING, (reason, record.id, version))
        return await self.get_version(adapter, version)

    # --- channel routing ------------------------------------------------------------
    async def bind_channel(self, channel_id: int, adapter: str, *, guild_id: int | None = None,
                           bound_by: int | None = None) -> None:
        record = await self.require_adapter(adapter)
        async with self._write() as conn:
            await conn.execute(q.BIND_CHANNEL, (channel_id, guild_id, record.id, bound_by))

    async def unbind_channel(self, channel_id: int) -> None:
        async with self._write() as conn:
            await conn.execute(q.UNBIND_CHANNEL, (channel_id,))

    async def set_guild_default(self, guild_id: int, adapter: str, *,
                                bound_by: int | None = None) -> None:
        record = await self.require_adapter(adapter)
        async with self._write() as conn:
            await conn.execute(q.BIND_GUILD, (guild_id, record.id, bound_by))

    async def channels_of(self, adapter: str) -> list[int]:
        return [r["channel_id"] for r in await self._all(q.CHANNELS_OF_ADAPTER, (adapter,))]

    async def resolve_adapter_for(self, channel_id: int,
                                  guild_id: int | None = None) -> ResolvedAdapter | None:
        """channel → bound adapter, else the guild default, else None (the base model)."""
        row = await self._one(q.CHANNEL_ADAPTER, (channel_id,))
        via = "channel"
        if row is None and guild_id is not None:
            row, via = await self._one(q.GUILD_ADAPTER, (guild_id,)), "guild"
        if row is None:
            return None
        return ResolvedAdapter(row["name"], await self.serving_version(row["name"]), via)

    # --- turns and votes ------------------------------------------------------------
    async def record_turn(self, *, channel_id: int, author_id: int, question: str, answer: str,
                          context: list[dict[str, str]] | None = None, source: str = "discord",
                          guild_id: int | None = None, question_message_id: int | None = None,
                          answer_message_id: int | None = None, adapter_name: str | None = None,
                          adapter_version: int | None = None,
                          latency_ms: float | None = None) -> int:
        async with self._write() as conn:
            cursor = await conn.execute(q.INSERT_TURN, (
                source, guild_id, channel_id, author_id, question_message_id, answer_message_id,
                question, json.dumps(context or [], ensure_ascii=False), answer, adapter_name,
                adapter_version, latency_ms))
            return cursor.lastrowid

    async def get_turn(self, turn_id: int) -> Turn | None:
        row = await self._one(q.SELECT_TURN, (turn_id,))
        return Turn.from_row(row) if row else None

    async def turn_for_answer_message(self, message_id: int) -> Turn | None:
        row = await self._one(q.SELECT_TURN_BY_ANSWER_MESSAGE, (message_id,))
        return Turn.from_row(row) if row else None

    async def recent_turns(self, channel_id: int, limit: int = 10) -> list[Turn]:
        rows = await self._all(q.RECENT_TURNS, (channel_id, limit))
        return [Turn.from_row(r) for r in reversed(rows)]

    async def cast_vote(self, turn_id: int, user_id: int, value: int, *,
                        min_score: int) -> VoteResult:
        """One vote per user per answer (a new vote replaces the old). Committed on return."""
        if value not in (-1, 1):
            raise ValueError(f"a vote is +1 or -1, not {value!r}")
        async with self._write() as conn:
            await conn.execute(q.UPSERT_VOTE, (turn_id, user_id, value))
            async with conn.execute(q.SCORE, (turn_id,)) as cursor:
                (score,) = await cursor.fetchone()
            became = False
            if score >= min_score:
                cursor = await conn.execute(q.INSERT_REVIEW_CANDIDATE, (turn_id,))
                became = cursor.rowcount == 1
            else:
                await conn.execute(q.WITHDRAW_PENDING_BELOW, (turn_id, min_score))
        return VoteResult(score, became)

    async def retract_vote(self, turn_id: int, user_id: int, value: int, *,
                           min_score: int) -> int:
        """Remove the user's vote if it is `value` (removing 👍 leaves a 👎 alone).

        A pending candidate that falls below `min_score` is withdrawn; reviewed
        pairs keep their decision.
        """
        async with self._write() as conn:
            await conn.execute(q.RETRACT_VOTE, (turn_id, user_id, value))
            await conn.execute(q.WITHDRAW_PENDING_BELOW, (turn_id, min_score))
            async with conn.execute(q.SCORE, (turn_id,)) as cursor:
                (score,) = await cursor.fetchone()
        return score

    async def score(self, turn_id: int) -> int:
        return (await self._one(q.SCORE, (turn_id,)))[0]

    # --- review ---------------------------------------------------------------------
    async def reviews(self, status: str = "pending", adapter: str | None = None,
                      limit: int = 25) -> list[ReviewItem]:
        rows = await self._all(q.SELECT_REVIEWS, (status, adapter, adapter, limit))
        return [_review_item(r) for r in rows]

    async def count_reviews(self, status: str = "pending", adapter: str | None = None) -> int:
        return (await self._one(q.COUNT_REVIEWS, (status, adapter, adapter)))[0]

    async def get_review(self, turn_id: int) -> ReviewItem | None:
        row = await self._one(q.SELECT_REVIEW, (turn_id,))
        return _review_item(row) if row else None

    async def decide_review(self, turn_id: int, status: str, *, reviewer_id: int,
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
            turn = await self._one(q.SELECT_TURN, (turn_id,))
            asked = json.dumps(clean_also_asked(also_asked, turn["question"] if turn else ""),
                               ensure_ascii=False)
        async with self._write() as conn:
            cursor = await conn.execute(q.DECIDE_REVIEW,
                                        (status, edited_answer, asked, reviewer_id, turn_id))
            if cursor.rowcount != 1:
                raise StorageError(f"answer {turn_id} is not a review candidate")
        return await self.get_review(turn_id)

    async def count_pending_at_least(self, min_score: int, adapter: str | None = None) -> int:
        return (await self._one(q.COUNT_PENDING_AT_LEAST, (adapter, adapter, min_score)))[0]

    async def approve_pending_at_least(self, min_score: int, *, reviewer_id: int,
                                       adapter: str | None = None) -> int:
        """Bulk approval: every pending pair whose net score is at least `min_score`."""
        async with self._write() as conn:
            cursor = await conn.execute(q.APPROVE_PENDING_AT_LEAST,
                                        (reviewer_id, adapter, adapter, min_score))
            return cursor.rowcount

    async def approved_pairs(self, adapter: str | None = None) -> list[Pair]:
        return [Pair.from_row(r) for r in await self._all(q.APPROVED_PAIRS, (adapter, adapter))]

    async def export_approved(self, path: str | Path, adapter: str | None = None) -> int:
        pairs = await self.approved_pairs(adapter)
        return await asyncio.to_thread(write_pairs_jsonl, pairs, path)

    async def import_pairs(self, path: str | Path, adapter: str) -> int:
        """Add the pairs of a JSONL file as approved training data of `adapter`."""
        await self.require_adapter(adapter)
        pairs = await asyncio.to_thread(read_pairs_jsonl, path, adapter)
        async with self._write() as conn:  # all lines or none
            for pair in pairs:
                cursor = await conn.execute(q.INSERT_TURN, (
                    "import", None, pair.channel_id or 0, 0, None, None, pair.question,
                    json.dumps(pair.context, ensure_ascii=False), pair.answer, adapter, None,
                    None))
                await conn.execute(q.INSERT_APPROVED_REVIEW, (
                    cursor.lastrowid, adapter, json.dumps(pair.also_asked, ensure_ascii=False)))
        return len(pairs)

    async def forget_user(self, user_id: int, *, min_score: int) -> dict[str, Any]:
        """Delete a user's questions (with their answers, votes and reviews) and votes.

        Pending candidates that relied on the user's votes are withdrawn. The rows are
        gone from the files too: secure_delete zeroes them in the database, and the WAL,
        whose older frames still hold them, is checkpointed and emptied. Returns the
        counts and the ids of the deleted turns (trained versions' files name them).
        """
        async with self._write() as conn:
            async with conn.execute(q.TURN_IDS_OF_AUTHOR, (user_id,)) as cursor:
                turn_ids = [row[0] for row in await cursor.fetchall()]
            votes = (await conn.execute(q.DELETE_VOTES_OF_USER, (user_id,))).rowcount
            turns = (await conn.execute(q.DELETE_TURNS_OF_AUTHOR, (user_id,))).rowcount
            await conn.execute(q.PRUNE_PENDING_BELOW, (min_score,))
        await self.truncate_wal()
        return {"turns": turns, "votes": votes, "turn_ids": turn_ids}

    async def truncate_wal(self) -> bool:
        """Copy the WAL into the database file and empty it; False if a reader (the
        trainer) still used it, in which case SQLite overwrites it as writes go on."""
        async with self._write_lock:
            busy, _, _ = await self._one("PRAGMA wal_checkpoint(TRUNCATE)")
        return busy == 0

    # --- training runs --------------------------------------------------------------
    async def create_run(self, adapter: str, *, trigger: str = "manual",
                         requested_by: int | None = None) -> TrainingRun:
        record = await self.require_adapter(adapter)
        async with self._write() as conn:
            cursor = await conn.execute(q.INSERT_RUN, (record.id, trigger, requested_by))
            run_id = cursor.lastrowid
        return await self.get_run(run_id)

    async def update_run(self, run_id: int, **fields: Any) -> TrainingRun:
        if "metrics" in fields and not isinstance(fields["metrics"], str):
            fields["metrics"] = json.dumps(fields["metrics"])
        sql = q.update_run_sql(list(fields))
        async with self._write() as conn:
            await conn.execute(sql, (*fields.values(), run_id))
        return await self.get_run(run_id)

    async def get_run(self, run_id: int) -> TrainingRun:
        row = await self._one(q.SELECT_RUN, (run_id,))
        if row is None:
            raise StorageError(f"no training run {run_id}")
        return TrainingRun.from_row(row)

    async def list_runs(self, adapter: str | None = None, limit: int = 20) -> list[TrainingRun]:
        rows = await self._all(q.LIST_RUNS, (adapter, adapter, limit))
        return [TrainingRun.from_row(r) for r in rows]

    async def get_state(self, key: str) -> str | None:
        row = await self._one(q.GET_STATE, (key,))
        return row[0] if row else None

    async def set_state(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(q.SET_STATE, (key, value))

    async def count_unseen_approved(self, adapter: str) -> int:
        """Approved pairs of `adapter` that its serving version was not trained on, or whose
        review changed after that version's run began (a corrected answer, other ways to
        ask)."""
        return (await self._one(q.COUNT_UNSEEN_APPROVED, (adapter, adapter, adapter)))[0]

    async def version_pair_counts(self, adapter: str, version: int) -> dict[str, int]:
        """How many stored pairs a version was trained, validated and judged on."""
        rows = await self._all(q.VERSION_PAIR_COUNTS, (adapter, version))
        return {row["split"]: row["n"] for row in rows}

    # --- the training lock ----------------------------------------------------------
    async def acquire_training_lock(self, run_id: int | None, pid: int,
                                    host: str) -> dict | None:
        """Take the lock; None on success, else the holder's row (who has it)."""
        async with self._write() as conn:
            async with conn.execute(q.SELECT_LOCK) as cursor:
                holder = await cursor.fetchone()
            if holder is not None:
                return dict(holder)
            await conn.execute(q.INSERT_LOCK, (run_id, pid, host))
        return None

    async def hand_over_training_lock(self, run_id: int, pid: int, *, from_pid: int) -> None:
        """The lock passes from the bot to the child it started, in one statement."""
        async with self._write() as conn:
            await conn.execute(q.HAND_OVER_LOCK, (run_id, pid, from_pid))

    async def training_lock(self) -> dict | None:
        row = await self._one(q.SELECT_LOCK)
        return dict(row) if row else None

    async def release_training_lock(self, run_id: int | None = None) -> None:
        """Release the lock (only if `run_id` still holds it, when given)."""
        async with self._write() as conn:
            await conn.execute(q.DELETE_LOCK, (run_id, run_id))

    async def runs_left_running(self) -> list[TrainingRun]:
        return [TrainingRun.from_row(r) for r in await self._all(q.RUNS_LEFT_RUNNING)]

    async def stats(self) -> dict[str, int]:
        return dict(await self._one(q.STATS))

    # --- the web review page ----------------------------------------------------------
    async def search_reviews(self, status: str = "pending", *, adapter: str | None = None,
                             channel_id: int | None = None, min_score: int | None = None,
                             text: str | None = None, sort: str = "score", limit: int = 100,
                             offset: int = 0) -> list[ReviewItem]:
        """Review items filtered by adapter (BASE_ADAPTER: the base model's), channel,
        least score and a text in the question or answer, in one of `q.REVIEW_SORTS`."""
        params = q.review_search_params(status, adapter, channel_id, min_score, text)
        rows = await self._all(q.search_reviews_sql(sort), (*params, limit, offset))
        return [_review_item(r) for r in rows]

    async def count_search_reviews(self, status: str = "pending", *, adapter: str | None = None,
                                   channel_id: int | None = None, min_score: int | None = None,
                                   text: str | None = None) -> int:
        params = q.review_search_params(status, adapter, channel_id, min_score, text)
        return (await self._one(q.search_reviews_sql("score", count=True), params))[0]

    async def review_counts(self) -> dict[str | None, dict[str, int]]:
        """{adapter (None: the base model's pairs): {status: count}} over every pair."""
        counts: dict[str | None, dict[str, int]] = {}
        for row in await self._all(q.REVIEW_COUNTS):
            counts.setdefault(row["adapter_name"], {s: 0 for s in REVIEW_STATUSES})[
                row["status"]] = row["n"]
        return counts

    async def review_channels(self, status: str = "pending") -> list[int]:
        """Channels that have pairs in `status` (what a channel filter can offer)."""
        return [r[0] for r in await self._all(q.REVIEW_CHANNELS, (status,))]

    async def version_pairs(self, adapter: str, version: int) -> list[dict[str, Any]]:
        """The stored pairs a version was trained, validated and judged on, by split;
        question and answer are None for a turn deleted since (by /forget)."""
        await self.get_version(adapter, version)  # clear error for an unknown version
        return [dict(r) for r in await self._all(q.VERSION_PAIRS, (adapter, version))]

    async def record_admin_action(self, admin_id: int, action: str, target: str | None = None,
                                  detail: dict[str, Any] | None = None, *,
                                  source: str = "web") -> None:
        """Who did what to which thing: the admin log (see migration 0005)."""
        async with self._write() as conn:
            await conn.execute(q.INSERT_ADMIN_ACTION, (
                admin_id, source, action, target,
                json.dumps(detail or {}, ensure_ascii=False)))

    async def admin_actions(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._all(q.RECENT_ADMIN_ACTIONS, (limit,))
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]


def _review_item(row: sqlite3.Row) -> ReviewItem:
    return ReviewItem(Turn.from_row(row), row["review_adapter"], row["status"], row["score"],
                      row["edited_answer"], row["reviewer_id"], row["reviewed_at"],
                      json.loads(row["also_asked"] or "[]"))

"""The async repository the bot uses: one aiosqlite connection, owned here.

Every method is one operation of storage/ops (the same code the trainer's
`SyncStore` runs), run as a single call on the thread of the aiosqlite
connection. Every write is one IMMEDIATE transaction committed before the
method returns, so a caller may acknowledge it to a user.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .connection import prepare
from .errors import StorageError
from .memory import MemoryRows
from .migrations import schema_version
from .ops import adapters, feedback, runs
from .ops.feedback import REVIEW_STATUSES
from .pairs import read_pairs_jsonl, write_pairs_jsonl
from .records import (
    DIRECT_SCOPE,
    Adapter,
    AdapterVersion,
    Pair,
    ResolvedAdapter,
    ReviewItem,
    TrainingRun,
    Turn,
    VoteResult,
)

__all__ = ["REVIEW_STATUSES", "Database"]

T = TypeVar("T")


class Database:
    """The bot's store; each method runs the storage/ops operation of the same name
    (documented there), awaited, on the connection's thread (see `_run`)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None

    # --- lifecycle ------------------------------------------------------------------
    async def open(self) -> Database:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                             isolation_level=None)
        try:
            self._conn.row_factory = sqlite3.Row
            # pragmas and migrations: the same code the trainer's connection runs
            await self._run(prepare, self.busy_timeout_ms, str(self.path))
        except BaseException:
            await self.close()
            raise
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

    async def _run(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`operation(connection, *args, **kwargs)` as one call on the connection's thread.

        That thread runs one call at a time, in order, and an operation (its reads and
        its whole transaction) is one call, so no statement of another task can run
        between its BEGIN and COMMIT. That is why reads take no lock: it would only
        repeat this order. Nor do they get a connection of their own: that would only let
        a read overtake a write waiting for another process's lock (busy_timeout bounds
        that wait), at the cost of a second connection to configure and close.

        A cancelled caller (a timeout, a client gone) returns at once. Its operation is
        skipped if it has not started; one that has started ends on the thread as one
        call (committed or rolled back), so no transaction is ever left open.
        """
        conn = self.conn
        abandoned = threading.Event()

        def unless_abandoned(connection: sqlite3.Connection) -> T:
            if abandoned.is_set():
                raise asyncio.CancelledError  # nobody waits for it: do nothing
            return operation(connection, *args, **kwargs)

        # `_execute` and `_conn` are how aiosqlite itself queues a call on its thread with
        # the sqlite3 connection; private there, but unchanged for years, and every
        # Database test goes through them
        job = asyncio.ensure_future(conn._execute(unless_abandoned, conn._conn))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            abandoned.set()
            # the caller is gone: nobody to tell how it ended
            job.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise

    # ad hoc statements (tests, benchmarks), queued on the same thread between operations
    async def _one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        async with self.conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        async with self.conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def schema_version(self) -> int:
        return await self._run(schema_version)

    # --- adapters -------------------------------------------------------------------
    async def create_adapter(self, name: str, base_model: str, *, scope: int = DIRECT_SCOPE,
                             based_on: str | None = None, description: str = "",
                             system_prompt: str | None = None,
                             created_by: int | None = None) -> Adapter:
        return await self._run(adapters.create_adapter, name, base_model, scope=scope,
                               based_on=based_on, description=description,
                               system_prompt=system_prompt, created_by=created_by)

    async def get_adapter(self, name: str) -> Adapter | None:
        return await self._run(adapters.get_adapter, name)

    async def require_adapter(self, name: str) -> Adapter:
        return await self._run(adapters.require_adapter, name)

    async def adapter_in(self, label: str, scope: int) -> Adapter:
        return await self._run(adapters.adapter_in, label, scope)

    async def list_adapters(self, scope: int | None = None) -> list[Adapter]:
        return await self._run(adapters.list_adapters, scope)

    async def adapter_names(self) -> list[str]:
        return await self._run(adapters.adapter_names)

    async def set_system_prompt(self, adapter: str, prompt: str | None) -> None:
        await self._run(adapters.set_system_prompt, adapter, prompt)

    async def add_version(self, adapter: str, *, path: str, metrics: dict[str, Any] | None = None,
                          status: str = "candidate", scale: float = 1.0,
                          reason: str | None = None, run_id: int | None = None) -> AdapterVersion:
        return await self._run(adapters.add_version, adapter, path=path, metrics=metrics,
                               status=status, scale=scale, reason=reason, run_id=run_id)

    async def get_version(self, adapter: str, version: int) -> AdapterVersion:
        return await self._run(adapters.get_version, adapter, version)

    async def versions(self, adapter: str) -> list[AdapterVersion]:
        return await self._run(adapters.versions, adapter)

    async def serving_version(self, adapter: str) -> AdapterVersion | None:
        return await self._run(adapters.serving_version, adapter)

    async def set_serving(self, adapter: str, version: int,
                          reason: str | None = None) -> AdapterVersion:
        return await self._run(adapters.set_serving, adapter, version, reason)

    # --- channel routing ------------------------------------------------------------
    async def bind_channel(self, channel_id: int, adapter: str, *, guild_id: int | None = None,
                           bound_by: int | None = None) -> None:
        await self._run(adapters.bind_channel, channel_id, adapter, guild_id=guild_id,
                        bound_by=bound_by)

    async def unbind_channel(self, channel_id: int) -> None:
        await self._run(adapters.unbind_channel, channel_id)

    async def set_guild_default(self, guild_id: int, adapter: str, *,
                                bound_by: int | None = None) -> None:
        await self._run(adapters.set_guild_default, guild_id, adapter, bound_by=bound_by)

    async def channels_of(self, adapter: str) -> list[int]:
        return await self._run(adapters.channels_of, adapter)

    async def resolve_adapter_for(self, channel_id: int,
                                  guild_id: int | None = None) -> ResolvedAdapter | None:
        return await self._run(adapters.resolve_adapter_for, channel_id, guild_id)

    # --- turns and votes ------------------------------------------------------------
    async def record_turn(self, *, channel_id: int, author_id: int, question: str, answer: str,
                          context: list[dict[str, str]] | None = None, source: str = "discord",
                          guild_id: int | None = None, question_message_id: int | None = None,
                          answer_message_id: int | None = None, adapter_name: str | None = None,
                          adapter_version: int | None = None,
                          latency_ms: float | None = None,
                          recalled_from: int | None = None) -> int:
        return await self._run(
            feedback.record_turn, channel_id=channel_id, author_id=author_id,
            question=question, answer=answer, context=context, source=source,
            guild_id=guild_id, question_message_id=question_message_id,
            answer_message_id=answer_message_id, adapter_name=adapter_name,
            adapter_version=adapter_version, latency_ms=latency_ms,
            recalled_from=recalled_from)

    async def get_turn(self, turn_id: int) -> Turn | None:
        return await self._run(feedback.get_turn, turn_id)

    async def turn_for_answer_message(self, message_id: int) -> Turn | None:
        return await self._run(feedback.turn_for_answer_message, message_id)

    async def recent_turns(self, channel_id: int, limit: int = 10) -> list[Turn]:
        return await self._run(feedback.recent_turns, channel_id, limit)

    async def cast_vote(self, turn_id: int, user_id: int, value: int, *,
                        min_score: int) -> VoteResult:
        return await self._run(feedback.cast_vote, turn_id, user_id, value,
                               min_score=min_score)

    async def retract_vote(self, turn_id: int, user_id: int, value: int, *,
                           min_score: int) -> int:
        return await self._run(feedback.retract_vote, turn_id, user_id, value,
                               min_score=min_score)

    async def score(self, turn_id: int) -> int:
        return await self._run(feedback.score, turn_id)

    # --- review ---------------------------------------------------------------------
    # (`scope`: one guild's pairs, runs, counts; None: every guild's)
    async def reviews(self, status: str = "pending", adapter: str | None = None,
                      limit: int = 25, scope: int | None = None) -> list[ReviewItem]:
        return await self._run(feedback.reviews, status, adapter, limit, scope)

    async def count_reviews(self, status: str = "pending", adapter: str | None = None,
                            scope: int | None = None) -> int:
        return await self._run(feedback.count_reviews, status, adapter, scope)

    async def get_review(self, turn_id: int) -> ReviewItem | None:
        return await self._run(feedback.get_review, turn_id)

    async def decide_review(self, turn_id: int, status: str, *, reviewer_id: int,
                            edited_answer: str | None = None,
                            also_asked: list[str] | None = None) -> ReviewItem:
        return await self._run(feedback.decide_review, turn_id, status,
                               reviewer_id=reviewer_id, edited_answer=edited_answer,
                               also_asked=also_asked)

    async def count_pending_at_least(self, min_score: int, adapter: str | None = None,
                                     scope: int | None = None) -> int:
        return await self._run(feedback.count_pending_at_least, min_score, adapter, scope)

    async def approve_pending_at_least(self, min_score: int, *, reviewer_id: int,
                                       adapter: str | None = None,
                                       scope: int | None = None) -> int:
        return await self._run(feedback.approve_pending_at_least, min_score,
                               reviewer_id=reviewer_id, adapter=adapter, scope=scope)

    async def approved_pairs(self, adapter: str | None = None,
                             scope: int | None = None) -> list[Pair]:
        return await self._run(feedback.approved_pairs, adapter, scope)

    async def export_approved(self, path: str | Path, adapter: str | None = None,
                              scope: int | None = None) -> int:
        pairs = await self.approved_pairs(adapter, scope)
        return await asyncio.to_thread(write_pairs_jsonl, pairs, path)

    async def import_pairs(self, path: str | Path, adapter: str) -> int:
        """Add the pairs of a JSONL file as approved training data of `adapter`."""
        await self.require_adapter(adapter)  # before reading a file it would not import
        pairs = await asyncio.to_thread(read_pairs_jsonl, path, adapter)
        return await self._run(feedback.import_pairs, pairs, adapter)

    async def import_rows(self, pairs: list[Pair], adapter: str, *,
                          reviewer_id: int | None = None) -> int:
        """Pairs read already (trainer.datafiles.read_pairs), approved by `reviewer_id`."""
        return await self._run(feedback.import_pairs, pairs, adapter, reviewer_id=reviewer_id)

    async def forget_question(self, message_id: int) -> list[int]:
        return await self._run(feedback.forget_question, message_id)

    async def forget_user(self, user_id: int, *, min_score: int) -> dict[str, Any]:
        return await self._run(feedback.forget_user, user_id, min_score=min_score)

    async def truncate_wal(self) -> bool:
        return await self._run(feedback.truncate_wal)

    # --- training runs --------------------------------------------------------------
    async def create_run(self, adapter: str, *, trigger: str = "manual",
                         requested_by: int | None = None,
                         channel_id: int | None = None) -> TrainingRun:
        return await self._run(runs.create_run, adapter, trigger=trigger,
                               requested_by=requested_by, channel_id=channel_id)

    async def update_run(self, run_id: int, **fields: Any) -> TrainingRun:
        return await self._run(runs.update_run, run_id, **fields)

    async def get_run(self, run_id: int) -> TrainingRun:
        return await self._run(runs.get_run, run_id)

    async def list_runs(self, adapter: str | None = None, limit: int = 20,
                        scope: int | None = None) -> list[TrainingRun]:
        return await self._run(runs.list_runs, adapter, limit, scope)

    async def get_state(self, key: str) -> str | None:
        return await self._run(runs.get_state, key)

    async def set_state(self, key: str, value: str) -> None:
        await self._run(runs.set_state, key, value)

    async def count_unseen_approved(self, adapter: str) -> int:
        return await self._run(runs.count_unseen_approved, adapter)

    async def version_pair_counts(self, adapter: str, version: int) -> dict[str, int]:
        return await self._run(runs.version_pair_counts, adapter, version)

    # --- the training lock ----------------------------------------------------------
    async def acquire_training_lock(self, run_id: int | None, pid: int,
                                    host: str) -> dict | None:
        return await self._run(runs.acquire_training_lock, run_id, pid, host)

    async def hand_over_training_lock(self, run_id: int, pid: int, *, from_pid: int) -> None:
        await self._run(runs.hand_over_training_lock, run_id, pid, from_pid=from_pid)

    async def training_lock(self) -> dict | None:
        return await self._run(runs.training_lock)

    async def release_training_lock(self, run_id: int | None = None) -> None:
        await self._run(runs.release_training_lock, run_id)

    async def runs_left_running(self) -> list[TrainingRun]:
        return await self._run(runs.runs_left_running)

    async def stats(self, scope: int | None = None) -> dict[str, int]:
        return await self._run(runs.stats, scope)

    # --- the web review page ----------------------------------------------------------
    async def search_reviews(self, status: str = "pending", *, adapter: str | None = None,
                             channel_id: int | None = None, min_score: int | None = None,
                             text: str | None = None, sort: str = "score", limit: int = 100,
                             offset: int = 0, scope: int | None = None) -> list[ReviewItem]:
        return await self._run(feedback.search_reviews, status, adapter=adapter,
                               channel_id=channel_id, min_score=min_score, text=text,
                               sort=sort, limit=limit, offset=offset, scope=scope)

    async def count_search_reviews(self, status: str = "pending", *, adapter: str | None = None,
                                   channel_id: int | None = None, min_score: int | None = None,
                                   text: str | None = None, scope: int | None = None) -> int:
        return await self._run(feedback.count_search_reviews, status, adapter=adapter,
                               channel_id=channel_id, min_score=min_score, text=text,
                               scope=scope)

    async def review_counts(self, scope: int | None = None) -> dict[str | None, dict[str, int]]:
        return await self._run(feedback.review_counts, scope)

    async def review_channels(self, status: str = "pending",
                              scope: int | None = None) -> list[int]:
        return await self._run(feedback.review_channels, status, scope)

    @property
    def memory(self) -> MemoryRows:
        """The channel memory's keys (storage.memory)."""
        return MemoryRows(self)

    async def version_pairs(self, adapter: str, version: int) -> list[dict[str, Any]]:
        return await self._run(runs.version_pairs, adapter, version)

    async def record_admin_action(self, admin_id: int, action: str, target: str | None = None,
                                  detail: dict[str, Any] | None = None, *,
                                  source: str = "web", guild_id: int | None = None) -> None:
        await self._run(runs.record_admin_action, admin_id, action, target, detail,
                        source=source, guild_id=guild_id)

    async def admin_actions(self, limit: int = 50,
                            scope: int | None = None) -> list[dict[str, Any]]:
        return await self._run(runs.admin_actions, limit, scope)

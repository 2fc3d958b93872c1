"""Training runs and what each version saw, the training lock, state that survives
restarts, counts, and the admin log."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import queries as q
from ..connection import write_transaction
from ..errors import StorageError
from ..records import TrainingRun
from .adapters import get_version, require_adapter


def create_run(conn: sqlite3.Connection, adapter: str, *, trigger: str = "manual",
               requested_by: int | None = None, channel_id: int | None = None) -> TrainingRun:
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        run_id = conn.execute(q.INSERT_RUN, (record.id, trigger, requested_by,
                                             channel_id)).lastrowid
    return get_run(conn, run_id)


def update_run(conn: sqlite3.Connection, run_id: int, **fields: Any) -> TrainingRun:
    if "metrics" in fields and not isinstance(fields["metrics"], str):
        fields = {**fields, "metrics": json.dumps(fields["metrics"])}
    sql = q.update_run_sql(list(fields))
    with write_transaction(conn):
        conn.execute(sql, (*fields.values(), run_id))
    return get_run(conn, run_id)


def get_run(conn: sqlite3.Connection, run_id: int, *, hint: str = "") -> TrainingRun:
    """The run; StorageError (ending in `hint`, how to find the right one) if none."""
    row = conn.execute(q.SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        raise StorageError(f"no training run {run_id}{hint}")
    return TrainingRun.from_row(row)


def list_runs(conn: sqlite3.Connection, adapter: str | None = None,
              limit: int = 20, scope: int | None = None) -> list[TrainingRun]:
    """The newest runs of an adapter (key) or of a scope's adapters (None: all)."""
    rows = conn.execute(q.LIST_RUNS, (adapter, adapter, scope, scope, limit))
    return [TrainingRun.from_row(r) for r in rows]


def runs_left_running(conn: sqlite3.Connection) -> list[TrainingRun]:
    return [TrainingRun.from_row(r) for r in conn.execute(q.RUNS_LEFT_RUNNING)]


# --- what each version saw ----------------------------------------------------------------

def record_version_pairs(conn: sqlite3.Connection, version_id: int,
                         pairs: list[tuple[int, str]]) -> None:
    """(turn_id, split) of every stored pair a version was built from."""
    with write_transaction(conn):
        conn.executemany(q.INSERT_VERSION_PAIR,
                         [(version_id, turn_id, split) for turn_id, split in pairs])


def count_unseen_approved(conn: sqlite3.Connection, adapter: str) -> int:
    """Approved pairs of `adapter` that its serving version was not trained on, or whose
    review changed after that version's run began (a corrected answer, other ways to
    ask)."""
    return conn.execute(q.COUNT_UNSEEN_APPROVED, (adapter, adapter, adapter)).fetchone()[0]


def version_pair_counts(conn: sqlite3.Connection, adapter: str,
                        version: int) -> dict[str, int]:
    """How many stored pairs a version was trained, validated and judged on."""
    rows = conn.execute(q.VERSION_PAIR_COUNTS, (adapter, version))
    return {row["split"]: row["n"] for row in rows}


def version_pairs(conn: sqlite3.Connection, adapter: str, version: int) -> list[dict[str, Any]]:
    """The stored pairs a version was trained, validated and judged on, by split;
    question and answer are None for a turn deleted since (by /forget)."""
    get_version(conn, adapter, version)  # clear error for an unknown version
    return [dict(r) for r in conn.execute(q.VERSION_PAIRS, (adapter, version))]


# --- the training lock ------------------------------------------------------------------

def acquire_training_lock(conn: sqlite3.Connection, run_id: int | None, pid: int,
                          host: str) -> dict | None:
    """Take the lock; None on success, else the holder's row (who has it)."""
    with write_transaction(conn):
        holder = conn.execute(q.SELECT_LOCK).fetchone()
        if holder is not None:
            return dict(holder)
        conn.execute(q.INSERT_LOCK, (run_id, pid, host))
    return None


def hand_over_training_lock(conn: sqlite3.Connection, run_id: int, pid: int, *,
                            from_pid: int) -> None:
    """The lock passes from the bot to the child it started, in one statement."""
    with write_transaction(conn):
        conn.execute(q.HAND_OVER_LOCK, (run_id, pid, from_pid))


def training_lock(conn: sqlite3.Connection) -> dict | None:
    row = conn.execute(q.SELECT_LOCK).fetchone()
    return dict(row) if row else None


def release_training_lock(conn: sqlite3.Connection, run_id: int | None = None) -> None:
    """Release the lock (only if `run_id` still holds it, when given)."""
    with write_transaction(conn):
        conn.execute(q.DELETE_LOCK, (run_id, run_id))


# --- state, counts, the admin log --------------------------------------------------------

def get_state(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute(q.GET_STATE, (key,)).fetchone()
    return row[0] if row else None


def set_state(conn: sqlite3.Connection, key: str, value: str) -> None:
    with write_transaction(conn):
        conn.execute(q.SET_STATE, (key, value))


def stats(conn: sqlite3.Connection, scope: int | None = None) -> dict[str, int]:
    """The counts of one scope's answers, votes, pairs, adapters and runs (None: all)."""
    return dict(conn.execute(q.STATS, (scope,)).fetchone())


def record_admin_action(conn: sqlite3.Connection, admin_id: int, action: str,
                        target: str | None = None, detail: dict[str, Any] | None = None, *,
                        source: str = "web", guild_id: int | None = None) -> None:
    """Who did what to which thing, in which guild: the admin log (migrations 0005, 0007)."""
    with write_transaction(conn):
        conn.execute(q.INSERT_ADMIN_ACTION, (admin_id, source, action, target,
                                             json.dumps(detail or {}, ensure_ascii=False),
                                             guild_id))


def admin_actions(conn: sqlite3.Connection, limit: int = 50,
                  scope: int | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(q.RECENT_ADMIN_ACTIONS, (scope, scope, limit))
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

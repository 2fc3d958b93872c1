"""The few storage writes the trainer needs that `storage.SyncStore` does not offer yet.

They run the SQL of `storage.queries` on `SyncStore.conn`, in IMMEDIATE
transactions like SyncStore's own, so the bot's async repository and this
process agree on every statement. (When storage/ gains these methods, these
helpers become one-line calls.)
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

from storage import AdapterVersion, StorageError, SyncStore, TrainingRun, UnknownVersionError
from storage import queries as q
from storage.errors import AdapterExistsError
from storage.records import Adapter, validate_adapter_name


def now_text() -> str:
    """The database's own time format (queries.NOW): UTC ISO-8601 with milliseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@contextlib.contextmanager
def transaction(store: SyncStore) -> Iterator[sqlite3.Connection]:
    store.conn.execute("BEGIN IMMEDIATE")
    try:
        yield store.conn
    except BaseException:
        store.conn.execute("ROLLBACK")
        raise
    store.conn.execute("COMMIT")


def ensure_adapter(store: SyncStore, name: str, base_model: str,
                   system_prompt: str | None = None) -> tuple[Adapter, bool]:
    """The adapter row, created when missing; (adapter, created)."""
    validate_adapter_name(name)
    row = store.conn.execute(q.SELECT_ADAPTER, (name,)).fetchone()
    if row is not None:
        return Adapter.from_row(row), False
    try:
        with transaction(store) as conn:
            conn.execute(q.INSERT_ADAPTER, (name, base_model, "", system_prompt, None, None))
    except sqlite3.IntegrityError:  # created by the bot a moment ago: use it
        if store.conn.execute(q.SELECT_ADAPTER, (name,)).fetchone() is None:
            raise AdapterExistsError(name) from None
        return store.require_adapter(name), False
    return store.require_adapter(name), True


def create_run(store: SyncStore, adapter: str, *, trigger: str = "cli",
               requested_by: int | None = None) -> TrainingRun:
    record = store.require_adapter(adapter)
    with transaction(store) as conn:
        run_id = conn.execute(q.INSERT_RUN, (record.id, trigger, requested_by)).lastrowid
    return get_run(store, run_id)


def get_run(store: SyncStore, run_id: int) -> TrainingRun:
    row = store.conn.execute(q.SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        raise StorageError(f"no training run {run_id}; list them with `python -m trainer runs`")
    return TrainingRun.from_row(row)


def list_runs(store: SyncStore, adapter: str | None = None, limit: int = 20) -> list[TrainingRun]:
    return [TrainingRun.from_row(r)
            for r in store.conn.execute(q.LIST_RUNS, (adapter, adapter, limit))]


def get_version(store: SyncStore, adapter: str, version: int) -> AdapterVersion:
    row = store.conn.execute(q.SELECT_VERSION, (adapter, version)).fetchone()
    if row is None:
        store.require_adapter(adapter)  # an unknown adapter says so, with the known ones
        known = [v.version for v in store.versions(adapter)]
        raise UnknownVersionError(f"adapter {adapter!r} has no version {version}; "
                                  f"versions: {known or 'none yet'}")
    return AdapterVersion.from_row(row)


def next_version_number(store: SyncStore, adapter: str) -> int:
    record = store.require_adapter(adapter)
    (number,) = store.conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)).fetchone()
    return int(number)


def set_serving(store: SyncStore, adapter: str, version: int,
                reason: str | None = None) -> AdapterVersion:
    """Promote (or roll back to) `version`; the one serving before is retired."""
    record = store.require_adapter(adapter)
    get_version(store, adapter, version)
    with transaction(store) as conn:
        conn.execute(q.RETIRE_SERVING, (record.id,))
        conn.execute(q.MAKE_SERVING, (reason, record.id, version))
    return get_version(store, adapter, version)


def set_version_reason(store: SyncStore, adapter: str, version: int, reason: str) -> None:
    record = store.require_adapter(adapter)
    with transaction(store) as conn:
        conn.execute(q.SET_VERSION_REASON, (reason, record.id, version))

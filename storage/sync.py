"""The synchronous path for the trainer process (no event loop there).

Only what a training run needs: read approved pairs and adapter versions,
record the run and the version it produced. Same SQL as the async repository.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import queries as q
from .connection import connect_sync
from .errors import AdapterExistsError, StorageError, UnknownAdapterError, UnknownVersionError
from .records import Adapter, AdapterVersion, Pair, TrainingRun, validate_adapter_name


def now_text() -> str:
    """The database's own time format (queries.NOW): UTC ISO-8601 with milliseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SyncStore:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000):
        self.path = Path(path)
        self.conn: sqlite3.Connection = connect_sync(self.path, busy_timeout_ms)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require_adapter(self, name: str) -> Adapter:
        row = self.conn.execute(q.SELECT_ADAPTER, (name,)).fetchone()
        if row is None:
            known = [r["name"] for r in self.conn.execute(q.LIST_ADAPTER_NAMES)]
            raise UnknownAdapterError(name, known)
        return Adapter.from_row(row)

    def ensure_adapter(self, name: str, base_model: str,
                       system_prompt: str | None = None) -> tuple[Adapter, bool]:
        """The adapter row, created when missing; (adapter, created)."""
        validate_adapter_name(name)
        row = self.conn.execute(q.SELECT_ADAPTER, (name,)).fetchone()
        if row is not None:
            return Adapter.from_row(row), False
        try:
            with self._transaction():
                self.conn.execute(q.INSERT_ADAPTER,
                                  (name, base_model, "", system_prompt, None, None))
        except sqlite3.IntegrityError:  # created by the bot a moment ago: use it
            if self.conn.execute(q.SELECT_ADAPTER, (name,)).fetchone() is None:
                raise AdapterExistsError(name) from None
            return self.require_adapter(name), False
        return self.require_adapter(name), True

    def approved_pairs(self, adapter: str | None = None) -> list[Pair]:
        return [Pair.from_row(r) for r in self.conn.execute(q.APPROVED_PAIRS, (adapter, adapter))]

    def serving_version(self, adapter: str) -> AdapterVersion | None:
        row = self.conn.execute(q.SELECT_SERVING_VERSION, (adapter,)).fetchone()
        return AdapterVersion.from_row(row) if row else None

    def versions(self, adapter: str) -> list[AdapterVersion]:
        rows = self.conn.execute(q.SELECT_VERSIONS, (adapter,))
        return [AdapterVersion.from_row(r) for r in rows]

    def get_version(self, adapter: str, version: int) -> AdapterVersion:
        row = self.conn.execute(q.SELECT_VERSION, (adapter, version)).fetchone()
        if row is None:
            self.require_adapter(adapter)  # an unknown adapter says so, with the known ones
            known = [v.version for v in self.versions(adapter)]
            raise UnknownVersionError(f"adapter {adapter!r} has no version {version}; "
                                      f"versions: {known or 'none yet'}")
        return AdapterVersion.from_row(row)

    def next_version_number(self, adapter: str) -> int:
        record = self.require_adapter(adapter)
        (number,) = self.conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)).fetchone()
        return int(number)

    def set_serving(self, adapter: str, version: int,
                    reason: str | None = None) -> AdapterVersion:
        """Promote (or roll back to) `version`; the one serving before is retired."""
        record = self.require_adapter(adapter)
        self.get_version(adapter, version)
        with self._transaction():
            self.conn.execute(q.RETIRE_SERVING, (record.id,))
            self.conn.execute(q.MAKE_SERVING, (reason, record.id, version))
        return self.get_version(adapter, version)

    def set_version_reason(self, adapter: str, version: int, reason: str) -> None:
        record = self.require_adapter(adapter)
        with self._transaction():
            self.conn.execute(q.SET_VERSION_REASON, (reason, record.id, version))

    def add_version(self, adapter: str, *, path: str, metrics: dict[str, Any] | None = None,
                    status: str = "candidate", scale: float = 1.0, reason: str | None = None,
                    run_id: int | None = None) -> AdapterVersion:
        record = self.require_adapter(adapter)
        with self._transaction():
            (number,) = self.conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)).fetchone()
            if status == "serving":
                self.conn.execute(q.RETIRE_SERVING, (record.id,))
            self.conn.execute(q.INSERT_VERSION, (record.id, number, path, status, scale,
                                                 json.dumps(metrics or {}), reason, run_id))
        return AdapterVersion.from_row(
            self.conn.execute(q.SELECT_VERSION, (adapter, number)).fetchone())

    def record_version_pairs(self, version_id: int, pairs: list[tuple[int, str]]) -> None:
        """(turn_id, split) of every stored pair a version was built from."""
        with self._transaction():
            self.conn.executemany(q.INSERT_VERSION_PAIR,
                                  [(version_id, turn_id, split) for turn_id, split in pairs])

    def create_run(self, adapter: str, *, trigger: str = "cli",
                   requested_by: int | None = None) -> TrainingRun:
        record = self.require_adapter(adapter)
        with self._transaction():
            run_id = self.conn.execute(q.INSERT_RUN, (record.id, trigger, requested_by)).lastrowid
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> TrainingRun:
        row = self.conn.execute(q.SELECT_RUN, (run_id,)).fetchone()
        if row is None:
            raise StorageError(f"no training run {run_id}; list them with "
                               f"`python -m trainer runs`")
        return TrainingRun.from_row(row)

    def list_runs(self, adapter: str | None = None, limit: int = 20) -> list[TrainingRun]:
        return [TrainingRun.from_row(r)
                for r in self.conn.execute(q.LIST_RUNS, (adapter, adapter, limit))]

    def update_run(self, run_id: int, **fields: Any) -> TrainingRun:
        if "metrics" in fields and not isinstance(fields["metrics"], str):
            fields["metrics"] = json.dumps(fields["metrics"])
        with self._transaction():
            self.conn.execute(q.update_run_sql(list(fields)), (*fields.values(), run_id))
        return TrainingRun.from_row(self.conn.execute(q.SELECT_RUN, (run_id,)).fetchone())

    def _transaction(self):
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

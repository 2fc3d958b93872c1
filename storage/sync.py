"""The synchronous path for the trainer process (no event loop there).

Only what a training run needs: read approved pairs and adapter versions,
record the run and the version it produced. Each method is the operation of
storage/ops that the bot's async `Database` runs too, on this store's own
connection.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .connection import connect_sync
from .ops import adapters, feedback, runs
from .records import Adapter, AdapterVersion, Pair, TrainingRun

RUNS_HINT = "; list them with `python -m trainer runs`"


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
        return adapters.require_adapter(self.conn, name)

    def import_pairs(self, pairs: list[Pair], adapter: str) -> int:
        """Pairs read already (trainer.datafiles.read_pairs) as approved pairs of `adapter`."""
        return feedback.import_pairs(self.conn, pairs, adapter)

    def ensure_adapter(self, name: str, base_model: str,
                       system_prompt: str | None = None) -> tuple[Adapter, bool]:
        """The adapter row, created when missing; (adapter, created)."""
        return adapters.ensure_adapter(self.conn, name, base_model, system_prompt)

    def approved_pairs(self, adapter: str | None = None,
                       scope: int | None = None) -> list[Pair]:
        """An adapter's (key) approved pairs, of its own guild only."""
        return feedback.approved_pairs(self.conn, adapter, scope)

    def serving_version(self, adapter: str) -> AdapterVersion | None:
        return adapters.serving_version(self.conn, adapter)

    def versions(self, adapter: str) -> list[AdapterVersion]:
        return adapters.versions(self.conn, adapter)

    def get_version(self, adapter: str, version: int) -> AdapterVersion:
        return adapters.get_version(self.conn, adapter, version)

    def next_version_number(self, adapter: str) -> int:
        return adapters.next_version_number(self.conn, adapter)

    def set_serving(self, adapter: str, version: int, reason: str | None = None,
                    scale: float | None = None) -> AdapterVersion:
        """Promote (or roll back to) `version`; the one serving before is retired."""
        return adapters.set_serving(self.conn, adapter, version, reason, scale)

    def set_version_reason(self, adapter: str, version: int, reason: str) -> None:
        adapters.set_version_reason(self.conn, adapter, version, reason)

    def add_version(self, adapter: str, *, path: str, metrics: dict[str, Any] | None = None,
                    status: str = "candidate", scale: float = 1.0, reason: str | None = None,
                    run_id: int | None = None) -> AdapterVersion:
        return adapters.add_version(self.conn, adapter, path=path, metrics=metrics,
                                    status=status, scale=scale, reason=reason, run_id=run_id)

    def record_version_pairs(self, version_id: int, pairs: list[tuple[int, str]]) -> None:
        """(turn_id, split) of every stored pair a version was built from."""
        runs.record_version_pairs(self.conn, version_id, pairs)

    def create_run(self, adapter: str, *, trigger: str = "cli",
                   requested_by: int | None = None) -> TrainingRun:
        return runs.create_run(self.conn, adapter, trigger=trigger, requested_by=requested_by)

    def release_training_lock(self, run_id: int) -> None:
        """The trainer on its way out: its run's lock goes with it."""
        runs.release_training_lock(self.conn, run_id)

    def get_run(self, run_id: int) -> TrainingRun:
        return runs.get_run(self.conn, run_id, hint=RUNS_HINT)

    def list_runs(self, adapter: str | None = None, limit: int = 20) -> list[TrainingRun]:
        return runs.list_runs(self.conn, adapter, limit)

    def list_adapters(self) -> list[Adapter]:
        return adapters.list_adapters(self.conn)

    def update_run(self, run_id: int, **fields: Any) -> TrainingRun:
        return runs.update_run(self.conn, run_id, **fields)

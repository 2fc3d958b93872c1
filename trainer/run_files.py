"""A training run's directory: where runs live, which one resumes, and what guards them.

Each run of an adapter has <data_dir>/runs/<adapter>/run-<id>/ with its run.json
(run id, adapter, data hash and settings: what --resume checks and reuses), its
log, its events and, while it can be resumed, its checkpoint. A lock file per
adapter keeps two runs of one adapter from racing for a version number.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from settings import Config, layout
from settings.layout import CHECKPOINT_FILE, RUN_FILE
from storage.jsonl import write_json

from .errors import TrainingError


def runs_root(config: Config, adapter: str) -> Path:
    return layout.runs_root(config.data_dir, adapter)


def latest_resumable(config: Config, adapter: str) -> Path:
    """The newest run directory of `adapter` that holds a checkpoint."""
    root = runs_root(config, adapter)
    candidates = sorted((p for p in root.glob("run-*") if (p / CHECKPOINT_FILE).is_file()),
                        key=lambda p: int(p.name.split("-")[1]) if p.name[4:].isdigit() else -1)
    if not candidates:
        raise TrainingError(f"no interrupted run of {adapter} to resume under {root}; run "
                            f"without --resume, or pass --output with the run directory")
    return candidates[-1]


def read_run_file(run_dir: Path, adapter: str) -> dict[str, Any]:
    """The run.json of a run to resume, which must be one of `adapter`'s."""
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise TrainingError(f"{run_dir} is not a run directory ({RUN_FILE} is missing)")
    saved = json.loads(run_file.read_text(encoding="utf-8"))
    if saved.get("adapter") != adapter:
        raise TrainingError(f"{run_dir} is a run of {saved.get('adapter')!r}, not of "
                            f"{adapter!r}")
    return saved


def write_run_file(run_dir: Path, **fields: Any) -> None:
    """What `--resume` reads back, written whole: a crash mid-write must not leave a run
    that cannot be resumed."""
    write_json(run_dir / RUN_FILE, fields)


@contextlib.contextmanager
def adapter_lock(config: Config, adapter: str) -> Iterator[None]:
    root = runs_root(config, adapter)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TrainingError(f"another training run of {adapter} is in progress "
                                f"(pid {holder}); wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """The run's log beside its checkpoints (appended to on --resume)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()

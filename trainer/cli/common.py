"""What the commands share: exit codes, the database, and the adapter-reference help text."""

from __future__ import annotations

from settings import Config
from storage import SyncStore

EXIT_ERROR = 1
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

ADAPTER_REF_HELP = ("NAME alone is its serving version, else its newest; NAME@VERSION (or "
                    "NAME@vVERSION) picks one")


def open_store(config: Config) -> SyncStore:
    return SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms)

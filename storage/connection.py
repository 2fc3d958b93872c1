"""Opening the database file: pragmas, integrity of the file, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import StorageError
from .migrations import apply_migrations

# WAL: readers never block the writer. synchronous=NORMAL in WAL mode keeps every
# committed transaction through a crash of the process (kill -9); only a power
# loss can lose the last commits. secure_delete: deleted rows (/forget) are
# overwritten with zeros, not left in free space (some SQLite builds default to off).
PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA foreign_keys = ON",
           "PRAGMA synchronous = NORMAL", "PRAGMA secure_delete = ON")


def connect_sync(path: str | Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A configured autocommit connection on an up-to-date database."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        configure(conn, busy_timeout_ms, label=str(path))
        apply_migrations(conn, label=str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def configure(conn: sqlite3.Connection, busy_timeout_ms: int, label: str) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except sqlite3.DatabaseError as exc:
        raise describe_error(exc, label) from exc


def describe_error(exc: sqlite3.Error, label: str) -> StorageError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return StorageError(f"database {label} is corrupt or not a SQLite file ({text}); "
                            f"restore it from a backup, or move it aside to start empty")
    if "locked" in text or "busy" in text:
        return StorageError(f"database {label} is locked by another process ({text}); "
                            f"stop the other process or raise storage.busy_timeout_ms")
    return StorageError(f"database {label}: {text}")

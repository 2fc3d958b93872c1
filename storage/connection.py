"""Opening the database file: pragmas, integrity of the file, migrations; transactions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
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
        prepare(conn, busy_timeout_ms, label=str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(conn: sqlite3.Connection, busy_timeout_ms: int, label: str) -> None:
    """What every connection does before its first use: pragmas, then migrations."""
    configure(conn, busy_timeout_ms, label)
    apply_migrations(conn, label)


def configure(conn: sqlite3.Connection, busy_timeout_ms: int, label: str) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except sqlite3.DatabaseError as exc:
        raise describe_error(exc, label) from exc


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One IMMEDIATE transaction (it takes the write lock at once, so it never fails half
    way for a lock): committed when the block ends, rolled back when it raises."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:  # another process held the lock past busy_timeout
        raise describe_error(exc, database_file(conn)) from exc
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:  # the block failed, or COMMIT itself did
        if conn.in_transaction:  # SQLite rolls some failures back by itself
            conn.execute("ROLLBACK")
        raise


def database_file(conn: sqlite3.Connection) -> str:
    """The file of the connection's main database, for messages."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return row[2] or ":memory:"
    return "(unknown)"


def describe_error(exc: sqlite3.Error, label: str) -> StorageError:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return StorageError(f"database {label} is corrupt or not a SQLite file ({text}); "
                            f"restore it from a backup, or move it aside to start empty")
    if "locked" in text or "busy" in text:
        return StorageError(f"database {label} is locked by another process ({text}); "
                            f"stop the other process or raise storage.busy_timeout_ms")
    return StorageError(f"database {label}: {text}")

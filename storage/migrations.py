"""Numbered SQL migrations, applied in order and recorded in PRAGMA user_version.

Files are `migrations/NNNN_name.sql`. Each runs in one IMMEDIATE transaction
together with the version bump, after re-reading the version under the write
lock, so two processes opening a new database at once apply each file once.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from .errors import MigrationError, SchemaTooNewError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.number)
    for expected, migration in enumerate(found, start=1):
        if migration.number != expected:  # a packaging bug, caught by the tests
            raise MigrationError(f"migration numbers must run 1, 2, 3…; "
                                 f"found {migration.name} where {expected:04d} was expected")
    return found


def latest_version() -> int:
    migrations = load_migrations()
    return migrations[-1].number if migrations else 0


def split_statements(sql: str) -> list[str]:
    """Split a script into complete statements (triggers' inner `;` included)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()
    ):
        raise MigrationError(f"incomplete SQL statement at the end of a migration: "
                             f"{buffer.strip()[:80]!r}")
    return statements


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def apply_migrations(conn: sqlite3.Connection, label: str) -> int:
    """Bring `conn` (autocommit mode) to the latest schema; returns that version."""
    migrations = load_migrations()
    known = migrations[-1].number if migrations else 0
    current = schema_version(conn)
    if current > known:
        raise SchemaTooNewError(
            f"database {label} has schema version {current}, but this program knows only up "
            f"to {known}: it was written by a newer release. Upgrade this program, or restore "
            f"the backup taken before the upgrade.")
    for migration in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) >= migration.number:  # another process got there first
                conn.execute("COMMIT")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            note = take_note(conn)
            conn.execute(f"PRAGMA user_version = {migration.number:d}")
            conn.execute("COMMIT")
            if note:
                log.info("database %s, migration %s: %s", label, migration.name, note)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise MigrationError(f"migration {migration.name} failed on {label}: {exc}; "
                                 f"the database is unchanged at version "
                                 f"{migration.number - 1}") from exc
    return known


def take_note(conn: sqlite3.Connection) -> str | None:
    """What a migration left for the log (state key 'migration_note', a JSON object with
    a 'message'), removed once read."""
    try:
        row = conn.execute("SELECT value FROM state WHERE key = 'migration_note'").fetchone()
    except sqlite3.OperationalError:  # before 0002 there is no state table
        return None
    if row is None:
        return None
    conn.execute("DELETE FROM state WHERE key = 'migration_note'")
    return json.loads(row[0]).get("message")

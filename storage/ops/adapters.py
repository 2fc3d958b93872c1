"""Adapters, their versions, and which channel or guild each one serves."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import queries as q
from ..connection import write_transaction
from ..errors import AdapterExistsError, UnknownAdapterError, UnknownVersionError
from ..records import Adapter, AdapterVersion, ResolvedAdapter, validate_adapter_name


def get_adapter(conn: sqlite3.Connection, name: str) -> Adapter | None:
    row = conn.execute(q.SELECT_ADAPTER, (name,)).fetchone()
    return Adapter.from_row(row) if row else None


def require_adapter(conn: sqlite3.Connection, name: str) -> Adapter:
    """The adapter; UnknownAdapterError (listing the known ones) when there is none."""
    adapter = get_adapter(conn, name)
    if adapter is None:
        raise UnknownAdapterError(name, adapter_names(conn))
    return adapter


def list_adapters(conn: sqlite3.Connection) -> list[Adapter]:
    return [Adapter.from_row(r) for r in conn.execute(q.LIST_ADAPTERS)]


def adapter_names(conn: sqlite3.Connection) -> list[str]:
    return [r["name"] for r in conn.execute(q.LIST_ADAPTER_NAMES)]


def create_adapter(conn: sqlite3.Connection, name: str, base_model: str, *,
                   based_on: str | None = None, description: str = "",
                   system_prompt: str | None = None, created_by: int | None = None) -> Adapter:
    validate_adapter_name(name)
    if based_on is not None:
        require_adapter(conn, based_on)
    try:
        with write_transaction(conn):
            conn.execute(q.INSERT_ADAPTER, (name, base_model, description, system_prompt,
                                            based_on, created_by))
    except sqlite3.IntegrityError:
        raise AdapterExistsError(name) from None
    return require_adapter(conn, name)


def ensure_adapter(conn: sqlite3.Connection, name: str, base_model: str,
                   system_prompt: str | None = None) -> tuple[Adapter, bool]:
    """The adapter row, created when missing; (adapter, created)."""
    validate_adapter_name(name)
    existing = get_adapter(conn, name)
    if existing is not None:
        return existing, False
    try:
        with write_transaction(conn):
            conn.execute(q.INSERT_ADAPTER, (name, base_model, "", system_prompt, None, None))
    except sqlite3.IntegrityError:  # created by the bot a moment ago: use it
        if get_adapter(conn, name) is None:
            raise AdapterExistsError(name) from None
        return require_adapter(conn, name), False
    return require_adapter(conn, name), True


def set_system_prompt(conn: sqlite3.Connection, adapter: str, prompt: str | None) -> None:
    """The adapter's own system prompt (None: the configured default)."""
    require_adapter(conn, adapter)
    with write_transaction(conn):
        conn.execute(q.SET_SYSTEM_PROMPT, (prompt or None, adapter))


# --- versions -------------------------------------------------------------------------

def add_version(conn: sqlite3.Connection, adapter: str, *, path: str,
                metrics: dict[str, Any] | None = None, status: str = "candidate",
                scale: float = 1.0, reason: str | None = None,
                run_id: int | None = None) -> AdapterVersion:
    """Record the next version number of `adapter` (a serving one retires the old)."""
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        (number,) = conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)).fetchone()
        if status == "serving":
            conn.execute(q.RETIRE_SERVING, (record.id,))
        conn.execute(q.INSERT_VERSION, (record.id, number, path, status, scale,
                                        json.dumps(metrics or {}), reason, run_id))
    return get_version(conn, adapter, number)


def get_version(conn: sqlite3.Connection, adapter: str, version: int) -> AdapterVersion:
    row = conn.execute(q.SELECT_VERSION, (adapter, version)).fetchone()
    if row is None:
        require_adapter(conn, adapter)  # an unknown adapter says so, with the known ones
        known = [v.version for v in versions(conn, adapter)]
        raise UnknownVersionError(f"adapter {adapter!r} has no version {version}; "
                                  f"versions: {known or 'none yet'}")
    return AdapterVersion.from_row(row)


def versions(conn: sqlite3.Connection, adapter: str) -> list[AdapterVersion]:
    return [AdapterVersion.from_row(r) for r in conn.execute(q.SELECT_VERSIONS, (adapter,))]


def serving_version(conn: sqlite3.Connection, adapter: str) -> AdapterVersion | None:
    row = conn.execute(q.SELECT_SERVING_VERSION, (adapter,)).fetchone()
    return AdapterVersion.from_row(row) if row else None


def next_version_number(conn: sqlite3.Connection, adapter: str) -> int:
    record = require_adapter(conn, adapter)
    (number,) = conn.execute(q.NEXT_VERSION_NUMBER, (record.id,)).fetchone()
    return int(number)


def set_serving(conn: sqlite3.Connection, adapter: str, version: int,
                reason: str | None = None) -> AdapterVersion:
    """Promote (or roll back to) `version`; the one serving before is retired."""
    record = require_adapter(conn, adapter)
    get_version(conn, adapter, version)  # clear error for an unknown version
    with write_transaction(conn):
        conn.execute(q.RETIRE_SERVING, (record.id,))
        conn.execute(q.MAKE_SERVING, (reason, record.id, version))
    return get_version(conn, adapter, version)


def set_version_reason(conn: sqlite3.Connection, adapter: str, version: int,
                       reason: str) -> None:
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        conn.execute(q.SET_VERSION_REASON, (reason, record.id, version))


# --- channel and guild bindings ---------------------------------------------------------

def bind_channel(conn: sqlite3.Connection, channel_id: int, adapter: str, *,
                 guild_id: int | None = None, bound_by: int | None = None) -> None:
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        conn.execute(q.BIND_CHANNEL, (channel_id, guild_id, record.id, bound_by))


def unbind_channel(conn: sqlite3.Connection, channel_id: int) -> None:
    with write_transaction(conn):
        conn.execute(q.UNBIND_CHANNEL, (channel_id,))


def set_guild_default(conn: sqlite3.Connection, guild_id: int, adapter: str, *,
                      bound_by: int | None = None) -> None:
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        conn.execute(q.BIND_GUILD, (guild_id, record.id, bound_by))


def channels_of(conn: sqlite3.Connection, adapter: str) -> list[int]:
    return [r["channel_id"] for r in conn.execute(q.CHANNELS_OF_ADAPTER, (adapter,))]


def resolve_adapter_for(conn: sqlite3.Connection, channel_id: int,
                        guild_id: int | None = None) -> ResolvedAdapter | None:
    """channel → bound adapter, else the guild default, else None (the base model)."""
    row = conn.execute(q.CHANNEL_ADAPTER, (channel_id,)).fetchone()
    via = "channel"
    if row is None and guild_id is not None:
        row, via = conn.execute(q.GUILD_ADAPTER, (guild_id,)).fetchone(), "guild"
    if row is None:
        return None
    return ResolvedAdapter(row["name"], serving_version(conn, row["name"]), via)

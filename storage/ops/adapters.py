"""Adapters, their versions, and which channel or guild each one serves."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .. import queries as q
from ..connection import write_transaction
from ..errors import AdapterExistsError, StorageError, UnknownAdapterError, UnknownVersionError
from ..records import (
    DIRECT_SCOPE,
    Adapter,
    AdapterVersion,
    ResolvedAdapter,
    adapter_key,
    scope_of,
    validate_adapter_key,
    validate_adapter_name,
)

# An adapter has a key (`name`: unique on the host, what versions, files, the engine and
# the trainer use) and a label (what people see and type, unique in its guild's scope).


def get_adapter(conn: sqlite3.Connection, name: str) -> Adapter | None:
    """The adapter whose key is `name`."""
    row = conn.execute(q.SELECT_ADAPTER, (name,)).fetchone()
    return Adapter.from_row(row) if row else None


def require_adapter(conn: sqlite3.Connection, name: str) -> Adapter:
    """The adapter by key; UnknownAdapterError (listing the known ones) when there is none."""
    adapter = get_adapter(conn, name)
    if adapter is None:
        raise UnknownAdapterError(name, adapter_names(conn))
    return adapter


def adapter_in(conn: sqlite3.Connection, label: str, scope: int) -> Adapter:
    """The adapter people of `scope` call `label`; UnknownAdapterError listing only that
    scope's adapters (another guild's stay unseen) when there is none."""
    row = conn.execute(q.SELECT_ADAPTER_IN, (scope, label)).fetchone()
    if row is None:
        raise UnknownAdapterError(label, [a.label for a in list_adapters(conn, scope)])
    return Adapter.from_row(row)


def list_adapters(conn: sqlite3.Connection, scope: int | None = None) -> list[Adapter]:
    """The adapters of one scope (None: of every guild), by label."""
    return [Adapter.from_row(r) for r in conn.execute(q.LIST_ADAPTERS, (scope, scope))]


def adapter_names(conn: sqlite3.Connection) -> list[str]:
    """Every adapter's key."""
    return [r["name"] for r in conn.execute(q.LIST_ADAPTER_NAMES)]


def create_adapter(conn: sqlite3.Connection, name: str, base_model: str, *,
                   scope: int = DIRECT_SCOPE, based_on: str | None = None,
                   description: str = "", system_prompt: str | None = None,
                   created_by: int | None = None) -> Adapter:
    """A new adapter labelled `name` in `scope` (`based_on`: a key of the same scope). Its
    key is the label, or `adapter_key` when another scope has that key already."""
    validate_adapter_name(name)
    if based_on is not None and require_adapter(conn, based_on).guild_id != scope:
        raise StorageError(f"adapter {based_on!r} belongs to another server")
    try:
        with write_transaction(conn):
            key = name if get_adapter(conn, name) is None else adapter_key(name, scope)
            conn.execute(q.INSERT_ADAPTER, (key, name, scope, base_model, description,
                                            system_prompt, based_on, created_by))
    except sqlite3.IntegrityError:
        raise AdapterExistsError(name) from None
    return adapter_in(conn, name, scope)


def ensure_adapter(conn: sqlite3.Connection, name: str, base_model: str,
                   system_prompt: str | None = None) -> tuple[Adapter, bool]:
    """The adapter with key `name`, created in the direct scope when missing (the
    trainer's command line); (adapter, created)."""
    validate_adapter_key(name)
    existing = get_adapter(conn, name)
    if existing is not None:
        return existing, False
    try:
        with write_transaction(conn):
            conn.execute(q.INSERT_ADAPTER, (name, name, DIRECT_SCOPE, base_model, "",
                                            system_prompt, None, None))
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
                reason: str | None = None, scale: float | None = None) -> AdapterVersion:
    """Promote (or roll back to) `version`; the one serving before is retired. `scale`:
    the adapter scale it serves at from now on (None: the one stored with it)."""
    record = require_adapter(conn, adapter)
    get_version(conn, adapter, version)  # clear error for an unknown version
    with write_transaction(conn):
        conn.execute(q.RETIRE_SERVING, (record.id,))
        conn.execute(q.MAKE_SERVING, (reason, scale, record.id, version))
    return get_version(conn, adapter, version)


def set_version_reason(conn: sqlite3.Connection, adapter: str, version: int,
                       reason: str) -> None:
    record = require_adapter(conn, adapter)
    with write_transaction(conn):
        conn.execute(q.SET_VERSION_REASON, (reason, record.id, version))


# --- channel and guild bindings ---------------------------------------------------------

def _of_scope(record: Adapter, guild_id: int | None) -> None:
    if record.guild_id != scope_of(guild_id):
        raise StorageError(f"adapter {record.label!r} belongs to another server; a channel "
                           f"can only use an adapter of its own server")


def bind_channel(conn: sqlite3.Connection, channel_id: int, adapter: str, *,
                 guild_id: int | None = None, bound_by: int | None = None) -> None:
    record = require_adapter(conn, adapter)
    _of_scope(record, guild_id)
    with write_transaction(conn):
        conn.execute(q.BIND_CHANNEL, (channel_id, guild_id, record.id, bound_by))


def unbind_channel(conn: sqlite3.Connection, channel_id: int) -> None:
    with write_transaction(conn):
        conn.execute(q.UNBIND_CHANNEL, (channel_id,))


def set_guild_default(conn: sqlite3.Connection, guild_id: int, adapter: str, *,
                      bound_by: int | None = None) -> None:
    record = require_adapter(conn, adapter)
    _of_scope(record, guild_id)
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
    return ResolvedAdapter(row["name"], serving_version(conn, row["name"]), via, row["label"])

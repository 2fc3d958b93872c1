"""Typed rows returned by the storage API (plain data, no behaviour)."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidAdapterNameError

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# the key of an adapter on the host (its files, the engine, the trainer): its name, or its
# name and its guild when another guild held that name first (see `adapter_key`)
ADAPTER_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BASE_ADAPTER = "__base__"
DIRECT_SCOPE = 0  # the scope of DMs, the console and the CLI: no guild, the bot's owners'


def scope_of(guild_id: int | None) -> int:
    """The scope a guild id (None: a DM, the console) belongs to."""
    return guild_id or DIRECT_SCOPE


def adapter_key(label: str, scope: int) -> str:
    """The host-wide key for a new adapter whose label is taken as a key already."""
    return f"{label}-g{scope}" if scope != DIRECT_SCOPE else f"{label}-dm"


def validate_adapter_name(name: str) -> str:
    """Adapter names become directory names: lower-case letters, digits, '-' and '_'."""
    if not isinstance(name, str) or not ADAPTER_NAME.match(name):
        shown = name if isinstance(name, str) and len(name) <= 60 else f"{str(name)[:57]}..."
        raise InvalidAdapterNameError(
            f"invalid adapter name {shown!r}: use 1-40 characters, lower-case letters, digits, "
            f"'-' or '_', starting with a letter or digit (for example 'support-faq')")
    return name


def validate_adapter_key(key: str) -> str:
    """An adapter's key as the trainer and the files take it (a name, or `name-gGUILD`)."""
    if isinstance(key, str) and ADAPTER_KEY.match(key):
        return key
    return validate_adapter_name(key)  # the error people know


def _json(text: str | None, default: Any) -> Any:
    return json.loads(text) if text else default


@dataclass(frozen=True)
class Adapter:
    id: int
    name: str
    base_model: str
    description: str
    system_prompt: str | None
    based_on: str | None
    created_at: str
    guild_id: int = DIRECT_SCOPE  # its scope: a guild id, or DIRECT_SCOPE
    label: str = ""  # the name people see and type (unique per guild); `name` is the key

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Adapter:
        return cls(row["id"], row["name"], row["base_model"], row["description"],
                   row["system_prompt"], row["based_on"], row["created_at"],
                   row["guild_id"], row["label"] or row["name"])


@dataclass(frozen=True)
class AdapterVersion:
    id: int
    adapter: str
    version: int
    path: str
    status: str
    scale: float
    metrics: dict[str, Any]
    reason: str | None
    run_id: int | None
    created_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AdapterVersion:
        return cls(row["id"], row["adapter"], row["version"], row["path"], row["status"],
                   row["scale"], _json(row["metrics"], {}), row["reason"], row["run_id"],
                   row["created_at"])


def previous_version(versions: list[AdapterVersion], serving: AdapterVersion | None) -> int | None:
    """The version a rollback serves again: the newest one before the serving version (any
    version when none serves); None when there is none."""
    older = [v.version for v in versions if serving is None or v.version < serving.version]
    return max(older) if older else None


@dataclass(frozen=True)
class ResolvedAdapter:
    """What serves a channel: an adapter and its serving version (None = none yet)."""

    name: str  # the key
    version: AdapterVersion | None
    via: str  # 'channel' or 'guild'
    label: str = ""  # the name people see


@dataclass(frozen=True)
class Turn:
    id: int
    source: str
    guild_id: int | None
    channel_id: int
    author_id: int
    question_message_id: int | None
    answer_message_id: int | None
    question: str
    context: list[dict[str, str]]
    answer: str
    adapter_name: str | None
    adapter_version: int | None
    latency_ms: float | None
    created_at: str
    recalled_from: int | None = None  # the approved pair it was answered from (memory)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Turn:
        return cls(row["id"], row["source"], row["guild_id"], row["channel_id"],
                   row["author_id"], row["question_message_id"], row["answer_message_id"],
                   row["question"], _json(row["context"], []), row["answer"],
                   row["adapter_name"], row["adapter_version"], row["latency_ms"],
                   row["created_at"], row["recalled_from"])


@dataclass(frozen=True)
class VoteResult:
    score: int
    became_candidate: bool
    reopened: int | None = None  # the approved pair a 👎'd memory answer sent back to review


@dataclass(frozen=True)
class ReviewItem:
    turn: Turn
    adapter_name: str | None
    status: str
    score: int
    edited_answer: str | None
    reviewer_id: int | None
    reviewed_at: str | None
    also_asked: list[str] = field(default_factory=list)  # the reviewer's other ways to ask
    adapter_label: str | None = None  # the adapter's name as people see it

    @property
    def scope(self) -> int:
        return scope_of(self.turn.guild_id)


@dataclass(frozen=True)
class Pair:
    """An approved question/answer pair, as the trainer and exports see it."""

    question: str
    answer: str
    adapter: str | None
    turn_id: int | None = None
    score: int = 0
    channel_id: int | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    created_at: str | None = None
    also_asked: list[str] = field(default_factory=list)  # other ways to ask, same answer
    origin: str | None = None  # where an imported pair came from ("faq.csv:12")

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Pair:
        return cls(row["question"], row["answer"], row["adapter_name"], row["turn_id"],
                   row["score"], row["channel_id"], _json(row["context"], []),
                   row["created_at"], _json(row["also_asked"], []))


@dataclass(frozen=True)
class TrainingRun:
    id: int
    adapter: str
    status: str
    trigger: str
    requested_by: int | None
    pid: int | None
    version: int | None
    metrics: dict[str, Any]
    error: str | None
    log_path: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    adapter_label: str = ""  # the adapter's name as people see it
    adapter_guild: int = DIRECT_SCOPE  # its scope
    channel_id: int | None = None  # where it was asked for (None: schedule, CLI, console)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TrainingRun:
        return cls(row["id"], row["adapter"], row["status"], row["trigger"],
                   row["requested_by"], row["pid"], row["version"], _json(row["metrics"], {}),
                   row["error"], row["log_path"], row["created_at"], row["started_at"],
                   row["finished_at"], row["adapter_label"] or row["adapter"],
                   row["adapter_guild"], row["channel_id"])

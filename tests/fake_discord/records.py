"""What the fake records of the bot, for tests to assert on: HTTP calls (with their files),
answers to interactions, gateway frames the client sent, events dispatched to it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .protocol import Json


@dataclass
class RecordedFile:
    field: str
    filename: str
    content_type: str | None
    data: bytes = field(repr=False)


@dataclass
class RecordedCall:
    """One HTTP request the bot made; `status` is 0 until the fake has answered it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]
    headers: dict[str, str] = field(repr=False)
    status: int = 0
    injected: bool = False
    at: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.status != 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class ResponseRecord:
    """Something the bot did to answer an interaction, in the order it happened.

    kind: "callback" (then `type` is the callback type), "edit_original", "delete_original",
    "followup", "edit_followup" or "delete_followup".
    """

    kind: str
    type: int | None
    data: Json
    files: list[RecordedFile]
    message_id: int | None
    ephemeral: bool
    at: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str | None:
        return self.data.get("content")


@dataclass
class GatewayFrame:
    """A payload the client sent over the gateway."""

    connection: int
    op: int
    d: Any


@dataclass
class DispatchRecord:
    session_id: str
    seq: int
    event: str
    data: Json

"""What every operation of the command core shares: who asks, what it answers, the refusals.

An operation is written once — its checks, its storage calls and the text of its answer —
and every face calls it: the Discord cogs, the console, the web page. A face only turns a
`Caller` out of its own input and renders the `Reply` its own way (an embed or plain lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from storage import scope_of

ADMIN_HELP = ("members with the Manage Server permission or an admin role from the bot's "
              "config (in direct messages: the bot's owners)")


class Refused(Exception):
    """An expected refusal: the message tells the user why and what to do instead."""


class Missing(Refused):
    """What the operation is about does not exist (any more)."""


class Conflict(Refused):
    """The thing is not in a state the operation applies to (decided already, serving)."""


class NotAdmin(Refused):
    def __init__(self, command: str):
        super().__init__(f"Only {ADMIN_HELP} can use `/{command}`.")


@dataclass(frozen=True)
class Caller:
    """Who runs an operation, and where: the face fills it in from its own input.

    Everything an operation reads or changes lies in the caller's scope — the guild the
    command comes from, or the direct scope for DMs and the console — and `is_admin` is
    the caller's right there (an owner is admin everywhere)."""

    user_id: int
    channel_id: int | None
    guild_id: int | None = None
    is_admin: bool = False
    name: str = ""  # shown in reasons that are stored ("rolled back by NAME (ID)")
    is_owner: bool = False  # the application's owner or in `discord.owner_ids`

    @property
    def scope(self) -> int:
        return scope_of(self.guild_id)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.user_id})" if self.name else str(self.user_id)


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes


@dataclass
class Reply:
    """An operation's answer as data. `text` uses Discord's light markdown (**bold**,
    `code`, <#channel>); `plain()` is how the console prints it."""

    text: str = ""
    title: str | None = None
    fields: list[tuple[str, str]] = field(default_factory=list)
    footer: str | None = None
    public: bool = False  # Discord: seen by the channel, not only by the caller
    attachment: Attachment | None = None
    values: dict[str, Any] = field(default_factory=dict)  # for faces that need numbers (JSON)

    def lines(self) -> list[str]:
        """The reply as plain text lines (console, logs, comparisons in tests)."""
        out = [plain(self.title)] if self.title else []
        if self.text:
            out += plain(self.text).splitlines()
        for name, value in self.fields:
            first, *rest = plain(value).splitlines() or [""]
            out += [f"  {plain(name)}: {first}", *(f"    {line}" for line in rest)]
        if self.footer:
            out.append(plain(self.footer))
        return out


_CHANNEL = re.compile(r"<#(\d+)>")


def plain(text: str) -> str:
    """Discord markdown as plain text: no bold or code marks, channels as #ID."""
    return _CHANNEL.sub(r"#\1", text.replace("**", "").replace("`", ""))


def require_admin(caller: Caller, command: str) -> None:
    """The one rights check: an admin of the caller's scope (whose adapters and pairs are
    the only ones an operation can reach), or an owner."""
    if not (caller.is_admin or caller.is_owner):
        raise NotAdmin(command)


def metrics_text(metrics: dict) -> str:
    shown = []
    for key, value in metrics.items():
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str)):
            shown.append(f"{key} {value}")
    return ", ".join(shown[:6]) or "no metrics"

"""How a setting is checked: types, ranges, choices, cron and time-zone values, and
where in the TOML text a key stands (tomllib reports no positions)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
import zoneinfo
from typing import Any


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def validate(value: Any, f: dataclasses.Field, tp: Any) -> tuple[Any, str | None]:
    meta = f.metadata
    value, problem = coerce(value, tp)
    if problem:
        return None, problem
    low, high = meta.get("min"), meta.get("max")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and ((low is not None and value < low) or (high is not None and value > high)):
        return None, f"out of range: allowed {range_text(low, high)}"
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        return None, f"not one of {allowed}"
    check = meta.get("check")
    if check:
        problem = _CHECKS[check](value)
        if problem:
            return None, problem
    return value, None


def coerce(value: Any, tp: Any) -> tuple[Any, str | None]:
    origin = typing.get_origin(tp)
    if tp is bool:
        return (value, None) if isinstance(value, bool) else (None, "expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return None, "expected an integer"
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        return None, "expected a number"
    if tp is str:
        return (value, None) if isinstance(value, str) else (None, "expected a string")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            return None, f"expected a list of {type_name(item_tp)}s"
        items = []
        for i, item in enumerate(value):
            checked, problem = coerce(item, item_tp)
            if problem:
                return None, f"item {i}: {problem}"
            items.append(checked)
        return items, None
    if origin is dict:
        _, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            return None, "expected a table of key = value"
        out = {}
        for k, v in value.items():
            checked, problem = coerce(v, value_tp)
            if problem:
                return None, f"key {k!r}: {problem}"
            out[str(k)] = checked
        return out, None
    raise TypeError(f"unsupported setting type {tp!r}")  # a bug in this module, not user input


def type_name(tp: Any) -> str:
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _check_crontab(value: str) -> str | None:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        return f"not a cron expression (minute hour day month weekday): {exc}"
    return None


def _check_timezone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "unknown time zone; use an IANA name such as 'UTC' or 'Europe/Paris'"
    return None


def _check_channel_keys(value: dict[str, str]) -> str | None:
    for channel in value:
        if not channel.isdigit():
            return f"key {channel!r} is not a channel id (digits only)"
    return None


def _check_channel_modes(value: dict[str, str]) -> str | None:
    problem = _check_channel_keys(value)
    if problem:
        return problem
    for channel, mode in value.items():
        if mode not in ("mention", "all"):
            return f"channel {channel}: mode {mode!r} is not 'mention' or 'all'"
    return None


_CHECKS = {"crontab": _check_crontab, "timezone": _check_timezone,
           "channel_modes": _check_channel_modes, "channel_keys": _check_channel_keys}


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known: {', '.join(sorted(known))}"


def parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


class KeyLocator:
    """Finds the line of a key in TOML text, for error messages (tomllib gives none)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")

    def __init__(self, text: str, source: str):
        self.source = source
        self.lines = text.splitlines()

    def section(self, section: str) -> str:
        for number, line in enumerate(self.lines, 1):
            match = self._HEADER.match(line)
            if match and match.group(1).split(".")[0].strip('"') == section:
                return f"{self.source}:{number}"
        return self.source

    def key(self, section: str | None, key: str) -> str:
        current: str | None = None
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number, line in enumerate(self.lines, 1):
            match = self._HEADER.match(line)
            if match:
                if match.group(1).replace('"', "") == f"{section}.{key}":
                    return f"{self.source}:{number}"  # a [section.key] sub-table
                current = match.group(1).split(".")[0].strip('"')
                continue
            if current == section and pattern.match(line):
                return f"{self.source}:{number}"
        return self.source

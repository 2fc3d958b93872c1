"""Progress events of a run: JSON lines on stdout (`--events`, read by the bot), a file
in the run directory, and an optional in-process callback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Events:
    """Progress for the bot: JSON lines on stdout (--events), and an optional callback."""

    def __init__(self, to_stdout: bool = False, callback: Callable[[dict], None] | None = None,
                 path: Path | None = None):
        self.to_stdout = to_stdout
        self.callback = callback
        self.path = path

    def emit(self, event: str, **data: Any) -> None:
        record = {"event": event, **{k: _plain(v) for k, v in data.items()}}
        line = json.dumps(record, default=_json_default, allow_nan=False)
        if self.to_stdout:
            print(line, flush=True)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
        if self.callback is not None:
            self.callback(record)


def _plain(value: Any) -> Any:
    """Strict JSON for the reader: NaN and infinities travel as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

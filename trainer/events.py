"""Progress events of a run: a JSON-lines file in the run directory (events.jsonl, which
the bot follows with EventTail, and the web page too), JSON lines on stdout
(`--events`), an optional in-process callback, and TensorBoard scalars
(`--tensorboard DIR`) written from the same events, so every consumer sees the
same numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TrainingError

TENSORBOARD_INSTALL = "pip install tensorboard (or pip install -e '.[tensorboard]')"


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


class EventTail:
    """Reads the complete lines added to an events file since the last read."""

    def __init__(self, path: Path, skip_lines: int = 0):
        self.path = path
        self.offset = 0  # bytes consumed
        self.line = 0  # lines consumed
        self.skip_lines = skip_lines

    def read(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self.offset += end
        events = []
        for raw in data[:end].splitlines():
            self.line += 1
            if self.line <= self.skip_lines:
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append((self.line, event))
        return events


def read_events(path: Path, skip_lines: int = 0) -> tuple[list[tuple[int, dict]], int]:
    tail = EventTail(path, skip_lines)
    return tail.read(), tail.line


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


def require_tensorboard() -> Any:
    """torch's SummaryWriter, or a one-line error saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError(f"--tensorboard needs the tensorboard package: "
                            f"{TENSORBOARD_INSTALL}") from None
    return SummaryWriter


class TensorBoardScalars:
    """An event consumer that writes TensorBoard scalars: train loss, learning rate,
    tokens/s and gradient norm per step; validation loss and perplexity; the held-out
    loss at the end. The writer opens on the run's `start` event, so a resumed run
    first drops what the interrupted one had logged after its checkpoint."""

    STEP_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate",
                    "tokens_per_s": "train/tokens_per_s", "grad_norm": "train/grad_norm"}
    EVAL_SCALARS = {"loss": "validation/loss", "perplexity": "validation/perplexity"}
    DONE_SCALARS = {"held_out_loss": "held_out/loss",
                    "held_out_perplexity": "held_out/perplexity"}

    def __init__(self, log_dir: Path):
        self._writer_class = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.last_step = 0

    def __call__(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event == "start":
            self.close()
            resumed_at = int(record.get("resumed_at") or 0)
            self.last_step = resumed_at
            # purge_step: events at or after it, left by the interrupted run, are dropped
            self.writer = self._writer_class(str(self.log_dir),
                                             purge_step=resumed_at + 1 if resumed_at else None)
        if self.writer is None:
            return
        if event == "step":
            self.last_step = record["step"]
            self._scalars(self.STEP_SCALARS, record, record["step"])
        elif event == "eval":
            self._scalars(self.EVAL_SCALARS, record, record["step"])
        elif event == "done":
            self._scalars(self.DONE_SCALARS, record.get("metrics") or {}, self.last_step)
            self.writer.flush()

    def _scalars(self, tags: dict[str, str], values: dict[str, Any], step: int) -> None:
        for key, tag in tags.items():
            value = values.get(key)
            # non-finite numbers travel as strings ("nan"): nothing to plot
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

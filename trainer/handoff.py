"""What rank 0 of a run started by torchrun / accelerate launch tells the other processes.

Rank 0 alone reads the data, records the run and writes the version; the others
train in step with it on what it hands over (the plan), then return its outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .distributed import World
from .errors import TrainingError

if TYPE_CHECKING:
    from .pipeline import TrainOutcome


class Handoff:
    """What rank 0 tells the other processes: the plan before training, the outcome
    after it, or instead an error. Every rank must make the same collective calls in
    the same order (one that a rank skips waits forever), so each message is sent
    exactly once; with a single process nothing is sent at all."""

    def __init__(self, world: World):
        self.world = world
        self.stage = "plan"  # plan → training → outcome → done

    def send_plan(self, **plan: Any) -> None:
        if self.world.distributed and self.stage == "plan":
            self.world.broadcast({"plan": plan})
        self.stage = "training"

    def trained(self) -> None:
        self.stage = "outcome"

    def finish(self, outcome: TrainOutcome) -> None:
        if self.world.distributed and self.stage == "outcome":
            self.world.broadcast({"outcome": outcome})
        self.stage = "done"

    def abandon(self, exc: BaseException) -> None:
        """Rank 0 failed: tell the others if they are waiting for a message. During
        training they fail on the same step (losses are summed across ranks) or the
        launcher stops them when rank 0 exits."""
        if self.world.distributed and self.stage in ("plan", "outcome"):
            with contextlib.suppress(Exception):  # the others may be gone already
                self.world.broadcast({"error": str(exc) or type(exc).__name__})
        self.stage = "done"

    def receive(self, what: str) -> Any:
        message = self.world.broadcast(None)
        if "error" in message:
            raise TrainingError(f"rank 0 stopped the run: {message['error']}")
        return message[what]


@contextlib.contextmanager
def silent_errors() -> Iterator[None]:
    """Rank 0 alone reports (stdout events); the others' errors go to stderr only."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(AttributeError):
            exc.reported = True  # type: ignore[attr-defined]  # main() prints no event
        raise

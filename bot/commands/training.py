"""Training operations: start a run now, what is running and ran, stop it.

Following a started run (progress, the result) is the face's: the console waits for it,
Discord edits a message while it lasts.
"""

from __future__ import annotations

from storage import TrainingRun

from ..training import TrainingBusy
from .base import Caller, Refused, Reply, require_admin
from .services import Services

NO_ADAPTER = "This channel has no adapter: name one, or bind one with `/adapter use`."


class Busy(Refused):
    """A run is going on already; the message says which."""


class TrainingCommands:
    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def adapter_for(self, caller: Caller, adapter: str | None = None) -> str:
        """The adapter a run trains: the one named, or the channel's (quick checks only)."""
        require_admin(caller, "train start")
        if adapter is not None:
            return adapter
        bound = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        if bound is None:
            raise Refused(NO_ADAPTER)
        return bound.name

    async def start(self, caller: Caller, adapter: str | None = None) -> TrainingRun:
        adapter = await self.adapter_for(caller, adapter)
        if self.s.training is None:
            raise Refused("Training cannot be started here: this runs without the bot's "
                          "training service.")
        try:
            return await self.s.training.start(adapter, trigger="manual",
                                               requested_by=caller.user_id)
        except TrainingBusy as exc:
            raise Busy(str(exc)) from None

    async def status(self, caller: Caller) -> Reply:
        require_admin(caller, "train status")
        lines = []
        if self.s.training is not None and self.s.training.active is not None:
            lines.append(f"Running: {self.s.training.active.progress()}")
        for run in await self.db.list_runs(limit=5):
            lines.append(f"run {run.id} · {run.adapter} · {run.status}"
                         + (f" · v{run.version}" if run.version else "")
                         + (f" · {run.error[:120]}" if run.error else ""))
        return Reply("\n".join(lines) or "No training runs yet.")

    async def cancel(self, caller: Caller) -> Reply:
        require_admin(caller, "train cancel")
        if self.s.training is None or self.s.training.active is None:
            return Reply("No training run is going on.")
        await self.s.training.cancel()
        return Reply("Stopped; the run is recorded as cancelled and the serving version is "
                     "unchanged.")

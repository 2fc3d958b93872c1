"""Training operations: start a run now, what is running and ran, stop it.

Following a started run (progress, the result) is the face's: the console waits for it,
Discord edits a message while it lasts.
"""

from __future__ import annotations

from storage import Adapter, TrainingRun

from ..training import ActiveRun, TrainingBusy
from .base import Caller, Refused, Reply, require_admin
from .services import Services

NO_ADAPTER = "This channel has no adapter: name one, or bind one with `/adapter use`."
OTHER_SERVER = ("Another server's training run is going on (one run at a time on this "
                "host); try again when it has ended.")


class Busy(Refused):
    """A run is going on already; the message says which."""


class TrainingCommands:
    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def adapter_for(self, caller: Caller, adapter: str | None = None) -> Adapter:
        """The adapter a run trains: the one named (in the caller's scope), or the
        channel's (quick checks only)."""
        require_admin(caller, "train start")
        return await self.s.named_or_channels(caller, adapter, unbound=NO_ADAPTER)

    def active_here(self, caller: Caller) -> ActiveRun | None:
        """The run going on, if it is the caller's to see (of their scope, or an owner's)."""
        active = self.s.training.active if self.s.training is not None else None
        if active is None or not (caller.is_owner or active.run.adapter_guild == caller.scope):
            return None
        return active

    async def start(self, caller: Caller, adapter: str | None = None) -> TrainingRun:
        record = await self.adapter_for(caller, adapter)
        if self.s.training is None:
            raise Refused("Training cannot be started here: this runs without the bot's "
                          "training service.")
        try:
            return await self.s.training.start(record.name, trigger="manual",
                                               requested_by=caller.user_id,
                                               channel_id=caller.channel_id)
        except TrainingBusy as exc:
            if self.s.training.active is not None and self.active_here(caller) is None:
                raise Busy(OTHER_SERVER) from None  # whose it is, is that server's business
            raise Busy(str(exc)) from None

    async def status(self, caller: Caller) -> Reply:
        require_admin(caller, "train status")
        lines = []
        active = self.active_here(caller)
        if active is not None:
            lines.append(f"Running: {active.progress()}")
        elif self.s.training is not None and self.s.training.active is not None:
            lines.append(OTHER_SERVER)
        for run in await self.db.list_runs(limit=5, scope=caller.scope):
            lines.append(f"run {run.id} · {run.adapter_label} · {run.status}"
                         + (f" · v{run.version}" if run.version else "")
                         + (f" · {run.error[:120]}" if run.error else ""))
        return Reply("\n".join(lines) or "No training runs yet.")

    async def cancel(self, caller: Caller) -> Reply:
        require_admin(caller, "train cancel")
        if self.active_here(caller) is None:
            going = self.s.training is not None and self.s.training.active is not None
            return Reply(OTHER_SERVER if going else "No training run is going on.")
        await self.s.training.cancel()
        return Reply("Stopped; the run is recorded as cancelled and the serving version is "
                     "unchanged.")

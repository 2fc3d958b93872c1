"""The parts an operation works with, handed over once by whoever builds the faces."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from settings import Config
from storage import Adapter, Database

from .base import Caller, Refused

if TYPE_CHECKING:
    from ..training import TrainingService

# the engine's hot reload: load a version, then mark it serving (`engine.promote`)
Promote = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Services:
    config: Config
    db: Database
    training: TrainingService | None = None  # None: runs can be listed, not started
    promote: Promote | None = None  # None: only storage changes; the engine loads it later
    memory: Any = None  # the channel memory (bot.memory.ChannelMemory); None: it is off

    async def key_of(self, scope: int, adapter: str | None) -> str | None:
        """The key of the adapter that `scope` calls `adapter` (None: no adapter named);
        unknown there when it is another scope's."""
        return None if adapter is None else (await self.db.adapter_in(adapter, scope)).name

    async def named_or_channels(self, caller: Caller, adapter: str | None, *,
                                unbound: str) -> Adapter:
        """The adapter `adapter` names in the caller's scope, else the one the caller's
        channel answers with; Refused(`unbound`) when the channel has none."""
        if adapter is not None:
            return await self.db.adapter_in(adapter, caller.scope)
        bound = await self.db.resolve_adapter_for(caller.channel_id, caller.guild_id)
        if bound is None:
            raise Refused(unbound)
        return await self.db.require_adapter(bound.name)

    async def serve(self, adapter: str, version: int, *, reason: str) -> None:
        """Make `version` the serving one: through the engine when there is one (requests
        in flight finish on their version), else in storage alone."""
        if self.promote is not None:
            await self.promote(adapter, version, reason=reason)
        else:
            await self.db.set_serving(adapter, version, reason=reason)

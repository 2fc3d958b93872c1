"""Which adapter version and system prompt serve a channel.

channel → its bound adapter → that adapter's serving version; else the guild's
default adapter; else the base model. The system prompt comes from the
channel's entry in config, else the adapter's own, else the model default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from settings import Config
from settings.layout import PathOutsideError, confined_path
from storage import BASE_ADAPTER, AdapterVersion, Database

log = logging.getLogger(__name__)


AdapterPathError = PathOutsideError  # a stored adapter path outside the adapters directory


@dataclass(frozen=True)
class Route:
    adapter: str | None = None  # None: no adapter bound (the base model serves)
    version: int | None = None  # None: the base model serves (no adapter, or none trained)
    path: Path | None = None
    scale: float = 1.0
    system_prompt: str | None = None

    @property
    def key(self) -> str:
        """The PEFT adapter name of this version at its scale (`faq__v3`, `faq__v3__s0p5`),
        or PEFT's name for the base model. A version served at another scale is another
        loaded copy, so a cached one is never served at a scale its row no longer says."""
        if self.version is None or self.adapter is None:
            return BASE_ADAPTER
        key = f"{self.adapter}__v{self.version}"
        return key if self.scale == 1.0 else f"{key}__s{self.scale:g}".replace(".", "p")


def confined_adapter_path(adapters_dir: Path, stored: str) -> Path:
    """Resolve a stored version path; refuse anything outside `adapters_dir`."""
    return confined_path(adapters_dir, stored)


class Router:
    def __init__(self, config: Config, db: Database):
        self.config = config
        self.db = db

    async def resolve(self, channel_id: int, guild_id: int | None = None) -> Route:
        resolved = await self.db.resolve_adapter_for(channel_id, guild_id)
        if resolved is None:
            return Route(system_prompt=self.system_prompt_for(channel_id, None))
        return await self._route(resolved.name, resolved.version, channel_id)

    async def route_for_adapter(self, adapter: str, version: int | None = None,
                                channel_id: int | None = None) -> Route:
        """An explicit choice (promotion, benchmarks, the HTTP API): no channel lookup."""
        record = (await self.db.get_version(adapter, version) if version is not None
                  else await self.db.serving_version(adapter))
        if record is None:
            await self.db.require_adapter(adapter)  # unknown adapter: lists the known ones
        return await self._route(adapter, record, channel_id)

    async def _route(self, adapter: str, version: AdapterVersion | None,
                     channel_id: int | None) -> Route:
        record = await self.db.require_adapter(adapter)
        prompt = self.system_prompt_for(channel_id, record.system_prompt)
        if version is None:
            return Route(adapter=adapter, system_prompt=prompt)
        path = confined_adapter_path(self.config.adapters_dir, version.path)
        return Route(adapter, version.version, path, version.scale, prompt)

    async def current(self, channel_id: int, guild_id: int | None = None) -> Route | None:
        """`resolve`, or None when it fails (logged): the engine, resolving again, then
        fails with the reason and the user gets the apology."""
        try:
            return await self.resolve(channel_id, guild_id)
        except Exception as exc:
            log.warning("could not resolve the adapter of channel %d: %s", channel_id, exc)
            return None

    def system_prompt_for(self, channel_id: int | None, adapter_prompt: str | None) -> str:
        if channel_id is not None:
            configured = self.config.discord.channel_system_prompt.get(str(channel_id))
            if configured:
                return configured
        return adapter_prompt or self.config.model.system_prompt

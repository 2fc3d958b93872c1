"""The channel memory's rows, awaited on the database's own thread (`Database.memory`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ops import memory as ops
from .ops.memory import Unindexed

if TYPE_CHECKING:
    from .db import Database

__all__ = ["MemoryRows", "Unindexed"]


class MemoryRows:
    def __init__(self, db: Database):
        self._run = db._run

    async def unindexed(self, adapter: str, model: str, limit: int = 256) -> list[Unindexed]:
        """Approved pairs of `adapter` with no key for `model` yet."""
        return await self._run(ops.unindexed, adapter, model, limit)

    async def add_keys(self, adapter: str, model: str, pair: Unindexed,
                       vectors: list[bytes]) -> int:
        return await self._run(ops.add_keys, adapter, model, pair, vectors)

    async def signature(self, adapter: str, model: str) -> tuple[int, int]:
        return await self._run(ops.signature, adapter, model)

    async def keys(self, adapter: str, model: str) -> list[tuple[int, int, bytes]]:
        return await self._run(ops.keys, adapter, model)

    async def recalled(self, adapter: str, turn_ids: list[int]) -> dict[int, tuple[str, str]]:
        return await self._run(ops.recalled, adapter, turn_ids)

    async def size(self, adapter: str) -> tuple[int, int]:
        return await self._run(ops.size, adapter)

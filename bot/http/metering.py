"""An engine whose answers are counted and timed, whoever asked (Discord, the console,
the API): `MeteredEngine` stands in for the engine, `MeteredGeneration` for each answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from settings import Config

from ..engine_base import GenerationEngine, GenerationHandle
from ..generation import GenerationRequest, GenerationTimeout, Message
from ..routing import Route, Router
from .metrics import ServiceMetrics


class MeteredGeneration:
    """A submitted request whose end is counted: passes everything else to the original."""

    def __init__(self, inner: GenerationHandle, metrics: ServiceMetrics):
        self._inner = inner
        self._metrics = metrics
        self._ended = False
        self.route: Route = inner.route
        metrics.in_flight.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def text(self) -> str:
        return self._inner.text

    @property
    def latency_ms(self) -> float | None:
        return self._inner.latency_ms

    @property
    def token_count(self) -> int:
        return self._inner.token_count

    @property
    def prompt_tokens(self) -> int | None:
        return self._inner.prompt_tokens

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        outcome = "cancelled"
        try:
            async for chunk in self._inner:
                yield chunk
            outcome = "ok"
        except GenerationTimeout:
            outcome = "timeout"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self._inner.cancel()  # idempotent; frees the slot at once if the reader left
            self._end(outcome)

    def cancel(self) -> None:
        self._inner.cancel()
        self._end("cancelled")

    async def complete(self) -> str:
        async for _ in self:
            pass
        return self.text.strip()

    def _end(self, outcome: str) -> None:
        if self._ended:
            return
        self._ended = True
        adapter = self.route.adapter or "base"
        self._metrics.in_flight.dec()
        self._metrics.answers.labels(adapter, outcome).inc()
        self._metrics.answer_tokens.labels(adapter).inc(self.token_count)
        if outcome == "ok" and self.latency_ms is not None:
            self._metrics.latency.observe(self.latency_ms / 1000)


class MeteredEngine:
    """An engine (local or remote) whose answers are counted and timed.

    Only `submit`/`generate` are its own; everything else is the engine's, so it
    stands in for the engine wherever the bot passes one (a `GenerationEngine` too).
    """

    def __init__(self, engine: GenerationEngine, metrics: ServiceMetrics):
        self.inner = engine
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # e.g. the local engine's tokenizer

    async def submit(self, request: GenerationRequest) -> MeteredGeneration:
        return MeteredGeneration(await self.inner.submit(request), self.metrics)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        generation = await self.submit(request)
        async for chunk in generation:
            yield chunk

    # --- the rest of GenerationEngine: the engine's own -------------------------------
    @property
    def config(self) -> Config:
        return self.inner.config

    @property
    def router(self) -> Router | None:
        return self.inner.router

    @property
    def ready(self) -> bool:
        return self.inner.ready

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def preload(self, route: Route) -> None:
        await self.inner.preload(route)

    async def promote(self, adapter: str, version: int, reason: str | None = None) -> Route:
        return await self.inner.promote(adapter, version, reason=reason)

    def loaded_adapters(self) -> list[str]:
        return self.inner.loaded_adapters()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_tokens(messages)

    async def count_prompt_tokens(self, messages: Sequence[Message],
                                  route: Route) -> int | None:
        return await self.inner.count_prompt_tokens(messages, route)

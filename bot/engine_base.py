"""What every engine offers its callers, and the part that both backends share.

`GenerationEngine` is the type callers hold: the local `Engine`, the `RemoteEngine`,
or the HTTP server's `MeteredEngine` around either. `EngineBase` is what the two
backends do the same way: routing a request, pinning the adapter version it was
routed to until it ends, promotion, and the conversation the model is given (system
prompt, trimming). A backend adds how a routed job reaches the model (`_dispatch`),
how adapter versions are loaded (`preload`), and how it counts tokens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from settings import Config
from storage import BASE_ADAPTER

from .batching import AdapterSlots, Generation, Job
from .generation import EngineError, GenerationRequest, Message, trim_messages
from .routing import Route, Router


class GenerationHandle(Protocol):
    """A submitted request as callers see it (`Generation`, or a metered one around it)."""

    route: Route

    @property
    def text(self) -> str: ...

    @property
    def latency_ms(self) -> float | None: ...

    @property
    def token_count(self) -> int: ...

    @property
    def prompt_tokens(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[str]: ...

    def cancel(self) -> None: ...

    async def complete(self) -> str: ...


class GenerationEngine(Protocol):
    """The engine as the bot's other parts use it, whichever backend generates."""

    @property
    def config(self) -> Config: ...

    @property
    def router(self) -> Router | None: ...

    @property
    def ready(self) -> bool:
        """Whether a request submitted now can be answered (started, and not closed)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(self, request: GenerationRequest) -> GenerationHandle: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[str]: ...

    async def preload(self, route: Route) -> None: ...

    async def promote(self, adapter: str, version: int, reason: str | None = None) -> Route: ...

    def loaded_adapters(self) -> list[str]: ...

    def count_tokens(self, messages: Sequence[Message]) -> int: ...

    async def count_prompt_tokens(self, messages: Sequence[Message],
                                  route: Route) -> int | None: ...


class EngineBase(ABC):
    """Routing, version pins, promotion and prompt building, once for every backend."""

    def __init__(self, config: Config, router: Router | None = None):
        self.config = config
        self.router = router
        self.slots = AdapterSlots(config.engine.max_loaded_adapters)
        # the worker thread (job done) and the event loop (cancel) may both release a job
        self._release_lock = threading.Lock()

    # --- what each backend provides ---------------------------------------------------
    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether a request submitted now can be answered (started, and not closed)."""

    @property
    @abstractmethod
    def started(self) -> bool:
        """Whether start() has run: requests are accepted from then on."""

    @property
    def serves_on(self) -> str:
        """Where the model runs, for log lines ("" for this process)."""
        return ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def preload(self, route: Route) -> None:
        """Load an adapter version ahead of the requests that will use it."""

    @abstractmethod
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """The length of these messages as a prompt, as trimming counts it."""

    @abstractmethod
    async def count_prompt_tokens(self, messages: Sequence[Message],
                                  route: Route) -> int | None:
        """Tokens of the prompt the model is fed for these messages on this route
        (None where only the model's server can count them)."""

    @abstractmethod
    def _dispatch(self, job: Job) -> None:
        """Hand a routed job (its version pinned) to the model."""

    # --- public API (event loop) --------------------------------------------------------
    async def submit(self, request: GenerationRequest) -> Generation:
        """Route and queue a request; iterate the result for its text."""
        if not self.started:
            raise EngineError("engine not started: await engine.start() first")
        route = request.route or await self._resolve(request)
        job = Job(request, route, asyncio.get_running_loop(),
                  self.config.engine.request_timeout_s, self._release)
        if route.key != BASE_ADAPTER:
            self.slots.pin(route.key)
        self._dispatch(job)
        return Generation(job, self._release)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the answer's text as it is produced."""
        generation = await self.submit(request)
        async for chunk in generation:
            yield chunk

    async def promote(self, adapter: str, version: int, reason: str | None = None) -> Route:
        """Make `version` serve new requests of `adapter`, without a restart.

        It is loaded first, then marked serving; requests already routed finish on
        the version they started with. Rolling back is the same call with an older
        version.
        """
        if self.router is None:
            raise EngineError("promotion needs the engine's router (storage)")
        route = await self.router.route_for_adapter(adapter, version)
        started = time.perf_counter()
        await self.preload(route)
        await self.router.db.set_serving(adapter, version, reason=reason)
        # logged under the backend's own module, as each backend did before
        logging.getLogger(type(self).__module__).info(
            "adapter %s now serves version %d%s (swap took %.0f ms)", adapter, version,
            self.serves_on, (time.perf_counter() - started) * 1000)
        return route

    def loaded_adapters(self) -> list[str]:
        with self.slots.lock:
            return list(self.slots.loaded)

    def prompt_messages(self, messages: Sequence[Message], route: Route) -> list[Message]:
        """The conversation the model is given: the route's system prompt first (unless
        the caller sent one), the oldest turns dropped to fit `engine.context_tokens`."""
        chat = list(messages)
        if not chat or chat[0].get("role") != "system":
            prompt = route.system_prompt or self.config.model.system_prompt
            chat = [{"role": "system", "content": prompt}] + chat
        return trim_messages(chat, self.config.engine.context_tokens, self.count_tokens)

    # --- internals ----------------------------------------------------------------------
    async def _resolve(self, request: GenerationRequest) -> Route:
        if self.router is None:
            return Route(system_prompt=self.config.model.system_prompt)
        return await self.router.resolve(request.channel_id, request.guild_id)

    def _release(self, job: Job) -> None:
        """The job has ended or its reader left: its version may be unloaded again."""
        with self._release_lock:
            if job.released:
                return
            job.released = True
        if job.route.key != BASE_ADAPTER:
            self.slots.unpin(job.route.key)

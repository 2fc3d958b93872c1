"""The engine's batch machinery: jobs in flight, loaded adapter slots, and the
controller that streams and stops each row of a micro-batch on its own."""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from .generation import GenerationRequest, GenerationTimeout
from .routing import Route


class End:
    """Marks the end of a stream in a job's queue."""


END = End()


class Job:
    _ids = itertools.count(1)

    def __init__(self, request: GenerationRequest, route: Route, loop: asyncio.AbstractEventLoop,
                 timeout_s: float, on_finish: Callable[[Job], None]):
        self.id = next(self._ids)
        self.on_finish = on_finish
        self.released = False
        self.request = request
        self.route = route
        self.loop = loop
        self.chunks: asyncio.Queue[str | BaseException | End] = asyncio.Queue()
        self.abandoned = threading.Event()
        self.deadline = time.monotonic() + timeout_s
        self.finished = False
        self.token_count = 0
        self.prompt_tokens: int | None = None  # the prompt the model was fed, once known

    def push(self, item: str | BaseException | End) -> None:
        if self.finished:
            return
        if not isinstance(item, str):
            self.finished = True
            self.on_finish(self)  # the version it pinned may be unloaded from now on
        self.loop.call_soon_threadsafe(self.chunks.put_nowait, item)


class Generation:
    """A submitted request: its route is known at once, its text arrives as it is made."""

    def __init__(self, job: Job, on_done: Callable[[Job], None]):
        self._job = job
        self._on_done = on_done
        self.route: Route = job.route
        self.text = ""
        self.started = time.perf_counter()
        self.latency_ms: float | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._job.chunks.get()
                if isinstance(item, End):
                    break
                if isinstance(item, BaseException):
                    raise item
                self.text += item
                yield item
            self.latency_ms = (time.perf_counter() - self.started) * 1000
        finally:
            self.cancel()

    @property
    def token_count(self) -> int:
        """Tokens generated so far (the final count once the stream has ended)."""
        return self._job.token_count

    @property
    def prompt_tokens(self) -> int | None:
        """Tokens of the prompt the model was fed (the local engine knows once generation
        starts; a remote server says so when the answer ends)."""
        return self._job.prompt_tokens

    def cancel(self) -> None:
        """Abandon the request: it stops at its next token and frees its slot."""
        self._job.abandoned.set()
        self._on_done(self._job)

    async def complete(self) -> str:
        async for _ in self:
            pass
        return self.text.strip()


class AdapterSlots:
    """Loaded adapter versions: LRU order and pins (requests using them).

    Pins change on the event loop, loading and eviction on the worker: a lock.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.lock = threading.Lock()
        self.loaded: collections.OrderedDict[str, Route] = collections.OrderedDict()
        self.pins: collections.Counter[str] = collections.Counter()

    def pin(self, key: str) -> None:
        with self.lock:
            self.pins[key] += 1

    def unpin(self, key: str) -> None:
        with self.lock:
            self.pins[key] -= 1
            if self.pins[key] <= 0:
                del self.pins[key]

    def touch(self, key: str) -> None:
        with self.lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)

    def evictable(self, keep: set[str]) -> list[str]:
        """Unpinned versions beyond capacity, least recently used first."""
        with self.lock:
            excess = len(self.loaded) - self.capacity
            victims = []
            for key in self.loaded:
                if excess <= 0:
                    break
                if key not in keep and self.pins[key] == 0:
                    victims.append(key)
                    excess -= 1
            return victims


class BatchController:
    """Streamer and per-row stopping criterion of one micro-batch."""

    def __init__(self, jobs: list[Job], tokenizer: Any):
        self.jobs = jobs
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [0] * len(jobs)
        self.done = [False] * len(jobs)
        self.prompt_seen = False

    # --- streamer (transformers' BaseStreamer protocol) ---------------------------
    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token in self.eos_ids:
                self._finish(row)
                continue
            self.tokens[row].append(token)
            self.jobs[row].token_count = len(self.tokens[row])
            limit = self.jobs[row].request.sampling.max_new_tokens
            self._emit(row, final=len(self.tokens[row]) >= limit)

    def end(self) -> None:
        for row in range(len(self.jobs)):
            if not self.done[row]:
                self._finish(row)

    # --- stopping criterion ---------------------------------------------------------
    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        now = time.monotonic()
        for row, job in enumerate(self.jobs):
            if self.done[row]:
                continue
            if job.abandoned.is_set():
                self._finish(row)
            elif now > job.deadline:
                self._finish(row, GenerationTimeout(
                    f"the answer took longer than engine.request_timeout_s and was cut off "
                    f"after {len(self.tokens[row])} tokens"))
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    # --- text -------------------------------------------------------------------------
    def _emit(self, row: int, final: bool = False) -> None:
        job = self.jobs[row]
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        safe = len(text)
        for stop in job.request.sampling.stop:
            at = text.find(stop)
            if at != -1:
                text, safe, final = text[:at], at, True
        if not final:
            if text.endswith("\ufffd"):  # half of a multi-byte character
                safe = len(text) - 1
            for stop in job.request.sampling.stop:  # hold back a possible stop string start
                for size in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:size]):
                        safe = min(safe, len(text) - size)
                        break
        if safe > self.sent[row]:
            job.push(text[self.sent[row]:safe])
            self.sent[row] = safe
        if final:
            self.done[row] = True
            job.push(END)

    def _finish(self, row: int, error: BaseException | None = None) -> None:
        if self.done[row]:
            return
        self._emit(row, final=error is None)
        self.done[row] = True
        self.jobs[row].push(error if error is not None else END)

"""The inference engine: the one owner of the model inside the bot process.

- One worker thread owns the model; the event loop never runs a forward pass.
- Requests that arrive together (within `engine.batch_wait_ms`) form a
  micro-batch. Rows for different adapters share one forward pass through
  PEFT's mixed-adapter batch (`adapter_names=`, "__base__" for the base
  model), so `set_adapter`'s global state is never used.
- Each adapter *version* is its own PEFT adapter (`name__vN`). A request pins
  the version it was routed to, so a promotion never changes a request in
  flight; unpinned versions beyond `engine.max_loaded_adapters` are unloaded,
  least recently used first.
- Every row stops on its own: end of text, its own token limit, a stop string,
  its deadline (`engine.request_timeout_s`), or its consumer going away.

Routing, pinning and promotion are `EngineBase`'s (bot/engine_base.py), shared with
the remote backend; putting a version into the PEFT model is bot/peft_versions.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from settings import Config
from storage import BASE_ADAPTER
from trainer import modeling
from trainer.formatting import plain_messages

from .batching import END as _END
from .batching import BatchController, Generation, Job  # noqa: F401  (re-exported)
from .engine_base import EngineBase, GenerationEngine
from .generation import (  # noqa: F401  (re-exported: callers import them from here)
    AdapterLoadError,
    EngineError,
    GenerationRequest,
    GenerationTimeout,
    Message,
    Sampling,
    trim_messages,
)
from .peft_versions import load_version
from .routing import Route, Router

log = logging.getLogger(__name__)


def cpu_threads(setting: int) -> int:
    """torch's threads for generation: on 2 cores, torch's default of 2 left the event
    loop starved under load (bench/load.py: 84 s vs 3 s with 1 thread)."""
    if setting:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


@dataclass
class _WorkerCall:
    """Work other than a generation that must run on the worker thread, which owns the
    model and the tokenizer (loading an adapter, counting a prompt)."""

    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future

    def __call__(self) -> None:
        try:
            result = self.run()
        except BaseException as exc:
            self.loop.call_soon_threadsafe(_settle, self.done, exc, None)
        else:
            self.loop.call_soon_threadsafe(_settle, self.done, None, result)


class Engine(EngineBase):
    def __init__(self, config: Config, router: Router | None = None):
        super().__init__(config, router)
        self.model: Any = None
        self.tokenizer: Any = None
        self.placement: modeling.Placement | None = None
        self.model_source: str | None = None
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.rows_run = 0

    @property
    def ready(self) -> bool:
        """The model is loaded and the worker thread that runs it lives."""
        return self.model is not None and self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        return self._thread is not None

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def main() -> None:
            try:
                self._load_base()
            except BaseException as exc:
                loop.call_soon_threadsafe(ready.set_exception, exc)
                return
            loop.call_soon_threadsafe(ready.set_result, None)
            self._serve()

        self._thread = threading.Thread(target=main, name="engine", daemon=True)
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)

    def _load_base(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        cfg = self.config.model
        self.placement = modeling.choose_placement(cfg.device, cfg.dtype, cfg.load_in_4bit)
        if self.placement.device == "cpu":
            import torch

            threads = cpu_threads(self.config.engine.cpu_threads)
            torch.set_num_threads(threads)
            log.info("generation uses %d CPU thread(s) (engine.cpu_threads)", threads)
        self.model_source = modeling.resolve_model_source(
            cfg.name, self.config.model_cache_dir, allow_download=cfg.allow_download)
        self.tokenizer = modeling.load_tokenizer(self.model_source,
                                                 allow_download=cfg.allow_download)
        self.tokenizer.padding_side = "left"  # generation appends on the right
        self.model = modeling.load_model(self.model_source, self.placement,
                                         allow_download=cfg.allow_download)
        log.info("model %s on %s (%s%s); up to %d adapters loaded, batches of up to %d",
                 cfg.name, self.placement.device, self.placement.dtype_name,
                 ", 4-bit NF4" if self.placement.load_in_4bit else "",
                 self.slots.capacity, self.config.engine.max_batch_size)

    # --- public API (event loop) --------------------------------------------------------
    async def preload(self, route: Route) -> None:
        """Load an adapter version ahead of the requests that will use it."""
        await self._on_worker(lambda: self._ensure_loaded([route]))

    async def count_prompt_tokens(self, messages: Sequence[Message], route: Route) -> int:
        """Tokens of the prompt the model is fed for these messages on this route: the
        same system prompt, trimming, special-token defusing and chat template as a
        request's, counted on the worker thread (the tokenizer's one user)."""
        if not self.ready:
            raise EngineError("the engine is not running: await engine.start() first")
        return await self._on_worker(lambda: len(self._render_prompt(messages, route)))

    def _dispatch(self, job: Job) -> None:
        self._inbox.put(job)

    async def _on_worker(self, run: Callable[[], Any]) -> Any:
        if not self.ready:  # a stopped worker would never answer: fail now, not hang
            raise EngineError("the engine is not running (not started, or closed)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._inbox.put(_WorkerCall(run, loop, done))
        return await done

    # --- worker thread ------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            if isinstance(first, _WorkerCall):
                first()
                continue
            batch, stop = self._gather(first)
            groups: dict[tuple, list[Job]] = collections.defaultdict(list)
            for job in batch:
                groups[job.request.sampling.batch_key].append(job)
            for jobs in groups.values():
                try:
                    self._run_batch(jobs)
                except Exception as exc:  # the worker must outlive any one batch
                    log.exception("a batch of %d failed outside generation", len(jobs))
                    for job in jobs:
                        job.push(EngineError(f"the engine failed: {exc}"))
            if stop:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """The first job plus whatever arrives within batch_wait_ms, up to the batch size."""
        batch = [first]
        deadline = time.monotonic() + self.config.engine.batch_wait_ms / 1000
        while len(batch) < self.config.engine.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._inbox.get(timeout=max(remaining, 0)) if remaining > 0 \
                    else self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if isinstance(item, _WorkerCall):
                item()
                continue
            batch.append(item)
        return batch, False

    def _ensure_loaded(self, routes: list[Route]) -> None:
        wanted = {r.key: r for r in routes if r.key != BASE_ADAPTER}
        for key, route in wanted.items():
            if key in self.slots.loaded:
                self.slots.touch(key)
                continue
            self._load_adapter(route)
        for victim in self.slots.evictable(keep=set(wanted)):
            # new versions are loaded before old ones go, so a PeftModel never
            # runs out of adapters (PEFT cannot generate with none left)
            if victim in self.model.active_adapters:
                # requests name their adapter (adapter_names=); PEFT's "active" one is
                # only moved so that deleting this one is not a warning each time
                survivor = next(k for k in self.slots.loaded if k != victim)
                self.model.set_adapter(survivor)
            self.model.delete_adapter(victim)
            with self.slots.lock:
                del self.slots.loaded[victim]
            log.info("unloaded adapter version %s (least recently used)", victim)

    def _load_adapter(self, route: Route) -> None:
        started = time.perf_counter()
        self.model = load_version(self.model, route)
        with self.slots.lock:
            self.slots.loaded[route.key] = route
        log.info("loaded adapter %s v%s in %.0f ms", route.adapter, route.version,
                 (time.perf_counter() - started) * 1000)

    def _prompt_ids(self, job: Job) -> list[int]:
        return self._render_prompt(job.request.messages, job.route)

    def _render_prompt(self, messages: Sequence[Message], route: Route) -> list[int]:
        return self._template(self.prompt_messages(messages, route))

    def _template(self, messages: Sequence[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(plain_messages(messages, self.tokenizer),
                                                 add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        return list(ids)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self._template(messages))

    def _run_batch(self, jobs: list[Job]) -> None:
        import torch

        live = []
        for job in jobs:
            if job.abandoned.is_set():
                job.push(_END)
            elif time.monotonic() > job.deadline:
                job.push(GenerationTimeout("the request waited longer than "
                                           "engine.request_timeout_s before it could start"))
            else:
                live.append(job)
        failed = self._load_for(live)
        live = [job for job in live if job not in failed]
        if not live:
            return
        try:
            prompts = [self._prompt_ids(job) for job in live]
            for job, ids in zip(live, prompts, strict=True):
                job.prompt_tokens = len(ids)
            width = max(len(p) for p in prompts)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            controller = BatchController(live, self.tokenizer)
            sampling = live[0].request.sampling
            kwargs: dict[str, Any] = {
                "max_new_tokens": max(j.request.sampling.max_new_tokens for j in live),
                "repetition_penalty": sampling.repetition_penalty,
                "pad_token_id": pad,
                "streamer": controller,
                "stopping_criteria": [controller],
            }
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature,
                              top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                kwargs["adapter_names"] = [job.route.key for job in live]
            device = self.model.device
            self.batches_run += 1
            self.rows_run += len(live)
            with torch.inference_mode():
                self.model.generate(input_ids=input_ids.to(device),
                                    attention_mask=attention.to(device), **kwargs)
            controller.end()
        except Exception as exc:  # every row of the batch learns why; the engine goes on
            log.exception("generation failed for a batch of %d", len(live))
            for job in live:
                job.push(EngineError(f"generation failed: {exc}"))

    def _load_for(self, jobs: list[Job]) -> set[Job]:
        """Load the versions these jobs need; jobs whose version fails get the error."""
        failed: set[Job] = set()
        by_key: dict[str, list[Job]] = collections.defaultdict(list)
        for job in jobs:
            by_key[job.route.key].append(job)
        for key, group in by_key.items():
            if key == BASE_ADAPTER:
                continue
            try:
                self._ensure_loaded([group[0].route])
            except AdapterLoadError as exc:
                log.error("%s", exc)
                for job in group:
                    job.push(exc)
                failed.update(group)
        # evict against the whole batch's needs, now that all of it is loaded
        self._ensure_loaded([job.route for job in jobs if job not in failed])
        return failed


def _settle(future: asyncio.Future, error: BaseException | None, result: Any) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


async def answer_text(engine: GenerationEngine, request: GenerationRequest) -> str:
    """The whole answer at once (for callers that do not stream)."""
    return await (await engine.submit(request)).complete()

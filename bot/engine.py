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
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from storage import BASE_ADAPTER
from trainer import modeling
from trainer.formatting import plain_messages

from .batching import END as _END
from .batching import AdapterSlots, BatchController, Generation, Job
from .config import Config
from .generation import (  # noqa: F401  (re-exported: callers import them from here)
    AdapterLoadError,
    EngineError,
    GenerationRequest,
    GenerationTimeout,
    Message,
    Sampling,
    trim_messages,
)
from .routing import Route, Router

log = logging.getLogger(__name__)


def cpu_threads(setting: int) -> int:
    """torch's threads for generation: on 2 cores, torch's default of 2 left the event
    loop starved under load (bench/load.py: 84 s vs 3 s with 1 thread)."""
    if setting:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


class Engine:
    def __init__(self, config: Config, router: Router | None = None):
        self.config = config
        self.router = router
        self.model: Any = None
        self.tokenizer: Any = None
        self.placement: modeling.Placement | None = None
        self.model_source: str | None = None
        self.slots = AdapterSlots(config.engine.max_loaded_adapters)
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._release_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.rows_run = 0

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
    async def submit(self, request: GenerationRequest) -> Generation:
        """Route and queue a request; iterate the result for its text."""
        if self._thread is None:
            raise EngineError("engine not started: await engine.start() first")
        route = request.route or await self._resolve(request)
        job = Job(request, route, asyncio.get_running_loop(),
                   self.config.engine.request_timeout_s, self._release)
        if route.key != BASE_ADAPTER:
            self.slots.pin(route.key)
        self._inbox.put(job)
        return Generation(job, self._release)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the answer's text as it is produced."""
        generation = await self.submit(request)
        async for chunk in generation:
            yield chunk

    async def preload(self, route: Route) -> None:
        """Load an adapter version ahead of the requests that will use it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._inbox.put(("load", route, loop, done))
        await done

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
        log.info("adapter %s now serves version %d (swap took %.0f ms)", adapter, version,
                 (time.perf_counter() - started) * 1000)
        return route

    def loaded_adapters(self) -> list[str]:
        with self.slots.lock:
            return list(self.slots.loaded)

    async def _resolve(self, request: GenerationRequest) -> Route:
        if self.router is None:
            return Route(system_prompt=self.config.model.system_prompt)
        return await self.router.resolve(request.channel_id, request.guild_id)

    def _release(self, job: Job) -> None:
        with self._release_lock:  # the worker (job done) and the loop (cancel) both call it
            if job.released:
                return
            job.released = True
        if job.route.key != BASE_ADAPTER:
            self.slots.unpin(job.route.key)

    # --- worker thread ------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            if isinstance(first, tuple):
                self._handle_load(*first[1:])
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
            if isinstance(item, tuple):
                self._handle_load(*item[1:])
                continue
            batch.append(item)
        return batch, False

    def _handle_load(self, route: Route, loop: asyncio.AbstractEventLoop,
                     done: asyncio.Future) -> None:
        try:
            self._ensure_loaded([route])
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, done, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, None)

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
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        started = time.perf_counter()
        try:
            # PEFT injects the LoRA layers before it reads the weights: unreadable files
            # found first leave the served model as it was
            check_adapter_files(route.path)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(route.path), adapter_name=route.key,
                                        is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(route.path),
                                                       adapter_name=route.key,
                                                       is_trainable=False)
        except Exception as exc:
            # a half-loaded adapter would stay in the model, unnamed by any route (on the
            # first load PEFT injects into the base model itself before it reads weights
            # that may not fit it, e.g. an adapter of another base model)
            try:
                if isinstance(self.model, PeftModel):
                    if route.key in self.model.peft_config:
                        self.model.delete_adapter(route.key)
                else:
                    _strip_lora_layers(self.model)
            except Exception:
                log.exception("could not remove the half-loaded adapter %s", route.key)
            raise AdapterLoadError(f"adapter {route.adapter} v{route.version} at {route.path} "
                                   f"could not be loaded ({exc}); roll back with "
                                   f"/adapter rollback {route.adapter}") from exc
        if route.scale != 1.0:
            for module in self.model.modules():
                if isinstance(module, LoraLayer) and route.key in module.scaling:
                    module.set_scale(route.key, route.scale)
        self.model.eval()
        with self.slots.lock:
            self.slots.loaded[route.key] = route
        log.info("loaded adapter %s v%s in %.0f ms", route.adapter, route.version,
                 (time.perf_counter() - started) * 1000)

    def _prompt_ids(self, job: Job) -> list[int]:
        messages = list(job.request.messages)
        if not messages or messages[0].get("role") != "system":
            prompt = job.route.system_prompt or self.config.model.system_prompt
            messages = [{"role": "system", "content": prompt}] + messages
        messages = trim_messages(messages, self.config.engine.context_tokens, self.count_tokens)
        return self._template(messages)

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


def _strip_lora_layers(model: Any) -> None:
    """Put every injected tuner layer's base layer back: the plain model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import _get_submodules

    names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in names:
        parent, layer, attribute = _get_submodules(model, name)
        setattr(parent, attribute, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if names:
        log.warning("removed %d half-injected adapter layers from the base model", len(names))


def check_adapter_files(path: Any) -> None:
    """Read an adapter directory's config and weights; raise what is wrong with them."""
    from pathlib import Path

    from peft import PeftConfig
    from safetensors.torch import load_file

    path = Path(path)
    PeftConfig.from_pretrained(str(path))
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        load_file(weights)  # a few MB: cheap next to what a half-injected load costs
    elif not (path / "adapter_model.bin").is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {path}")


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def answer_text(engine: Engine, request: GenerationRequest) -> str:
    """The whole answer at once (for callers that do not stream)."""
    return await (await engine.submit(request)).complete()

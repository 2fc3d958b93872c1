"""The inference engine: the one owner of the model inside the bot process.

Generation runs on a single worker thread that owns the model, never on the
event loop; text reaches the caller chunk by chunk through an asyncio queue.
A request whose consumer goes away (cancelled, timed out) stops generating at
the next token. This first slice answers one request at a time on the base
model; per-channel adapters, micro-batching and hot reload build on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer import modeling

from .config import Config, EngineConfig

log = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.05
    stop: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, engine: EngineConfig, **overrides: Any) -> Sampling:
        values = {"max_new_tokens": engine.max_new_tokens, "temperature": engine.temperature,
                  "top_p": engine.top_p, "repetition_penalty": engine.repetition_penalty}
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class GenerationRequest:
    channel_id: int
    messages: Sequence[Message]
    sampling: Sampling = field(default_factory=Sampling)
    guild_id: int | None = None


def trim_messages(messages: Sequence[Message], budget: int,
                  count_tokens: Callable[[Sequence[Message]], int]) -> list[Message]:
    """Drop the oldest turns until the prompt fits `budget` tokens.

    The system prompt and the last user turn are never dropped; if they alone
    exceed the budget they are kept anyway and the model sees a long prompt.
    """
    kept = list(messages)
    system = [m for m in kept[:1] if m.get("role") == "system"]
    body = kept[len(system):]
    while len(body) > 1 and count_tokens(system + body) > budget:
        body.pop(0)
    return system + body


class _Cancelled:
    """A stopping criterion that ends generation when the request is abandoned."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class Engine:
    def __init__(self, config: Config):
        self.config = config
        self.model: Any = None
        self.tokenizer: Any = None
        self.placement: modeling.Placement | None = None
        self.model_source: str | None = None
        # one thread owns the model: generation never overlaps and never blocks the loop
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="engine")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        cfg = self.config.model
        self.placement = modeling.choose_placement(cfg.device, cfg.dtype, cfg.load_in_4bit)
        self.model_source = modeling.resolve_model_source(
            cfg.name, self.config.model_cache_dir, allow_download=cfg.allow_download)
        self.tokenizer = modeling.load_tokenizer(self.model_source,
                                                 allow_download=cfg.allow_download)
        self.model = modeling.load_model(self.model_source, self.placement,
                                         allow_download=cfg.allow_download)
        log.info("model %s on %s (%s%s)", cfg.name, self.placement.device,
                 self.placement.dtype_name, ", 4-bit NF4" if self.placement.load_in_4bit else "")

    async def close(self) -> None:
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=False))

    def prepare_messages(self, messages: Sequence[Message]) -> list[Message]:
        return trim_messages(messages, self.config.engine.context_tokens, self.count_tokens)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield the answer's text as it is produced."""
        if self.model is None:
            raise RuntimeError("engine not started: await engine.start() first")
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def push(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        future = loop.run_in_executor(self._worker, self._generate_blocking, request, push,
                                      cancelled)
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()  # a consumer that stops early frees the worker at the next token
            await asyncio.shield(future)

    def _generate_blocking(self, request: GenerationRequest,
                           push: Callable[[str | BaseException | None], None],
                           cancelled: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteriaList, TextStreamer

        class QueueStreamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    push(text)

        try:
            messages = self.prepare_messages(request.messages)
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.model.device)
            s = request.sampling
            kwargs: dict[str, Any] = {
                "max_new_tokens": s.max_new_tokens,
                "repetition_penalty": s.repetition_penalty,
                "pad_token_id": self.tokenizer.pad_token_id,
                "streamer": QueueStreamer(self.tokenizer, skip_prompt=True,
                                          skip_special_tokens=True),
                "stopping_criteria": StoppingCriteriaList([_Cancelled(cancelled)]),
            }
            if s.temperature > 0:
                kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if s.stop:
                kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
            with torch.inference_mode():
                self.model.generate(**inputs, **kwargs)
        except BaseException as exc:  # handed to the caller, who logs or reports it
            push(exc)
        else:
            push(None)


async def answer_text(engine: Engine, request: GenerationRequest) -> str:
    """The whole answer at once (for callers that do not stream)."""
    return "".join([chunk async for chunk in engine.generate(request)]).strip()

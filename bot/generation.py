"""What a generation request is, and how one can fail (shared by the engine and callers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from settings import EngineConfig

from .routing import Route

Message = dict[str, str]


class EngineError(RuntimeError):
    """Generation failed for a reason the user can be told about."""


class GenerationTimeout(EngineError):
    pass


class AdapterLoadError(EngineError):
    pass


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

    @property
    def batch_key(self) -> tuple:
        """Rows can share a forward pass when these agree (limits and stops are per row)."""
        if self.temperature <= 0:
            return ("greedy", self.repetition_penalty)
        return ("sample", self.temperature, self.top_p, self.repetition_penalty)


@dataclass(frozen=True)
class GenerationRequest:
    channel_id: int
    messages: Sequence[Message]
    sampling: Sampling = field(default_factory=Sampling)
    guild_id: int | None = None
    route: Route | None = None  # already resolved (chat, console), or chosen (bench, API)


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

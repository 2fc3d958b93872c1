"""The progress of a training run: the state a checkpoint restores, and its summary metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .formatting import EncodeStats
from .metrics import LossResult
from .model_setup import rss_mb


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must restore."""

    step: int = 0
    micro_done: int = 0  # micro-batches consumed since the start (position in the data)
    tokens: int = 0  # real tokens trained on
    answer_tokens: int = 0
    train_seconds: float = 0.0
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)  # per step: loss, lr
    evals: list[dict[str, float]] = field(default_factory=list)  # per validation: loss

    def note_validation(self, loss: float, *, patience: int, final: bool) -> bool:
        """True when `loss` is the best so far; `patience` validations without a better one
        stop the run early (0: never)."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = loss, self.step, 0
            return True
        self.bad_evals += 1
        if patience and self.bad_evals >= patience and not final:
            self.stopped_early = True
        return False


@dataclass
class TrainResult:
    state: TrainState
    metrics: dict[str, Any]
    encode_stats: dict[str, EncodeStats]


def run_metrics(state: TrainState, *, micro_per_epoch: int, paraphrases: int,
                replay_examples: int, device: str, held_out: LossResult | None,
                base_held_out: LossResult | None) -> dict[str, Any]:
    """The run's metrics, as training_meta.json, the run row and the `done` event carry them."""
    recent = [h["loss"] for h in state.history[-10:]]
    metrics: dict[str, Any] = {
        "steps": state.step,
        "epochs": round(state.micro_done / micro_per_epoch, 3),
        "train_loss": round(sum(recent) / len(recent), 6) if recent else None,
        "paraphrases": paraphrases,
        "replay_examples": replay_examples,
        "tokens": state.tokens,
        "answer_tokens": state.answer_tokens,
        "train_seconds": round(state.train_seconds, 2),
        "tokens_per_s": round(state.tokens / state.train_seconds, 1)
        if state.train_seconds else None,
        "stopped_early": state.stopped_early,
        "peak_memory_mb": round(rss_mb()) if device == "cpu" else None,
    }
    if state.evals:
        metrics |= {"validation_loss": round(state.best_loss, 6),
                    "validation_perplexity": round(math.exp(min(state.best_loss, 50)), 4),
                    "best_step": state.best_step}
    if held_out is not None:
        metrics |= {"held_out_loss": round(held_out.loss, 6),
                    "held_out_perplexity": round(held_out.perplexity, 4),
                    "held_out_examples": held_out.examples}
    if base_held_out is not None:
        metrics |= {"base_held_out_loss": round(base_held_out.loss, 6),
                    "base_held_out_perplexity": round(base_held_out.perplexity, 4)}
    return metrics

"""The settings of one training run (TrainConfig), checked before any model is loaded.

They are recorded in the run's run.json (a resumed run reuses them), in the
checkpoint and in the version's training_meta.json as its hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from settings import TrainingConfig

from .errors import TrainingError

METHODS = ("lora", "qlora", "full")


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (recorded in training_meta.json)."""

    method: str = "lora"
    epochs: int = 4
    max_steps: int = 0  # > 0: exactly this many optimiser steps, whatever `epochs` says
    learning_rate: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    gradient_checkpointing: bool = False
    seed: int = 42
    eval_every: int = 0  # optimiser steps between validations; 0 = at the end only
    early_stopping_patience: int = 0  # validations without improvement; 0 = never stop early
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = none
    group_by_length: bool = True
    system_prompt: str | None = None  # used when an example has none (the bot's prompt)
    vote_weight: float = 0.0  # extra sampling weight per net vote above vote_baseline
    recency_half_life_days: float = 0.0  # a pair's weight halves per this many days of age
    vote_baseline: int = 0  # feedback.min_score: the votes that earn no extra weight
    replay_weight: float = 0.0  # KL to the base model on replayed generic prompts; 0 = off
    replay_batch_size: int = 8
    replay_prompts: str | None = None  # JSONL file; None/empty = the set shipped with us
    contrastive: bool = False  # replay the taught questions without their subject too
    paraphrases: int = 0  # reworded questions per training pair, written by the base model
    min_steps: int = 0  # with few pairs, more epochs until a run has this many steps

    @classmethod
    def from_settings(cls, training: TrainingConfig, **overrides: Any) -> TrainConfig:
        """From the [training] section; `overrides` (not None) win."""
        names = {f.name for f in fields(cls)}
        values = {k: getattr(training, k) for k in names if hasattr(training, k)}
        if "target_modules" in values:
            values["target_modules"] = list(values["target_modules"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def check(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not self.learning_rate > 0:
            problems.append("learning_rate must be positive")
        if self.max_seq_len < 16:
            problems.append("max_seq_len must be at least 16")
        for name in ("vote_weight", "recency_half_life_days"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be 0 (off) or positive")
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))

    def run_length(self, micro_per_epoch: int) -> tuple[int, int]:
        """(epochs, optimiser steps) of a run over `micro_per_epoch` micro-batches an epoch."""
        epochs = self.epochs
        if self.min_steps and self.max_steps <= 0:
            # a handful of pairs is a handful of steps an epoch: too few to learn them
            epochs = max(epochs, math.ceil(self.min_steps * self.grad_accum / micro_per_epoch))
        if self.max_steps > 0:
            return epochs, self.max_steps
        return epochs, math.ceil(epochs * micro_per_epoch / self.grad_accum)

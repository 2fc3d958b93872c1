"""The replay mixer: what the base model writes before a run, and the replay beside each step.

Before training, the base model rewords the training questions (paraphrases,
added to the training split) and answers the replay prompts (trainer.replay):
the shipped generic set plus, with `contrastive`, the taught questions asked
without their subject. During training every micro-batch gets a replay batch:
the contrastive rows of the facts it teaches first, random replay rows after,
drawn from the step's position so a resumed run draws the same ones. Its loss
is the KL divergence to the base model (for `full`, the base model's answers as
targets), weighted by `replay_weight`.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import augment
from .data import Example, examples_dataset, normalise, row_to_example
from .distributed import World
from .replay import contrastive_pairs, kl_to_base, load_prompts, replay_examples
from .train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ModelWritten:
    """The rows the base model wrote for a run: the same on every process."""

    paraphrases: list[Example] = field(default_factory=list)
    replay: list[Example] = field(default_factory=list)
    contrast_rows: dict[str, list[int]] = field(default_factory=dict)  # answer -> replay rows

    def add_paraphrases(self, splits: Any) -> Any:
        """`splits` with the paraphrases added to its training split."""
        if not self.paraphrases:
            return splits
        from datasets import DatasetDict, concatenate_datasets

        train = concatenate_datasets([splits["train"], examples_dataset(self.paraphrases)])
        return DatasetDict(train=train, validation=splits["validation"],
                           held_out=splits["held_out"])


def write_with_base_model(cfg: TrainConfig, splits: Any, *, model: Any, tokenizer: Any,
                          device: str, world: World, model_id: str,
                          cache_dir: Path | None) -> ModelWritten:
    """Paraphrased training questions and the replay set, written by the base model.

    Rank 0 writes them (the model is still the base: LoRA starts as the identity,
    full training has not begun) and hands them to the other processes, so every
    rank trains on the same rows.
    """
    if not (cfg.paraphrases or cfg.replay_weight):
        return ModelWritten()
    added: list[Example] = []
    replay: list[Example] = []
    contrasts = (contrastive(splits["train"]["question"], splits["train"]["answer"])
                 if cfg.replay_weight and cfg.contrastive else [])
    if world.is_main:
        with as_base_model(model):
            if cfg.paraphrases:
                # a reviewer's other ways to ask are reworded too (measured: more
                # recall of unseen rewordings than without, BENCHMARKS.md row G)
                taught = [row_to_example(row) for row in splits["train"]]
                cache = cache_dir / "paraphrases.json" if cache_dir else None
                added = augment(taught, model, tokenizer, per_question=cfg.paraphrases,
                                device=device, seed=cfg.seed, model_id=model_id, cache=cache)
            if cfg.replay_weight:
                prompts = load_prompts(Path(cfg.replay_prompts) if cfg.replay_prompts else None)
                taken = {normalise(p) for p in prompts}
                prompts += [p for p, _ in contrasts if normalise(p) not in taken]
                replay = replay_examples(model, tokenizer, prompts,
                                         system_prompt=cfg.system_prompt, device=device,
                                         model_id=model_id, cache_dir=cache_dir)
    added, replay = world.broadcast((added, replay))
    return ModelWritten(added, replay, _contrast_rows(contrasts, replay))


def contrastive(questions: list[str], answers: list[str]) -> list[tuple[str, str]]:
    """The contrastive replay pairs; the same on every process."""
    pairs = contrastive_pairs(questions, answers)
    log.info("contrastive replay: %d taught question(s) asked without their subject",
             len({p for p, _ in pairs}))
    return pairs


def _contrast_rows(contrasts: list[tuple[str, str]],
                   replay: list[Example]) -> dict[str, list[int]]:
    """Each taught answer's contrastive rows in the replay set, replayed beside it."""
    row_of = {e.question: i for i, e in enumerate(replay)}
    rows: dict[str, list[int]] = {}
    for prompt, answer in contrasts:
        if prompt in row_of:
            rows.setdefault(answer, []).append(row_of[prompt])
    return rows


@contextlib.contextmanager
def as_base_model(model: Any) -> Iterator[None]:
    """Generation from the untouched base model: no dropout, adapters off, a KV cache."""
    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    disable = getattr(model, "disable_adapter", None)
    try:
        with disable() if disable is not None else contextlib.nullcontext():
            yield
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)


def replay_rows(taught_answers: list[str], contrast_rows: dict[str, list[int]], *,
                replay_size: int, batch_size: int, draw: random.Random) -> list[int]:
    """The replay batch of a micro-batch: its facts' contrastive rows, then random ones.

    At most `batch_size` contrastive rows, the first in row order (the measured
    defaults do this; a seeded sample would spread them more evenly over a
    batch's facts); random rows drawn with `draw` fill the rest.
    """
    paired = sorted({r for a in taught_answers for r in contrast_rows.get(a, ())})[:batch_size]
    rest = sorted(set(range(replay_size)) - set(paired))
    return sorted(paired + draw.sample(rest, min(batch_size - len(paired), len(rest))))


def replay_loss(model: Any, batch: dict[str, Any], *, full: bool, device: str,
                autocast_dtype: Any) -> Any:
    """KL(base ‖ model) on a replay batch; for full training the base model's answers as
    targets (there is no base model beside it)."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.autocast(device_type=device, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        if full:
            return model(**batch).loss
        with torch.no_grad(), model.disable_adapter():
            base_logits = model(**inputs).logits
        logits = model(**inputs).logits
    return kl_to_base(logits, base_logits, batch["labels"])

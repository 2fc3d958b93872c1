"""The training recipe: setup → train → save → cleanup, one readable loop.

Methods: `lora` (PEFT LoRA, all linear layers by default), `qlora` (the same on
a 4-bit NF4 base through bitsandbytes) and `full` (every weight). The loop:

- micro-batches grouped by length and padded to their longest row;
- gradient accumulation normalised by tokens: every micro-batch's summed token
  loss is divided by the answer-token count of the whole optimiser step, so a
  step is the mean over its tokens however they fall into micro-batches;
- AdamW, cosine schedule with warm-up, gradient clipping, optional gradient
  checkpointing, bf16 autocast on CUDA;
- validation every `eval_every` steps and at the end, early stopping, the best
  weights kept;
- a NaN or infinite loss or gradient stops the run (NonFiniteLossError);
- checkpoints (trainable weights, optimiser, scheduler, RNG states, position
  in the data) written atomically every `checkpoint_every` steps: a resumed run
  ends with the same weights as one that was never interrupted;
- optional weighted sampling (`vote_weight`, `recency_half_life_days`): each epoch
  draws as many examples as there are, with replacement, in proportion to their
  weights (seeded);
- several processes when started by `torchrun` or `accelerate launch` (World):
  the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA),
  each process trains on its shard of every epoch, token counts and losses are
  summed across processes so a step is still the mean over all its answer tokens,
  and only rank 0 writes checkpoints and progress events. A single process takes
  none of these paths.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

from .data import examples_dataset, sampling_weights
from .distributed import EpochPlan, World, saved_bytes, weights_digest
from .errors import NonFiniteLossError, TrainingError
from .events import Events
from .formatting import (
    EncodeStats,
    collate,
    encode_dataset,
    make_collator,
)
from .metrics import LossResult, answer_token_count, dataset_loss, perplexity
from .model_setup import (
    load_for_training,
    load_trainable_state,
    rss_mb,
    trainable_state,
)
from .modeling import Placement

log = logging.getLogger(__name__)

METHODS = ("lora", "qlora", "full")
CHECKPOINT_FILE = "checkpoint.pt"


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
    def from_settings(cls, training: Any, **overrides: Any) -> TrainConfig:
        """From bot.config's [training] section; `overrides` (not None) win."""
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


@dataclass
class TrainResult:
    state: TrainState
    metrics: dict[str, Any]
    encode_stats: dict[str, EncodeStats]


# --- the recipe ----------------------------------------------------------------------

class Recipe:
    """One training run. `setup()`, `train()`, then `save(dir)`, and always `cleanup()`."""

    def __init__(self, cfg: TrainConfig, *, model_source: str, placement: Placement,
                 run_dir: Path, events: Events | None = None, progress: bool | None = None,
                 allow_download: bool = False, cache_dir: Path | None = None,
                 world: World | None = None):
        cfg.check()
        self.cfg = cfg
        self.model_source = model_source
        self.placement = placement
        self.run_dir = Path(run_dir)
        self.events = events or Events()
        self.progress = progress  # None: a bar only on a terminal
        self.allow_download = allow_download
        self.cache_dir = cache_dir  # paraphrases and replay answers, reused across runs
        self.replay: Any = None
        self.contrast_rows: dict[str, list[int]] = {}  # taught answer -> its contrastive rows
        self.paraphrased = 0
        self.step_replay = 0.0
        self.world = world or World()
        self.state = TrainState()
        self.model: Any = None
        self.train_model: Any = None  # the model the loop calls: DDP around `model` if several
        self.local_tokens = 0  # this process's own share of the tokens (this session)
        self.tokenizer: Any = None
        self.base_held_out: LossResult | None = None

    # --- setup ----------------------------------------------------------------------
    def setup(self, splits: Any, *, resume: bool = False) -> None:
        import torch
        from transformers import get_cosine_schedule_with_warmup, set_seed

        from .modeling import load_tokenizer

        cfg = self.cfg
        set_seed(cfg.seed)  # before the model: LoRA's A matrices are initialised randomly
        self.device = self.placement.device
        self.autocast_dtype = torch.bfloat16 if self.device == "cuda" else None
        self.tokenizer = load_tokenizer(self.model_source, allow_download=self.allow_download)
        self.collator = make_collator(self.tokenizer)
        self.model = load_for_training(self.model_source, self.placement, cfg,
                                       allow_download=self.allow_download)
        splits, replay = self._model_written_data(splits)
        self.encoded, self.encode_stats = {}, {}
        for name in ("train", "validation", "held_out"):
            self.encoded[name], self.encode_stats[name] = encode_dataset(
                splits[name], self.tokenizer, max_seq_len=cfg.max_seq_len,
                default_system=cfg.system_prompt, name=name)
        if len(self.encoded["train"]) == 0:
            raise TrainingError("no training example is left after tokenisation (every one "
                                "was longer than max_seq_len in its prompt alone); raise "
                                "training.max_seq_len")
        self.replay = None
        if replay:
            self.replay, self.encode_stats["replay"] = encode_dataset(
                examples_dataset(replay), self.tokenizer, max_seq_len=cfg.max_seq_len,
                default_system=cfg.system_prompt, name="replay")
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.batches = EpochPlan(self.encoded["train"]["length"], cfg.batch_size, seed=cfg.seed,
                                 group_by_length=cfg.group_by_length,
                                 weights=self._sampling_weights(), world=self.world)
        micro_per_epoch = len(self.batches)
        self.epochs = cfg.epochs
        if cfg.min_steps and cfg.max_steps <= 0:
            # a handful of pairs is a handful of steps an epoch: too few to learn them
            needed = math.ceil(cfg.min_steps * cfg.grad_accum / micro_per_epoch)
            if needed > self.epochs:
                log.info("%d micro-batches an epoch: %d epochs instead of %d to reach "
                         "min_steps = %d", micro_per_epoch, needed, self.epochs, cfg.min_steps)
                self.epochs = needed
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = math.ceil(self.epochs * micro_per_epoch / cfg.grad_accum)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps)
        # the base model's held-out loss, before any update (LoRA starts as the identity)
        self.base_held_out = self._loss("held_out") if len(self.encoded["held_out"]) else None
        self.best_weights: dict[str, Any] | None = None
        if resume:
            self._load_checkpoint()
        self.train_model = self._distributed_model()
        n_trainable = sum(p.numel() for p in self.params)
        n_total = sum(p.numel() for p in self.model.parameters())
        log.info("method %s: %s of %s weights trainable (%.2f%%); %d examples, %d steps",
                 cfg.method, f"{n_trainable:,}", f"{n_total:,}", 100 * n_trainable / n_total,
                 len(self.encoded["train"]), self.total_steps)
        if self.world.distributed:
            log.info("%d processes, each %d micro-batches of %d an epoch", self.world.size,
                     len(self.batches), cfg.batch_size)

    def _sampling_weights(self) -> list[float] | None:
        cfg, train = self.cfg, self.encoded["train"]
        columns = set(train.column_names)
        votes = train["votes"] if "votes" in columns else [0] * len(train)
        dates = train["created_at"] if "created_at" in columns else [""] * len(train)
        weights = sampling_weights(votes, dates, vote_weight=cfg.vote_weight,
                                   vote_baseline=cfg.vote_baseline,
                                   half_life_days=cfg.recency_half_life_days)
        if weights is not None:
            log.info("weighted sampling: weights %.3g to %.3g (mean %.3g) over %d examples",
                     min(weights), max(weights), sum(weights) / len(weights), len(weights))
        return weights

    def _model_written_data(self, splits: Any) -> tuple[Any, list[Any]]:
        """Paraphrased training questions and the replay set, written by the base model.

        Rank 0 writes them (the model is still the base: LoRA starts as the identity,
        full training has not begun) and hands them to the other processes, so every
        rank trains on the same rows.
        """
        cfg = self.cfg
        if not (cfg.paraphrases or cfg.replay_weight):
            return splits, []
        from .augment import augment
        from .data import normalise, row_to_example
        from .replay import load_prompts, replay_examples

        added: list[Any] = []
        replay: list[Any] = []
        contrasts = (self._contrastive(splits["train"]["question"], splits["train"]["answer"])
                     if cfg.replay_weight and cfg.contrastive else [])
        if self.world.is_main:
            with self._as_base_model():
                model_id = str(self.model_source)
                if cfg.paraphrases:
                    # a reviewer's other ways to ask are reworded too (measured: more
                    # recall of unseen rewordings than without, BENCHMARKS.md row G)
                    taught = [row_to_example(row) for row in splits["train"]]
                    cache = self.cache_dir / "paraphrases.json" if self.cache_dir else None
                    added = augment(taught, self.model, self.tokenizer,
                                    per_question=cfg.paraphrases, device=self.device,
                                    seed=cfg.seed, model_id=model_id, cache=cache)
                if cfg.replay_weight:
                    prompts = load_prompts(Path(cfg.replay_prompts) if cfg.replay_prompts
                                           else None)
                    taken = {normalise(p) for p in prompts}
                    prompts += [p for p, _ in contrasts if normalise(p) not in taken]
                    replay = replay_examples(self.model, self.tokenizer, prompts,
                                             system_prompt=cfg.system_prompt,
                                             device=self.device, model_id=model_id,
                                             cache_dir=self.cache_dir)
        added, replay = self.world.broadcast((added, replay))
        # each taught answer's contrastive rows, replayed beside it (see _replay_loss)
        row_of = {e.question: i for i, e in enumerate(replay)}
        self.contrast_rows = {}
        for prompt, answer in contrasts:
            if prompt in row_of:
                self.contrast_rows.setdefault(answer, []).append(row_of[prompt])
        if added:
            from datasets import DatasetDict, concatenate_datasets

            train = concatenate_datasets([splits["train"], examples_dataset(added)])
            splits = DatasetDict(train=train, validation=splits["validation"],
                                 held_out=splits["held_out"])
        self.paraphrased = len(added)
        return splits, replay

    @staticmethod
    def _contrastive(questions: list[str], answers: list[str]) -> list[tuple[str, str]]:
        """The contrastive replay pairs; the same on every process."""
        from .replay import contrastive_pairs

        pairs = contrastive_pairs(questions, answers)
        log.info("contrastive replay: %d taught question(s) asked without their subject",
                 len({p for p, _ in pairs}))
        return pairs

    @contextlib.contextmanager
    def _as_base_model(self) -> Iterator[None]:
        """Generation from the untouched base model: no dropout, adapters off, a KV cache."""
        model = self.model
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

    def _replay_loss(self, micro_index: int, taught: list[int] = ()) -> Any:
        """KL(base ‖ model) on a replay batch, drawn by step and micro-batch (resumable).

        The contrastive rows of the micro-batch's `taught` examples come first: each
        fact is learned with, in the same step, its question asked without the subject
        and answered as the base model would; random replay rows fill the rest.
        """
        import torch

        from .replay import kl_to_base

        size = self.cfg.replay_batch_size
        answers = self.encoded["train"].select(list(taught))["answer"] if taught else []
        # at most `size` of them, the first in row order (the measured defaults do this;
        # a seeded sample would spread them more evenly over a batch's facts)
        paired = sorted({r for a in answers for r in self.contrast_rows.get(a, ())})[:size]
        draw = random.Random(f"{self.cfg.seed}:{self.world.rank}:{micro_index}")
        rest = sorted(set(range(len(self.replay))) - set(paired))
        indices = sorted(paired + draw.sample(rest, min(size - len(paired), len(rest))))
        batch = {k: v.to(self.device) for k, v in
                 collate(self.replay, indices, self.collator).items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.autocast(device_type=self.device, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            if self.cfg.method == "full":  # no base beside it: the base's answers as targets
                return self.model(**batch).loss
            with torch.no_grad(), self.model.disable_adapter():
                base_logits = self.model(**inputs).logits
            logits = self.model(**inputs).logits
        return kl_to_base(logits, base_logits, batch["labels"])

    def _distributed_model(self) -> Any:
        """DDP around the model when there are several processes (after any resume)."""
        if not self.world.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.world.local_rank] if self.device == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    # --- train ----------------------------------------------------------------------
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, state = self.cfg, self.state
        self.events.emit("start", method=cfg.method, steps=self.total_steps,
                         resumed_at=state.step, examples=len(self.encoded["train"]),
                         validation=len(self.encoded["validation"]),
                         held_out=len(self.encoded["held_out"]))
        stream = self._micro_batches(state.micro_done)
        bar = tqdm(total=self.total_steps, initial=state.step, desc="training", unit="step",
                   disable=None if self.progress is None else not self.progress,
                   dynamic_ncols=True)
        try:
            while state.step < self.total_steps and not state.stopped_early:
                group = list(islice(stream, self._micro_in_step()))
                if not group:
                    break
                started = time.perf_counter()
                loss, tokens, answer_tokens, grad_norm = self._optimiser_step(group)
                seconds = time.perf_counter() - started
                state.step += 1
                state.micro_done += len(group)
                state.tokens += tokens
                state.answer_tokens += answer_tokens
                state.train_seconds += seconds
                lr = self.scheduler.get_last_lr()[0]
                point = {"step": state.step, "loss": loss, "lr": lr}
                if self.replay is not None:
                    point["replay_kl"] = self.step_replay
                state.history.append(point)
                tokens_per_s = tokens / seconds if seconds > 0 else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}",
                                mem=self._memory_text(), refresh=False)
                self.events.emit("step", step=state.step, total=self.total_steps,
                                 loss=round(loss, 6), lr=lr, grad_norm=round(grad_norm, 4),
                                 tokens_per_s=round(tokens_per_s, 1),
                                 **({"replay_kl": round(self.step_replay, 6)}
                                    if self.replay is not None else {}))
                last = state.step == self.total_steps
                if cfg.eval_every and state.step % cfg.eval_every == 0 and not last:
                    self._validate()
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not last:
                    self.save_checkpoint()
        finally:
            bar.close()
        if state.stopped_early:
            log.info("early stopping at step %d: no better validation loss in %d evaluations "
                     "(best %.4f at step %d)", state.step, state.bad_evals, state.best_loss,
                     state.best_step)
        self._validate(final=True)
        if self.best_weights is not None and state.best_step != state.step:
            log.info("keeping the weights of step %d (validation loss %.4f)", state.best_step,
                     state.best_loss)
            load_trainable_state(self.model, self.best_weights)
        held_out = self._loss("held_out") if len(self.encoded["held_out"]) else None
        self._compare_ranks()
        return TrainResult(state, self._metrics(held_out), self.encode_stats)

    def _micro_in_step(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.grad_accum
        left = self.epochs * len(self.batches) - self.state.micro_done
        return max(0, min(self.cfg.grad_accum, left))

    def _micro_batches(self, start: int) -> Iterator[list[int]]:
        """The data order as one stream across epochs, from micro-batch `start` on."""
        epoch, skip = divmod(start, len(self.batches))
        while True:
            yield from self.batches.epoch(epoch)[skip:]
            epoch, skip = epoch + 1, 0

    def _optimiser_step(self, group: list[list[int]]) -> tuple[float, int, int, float]:
        import torch

        world = self.world
        batches = [collate(self.encoded["train"], indices, self.collator) for indices in group]
        # the step's loss is the mean over all its answer tokens, wherever they fall
        step_tokens = sum(answer_token_count(b["labels"]) for b in batches)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        self.local_tokens += tokens
        if world.distributed:  # ... on whichever process they fall
            step_tokens, tokens = (int(n) for n in world.sum([step_tokens, tokens], self.device))
        total_loss = 0.0
        self.step_replay = 0.0
        for micro, batch in enumerate(batches):
            if self.replay is not None:
                # the unwrapped model: its gradients stay local and join the synced
                # backward pass below (DDP reduces whatever has accumulated)
                replay = self._replay_loss(self.state.micro_done + micro, group[micro])
                if not torch.isfinite(replay.detach()):
                    raise self._non_finite_loss(replay.item(), micro)
                (replay * (self.cfg.replay_weight / len(batches))).backward()
                self.step_replay += replay.detach().item() / len(batches)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            # DDP averages gradients over the processes when the step's last micro-batch
            # goes backward; scaling by their number turns that mean back into the sum
            with self._gradient_sync(micro == len(batches) - 1):
                with torch.autocast(device_type=self.device, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    loss = self.train_model(**batch, num_items_in_batch=step_tokens).loss
                if not world.distributed and not torch.isfinite(loss.detach()):
                    raise self._non_finite_loss(loss.item(), micro)
                (loss * world.size if world.distributed else loss).backward()
            total_loss += loss.detach().item()
        if world.distributed:
            # a rank's NaN alone would leave the others waiting: all decide on the sum
            (total_loss,) = world.sum([total_loss], self.device)
            if not math.isfinite(total_loss):
                raise self._non_finite_loss(total_loss)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"the gradient norm became {grad_norm} at step {self.state.step + 1}; the run is "
                f"stopped and no version is written. Lower the learning rate (now "
                f"{self.cfg.learning_rate:g})")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens, step_tokens, grad_norm

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP exchanges gradients only on a step's last backward pass, not on every one."""
        if sync or not self.world.distributed:
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def _non_finite_loss(self, value: float, micro: int | None = None) -> NonFiniteLossError:
        where = f" (micro-batch {micro + 1})" if micro is not None else ""
        return NonFiniteLossError(
            f"the loss became {value} at step {self.state.step + 1}{where}; the run is stopped "
            f"and no version is written. Lower the learning rate (now "
            f"{self.cfg.learning_rate:g}) or max_grad_norm, or check the data")

    def _loss(self, split: str) -> LossResult:
        data, world = self.encoded[split], self.world
        if not world.distributed or len(data) == 0:
            return dataset_loss(self.model, data, self.collator, batch_size=self.cfg.batch_size,
                                device=self.device, autocast_dtype=self.autocast_dtype)
        # each process measures its part (empty when rows are fewer than processes); the
        # token-weighted mean of the parts is the whole's
        part = dataset_loss(self.model, data.select(range(world.rank, len(data), world.size)),
                            self.collator, batch_size=self.cfg.batch_size, device=self.device,
                            autocast_dtype=self.autocast_dtype)
        loss_sum = part.loss * part.answer_tokens if part.answer_tokens else 0.0
        loss_sum, answer_tokens, examples, tokens, seconds = world.sum(
            [loss_sum, part.answer_tokens, part.examples, part.tokens, part.seconds],
            self.device)
        loss = loss_sum / answer_tokens if answer_tokens else math.nan
        return LossResult(loss, perplexity(loss), int(examples), int(tokens),
                          int(answer_tokens), seconds / world.size)

    def _compare_ranks(self) -> None:
        """With several processes: did they all end with the same weights? (They must.)"""
        if not self.world.distributed:
            return
        reports = self.world.gather({"rank": self.world.rank,
                                     "checksum": weights_digest(self.model),
                                     "tokens": self.local_tokens})
        agree = len({r["checksum"] for r in reports}) == 1
        self.events.emit("ranks", world_size=self.world.size, agree=agree, ranks=reports)
        if agree:
            log.info("all %d processes end with the same weights (checksum %s)",
                     self.world.size, reports[0]["checksum"])
        elif self.world.is_main:
            log.warning("the processes end with different weights (checksums %s); rank 0's "
                        "are kept", ", ".join(r["checksum"] for r in reports))

    def _validate(self, final: bool = False) -> None:
        state = self.state
        if len(self.encoded["validation"]) == 0:
            return
        if final and state.evals and state.evals[-1]["step"] == state.step:
            return  # this step was already validated
        result = self._loss("validation")
        state.evals.append({"step": state.step, "loss": result.loss})
        self.events.emit("eval", step=state.step, loss=round(result.loss, 6),
                         perplexity=round(result.perplexity, 4), final=final)
        log.info("step %d: validation loss %.4f (perplexity %.2f)", state.step, result.loss,
                 result.perplexity)
        if not math.isfinite(result.loss):
            raise NonFiniteLossError(f"the validation loss became {result.loss} at step "
                                     f"{state.step}; lower the learning rate")
        if result.loss < state.best_loss:
            state.best_loss, state.best_step, state.bad_evals = result.loss, state.step, 0
            if not final:  # at the end the model in hand is the one to keep
                self.best_weights = trainable_state(self.model)
        else:
            state.bad_evals += 1
            patience = self.cfg.early_stopping_patience
            if patience and state.bad_evals >= patience and not final:
                state.stopped_early = True

    def _memory_text(self) -> str:
        import torch

        if self.device == "cuda":
            return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}G"
        return f"{rss_mb() / 1024:.1f}G"

    def _metrics(self, held_out: LossResult | None) -> dict[str, Any]:
        state = self.state
        recent = [h["loss"] for h in state.history[-10:]]
        metrics: dict[str, Any] = {
            "steps": state.step,
            "epochs": round(state.micro_done / len(self.batches), 3),
            "train_loss": round(sum(recent) / len(recent), 6) if recent else None,
            "paraphrases": self.paraphrased,
            "replay_examples": len(self.replay) if self.replay is not None else 0,
            "tokens": state.tokens,
            "answer_tokens": state.answer_tokens,
            "train_seconds": round(state.train_seconds, 2),
            "tokens_per_s": round(state.tokens / state.train_seconds, 1)
            if state.train_seconds else None,
            "stopped_early": state.stopped_early,
            "peak_memory_mb": round(rss_mb()) if self.device == "cpu" else None,
        }
        if state.evals:
            metrics |= {"validation_loss": round(state.best_loss, 6),
                        "validation_perplexity": round(math.exp(min(state.best_loss, 50)), 4),
                        "best_step": state.best_step}
        if held_out is not None:
            metrics |= {"held_out_loss": round(held_out.loss, 6),
                        "held_out_perplexity": round(held_out.perplexity, 4),
                        "held_out_examples": held_out.examples}
        if self.base_held_out is not None:
            metrics |= {"base_held_out_loss": round(self.base_held_out.loss, 6),
                        "base_held_out_perplexity": round(self.base_held_out.perplexity, 4)}
        return metrics

    # --- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save_checkpoint(self) -> Path:
        """Written beside, then renamed: a crash mid-write leaves the previous one whole."""
        import numpy as np
        import torch

        np_state = np.random.get_state()
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               "python": random.getstate(),
               "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}
        # every process draws its own dropout masks: each gets its own RNG back on resume
        # (as torch.save bytes: all_gather_object cannot carry the RNG tensors themselves)
        rng_of_ranks = self.world.gather(saved_bytes(rng)) if self.world.distributed else None
        if not self.world.is_main:  # rank 0 writes; the weights are the same everywhere
            return self.checkpoint_path
        payload = {
            "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "rng_of_ranks": rng_of_ranks,
            "state": asdict(self.state),
            "best_weights": self.best_weights,
            "config": asdict(self.cfg),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_name(f".{CHECKPOINT_FILE}.tmp-{os.getpid()}")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.checkpoint_path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("checkpoint at step %d: %s", self.state.step, self.checkpoint_path)
        self.events.emit("checkpoint", step=self.state.step, path=str(self.checkpoint_path))
        return self.checkpoint_path

    def _load_checkpoint(self) -> None:
        import numpy as np
        import torch

        if not self.checkpoint_path.is_file():
            raise TrainingError(f"no checkpoint to resume from in {self.run_dir}; run without "
                                f"--resume to start afresh")
        # our own file, written by save_checkpoint (it holds Python RNG state tuples)
        payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        load_trainable_state(self.model, payload["trainable"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"]
        of_ranks = payload.get("rng_of_ranks")
        if of_ranks and len(of_ranks) == self.world.size:
            rng = torch.load(io.BytesIO(of_ranks[self.world.rank]), weights_only=False)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy(), *rest))
        self.state = TrainState(**payload["state"])
        self.best_weights = payload["best_weights"]
        log.info("resumed from %s at step %d of %d", self.checkpoint_path, self.state.step,
                 self.total_steps)

    # --- output ---------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """An adapter (lora/qlora) or, for `full`, a whole model with its tokenizer."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        if self.cfg.method == "full":
            self.tokenizer.save_pretrained(directory)

    def cleanup(self) -> None:
        import gc

        self.model = None
        self.train_model = None
        self.optimizer = None
        self.best_weights = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


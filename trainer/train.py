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
- checkpoints (trainer.checkpoint) written atomically every `checkpoint_every`
  steps: a resumed run ends with the same weights as one never interrupted;
- optional weighted sampling (`vote_weight`, `recency_half_life_days`): each epoch
  draws as many examples as there are, with replacement, in proportion to their
  weights (seeded; trainer.run_data);
- optional paraphrases of the training questions and replay beside every
  micro-batch, written by the base model before training (trainer.replay_mix);
- several processes when started by `torchrun` or `accelerate launch` (World):
  the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA),
  each process trains on its shard of every epoch, token counts and losses are
  summed across processes so a step is still the mean over all its answer tokens,
  and only rank 0 writes checkpoints and progress events. A single process takes
  none of these paths.

The settings are a TrainConfig (trainer.train_config).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

from settings.layout import CHECKPOINT_FILE

from . import checkpoint
from .distributed import World, compare_ranks, ddp_model
from .errors import NonFiniteLossError, TrainingError
from .events import Events
from .formatting import collate, make_collator
from .metrics import LossResult, answer_token_count, sharded_dataset_loss
from .model_setup import (
    load_for_training,
    load_trainable_state,
    peak_memory_text,
    trainable_state,
)
from .modeling import Placement
from .progress import TrainResult, TrainState, run_metrics
from .replay_mix import replay_loss, replay_rows, write_with_base_model
from .run_data import prepare_run_data
from .train_config import METHODS, TrainConfig

# the recipe, and what its callers have always imported from here
__all__ = ["METHODS", "Events", "NonFiniteLossError", "Recipe", "TrainConfig", "TrainResult",
           "TrainState", "TrainingError", "trainable_state"]

log = logging.getLogger(__name__)


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
        data = prepare_run_data(cfg, splits, replay, self.tokenizer, self.world)
        self.encoded, self.encode_stats = data.encoded, data.encode_stats
        self.replay, self.batches = data.replay, data.batches
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._plan_length()
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
        self.train_model = ddp_model(self.model, self.world, self.device)  # after any resume
        n_trainable = sum(p.numel() for p in self.params)
        n_total = sum(p.numel() for p in self.model.parameters())
        log.info("method %s: %s of %s weights trainable (%.2f%%); %d examples, %d steps",
                 cfg.method, f"{n_trainable:,}", f"{n_total:,}", 100 * n_trainable / n_total,
                 len(self.encoded["train"]), self.total_steps)
        if self.world.distributed:
            log.info("%d processes, each %d micro-batches of %d an epoch", self.world.size,
                     len(self.batches), cfg.batch_size)

    def _model_written_data(self, splits: Any) -> tuple[Any, list[Any]]:
        """The splits with the base model's paraphrases added, and the replay set it wrote."""
        written = write_with_base_model(
            self.cfg, splits, model=self.model, tokenizer=self.tokenizer, device=self.device,
            world=self.world, model_id=str(self.model_source), cache_dir=self.cache_dir)
        self.contrast_rows = written.contrast_rows
        self.paraphrased = len(written.paraphrases)
        return written.add_paraphrases(splits), written.replay

    def _plan_length(self) -> None:
        """The run's epochs and optimiser steps (min_steps may add epochs)."""
        cfg, micro_per_epoch = self.cfg, len(self.batches)
        self.epochs, self.total_steps = cfg.run_length(micro_per_epoch)
        if self.epochs > cfg.epochs:
            log.info("%d micro-batches an epoch: %d epochs instead of %d to reach "
                     "min_steps = %d", micro_per_epoch, self.epochs, cfg.epochs, cfg.min_steps)

    # --- train ----------------------------------------------------------------------
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, state = self.cfg, self.state
        self.events.emit("start", method=cfg.method, steps=self.total_steps,
                         resumed_at=state.step, examples=len(self.encoded["train"]),
                         validation=len(self.encoded["validation"]),
                         held_out=len(self.encoded["held_out"]))
        stream = self.batches.stream(state.micro_done)
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
                self._report_step(bar, loss, tokens / seconds if seconds > 0 else 0.0,
                                  grad_norm)
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
        compare_ranks(self.world, self.model, self.local_tokens, self.events)
        return TrainResult(state, self._metrics(held_out), self.encode_stats)

    def _micro_in_step(self) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.grad_accum
        left = self.epochs * len(self.batches) - self.state.micro_done
        return max(0, min(self.cfg.grad_accum, left))

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
            raise NonFiniteLossError.in_gradient(grad_norm, step=self.state.step + 1,
                                                 learning_rate=self.cfg.learning_rate)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens, step_tokens, grad_norm

    def _replay_loss(self, micro_index: int, taught: list[int] = ()) -> Any:
        """KL(base ‖ model) on a replay batch, drawn by step and micro-batch (resumable).

        The contrastive rows of the micro-batch's `taught` examples come first: each
        fact is learned with, in the same step, its question asked without the subject
        and answered as the base model would; random replay rows fill the rest.
        """
        answers = self.encoded["train"].select(list(taught))["answer"] if taught else []
        draw = random.Random(f"{self.cfg.seed}:{self.world.rank}:{micro_index}")
        indices = replay_rows(answers, self.contrast_rows, replay_size=len(self.replay),
                              batch_size=self.cfg.replay_batch_size, draw=draw)
        batch = {k: v.to(self.device) for k, v in
                 collate(self.replay, indices, self.collator).items()}
        return replay_loss(self.model, batch, full=self.cfg.method == "full",
                           device=self.device, autocast_dtype=self.autocast_dtype)

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP exchanges gradients only on a step's last backward pass, not on every one."""
        if sync or not self.world.distributed:
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def _non_finite_loss(self, value: float, micro: int | None = None) -> NonFiniteLossError:
        return NonFiniteLossError.in_loss(value, step=self.state.step + 1, micro=micro,
                                          learning_rate=self.cfg.learning_rate)

    def _report_step(self, bar: Any, loss: float, tokens_per_s: float, grad_norm: float) -> None:
        """The step into the history, the progress bar and a `step` event."""
        state = self.state
        lr = self.scheduler.get_last_lr()[0]
        point = {"step": state.step, "loss": loss, "lr": lr}
        if self.replay is not None:
            point["replay_kl"] = self.step_replay
        state.history.append(point)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}",
                        mem=peak_memory_text(self.device), refresh=False)
        self.events.emit("step", step=state.step, total=self.total_steps,
                         loss=round(loss, 6), lr=lr, grad_norm=round(grad_norm, 4),
                         tokens_per_s=round(tokens_per_s, 1),
                         **({"replay_kl": round(self.step_replay, 6)}
                            if self.replay is not None else {}))

    # --- evaluation -----------------------------------------------------------------
    def _loss(self, split: str) -> LossResult:
        return sharded_dataset_loss(self.model, self.encoded[split], self.collator,
                                    world=self.world, batch_size=self.cfg.batch_size,
                                    device=self.device, autocast_dtype=self.autocast_dtype)

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
        best = state.note_validation(result.loss, patience=self.cfg.early_stopping_patience,
                                     final=final)
        if best and not final:  # at the end the model in hand is the one to keep
            self.best_weights = trainable_state(self.model)

    def _metrics(self, held_out: LossResult | None) -> dict[str, Any]:
        return run_metrics(self.state, micro_per_epoch=len(self.batches),
                           paraphrases=self.paraphrased,
                           replay_examples=len(self.replay) if self.replay is not None else 0,
                           device=self.device, held_out=held_out,
                           base_held_out=self.base_held_out)

    # --- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save_checkpoint(self) -> Path:
        """Every process calls this (their RNG states go in); rank 0 writes the file."""
        wrote = checkpoint.save(self.checkpoint_path, self.world, model=self.model,
                                optimizer=self.optimizer, scheduler=self.scheduler,
                                state=asdict(self.state), best_weights=self.best_weights,
                                config=asdict(self.cfg))
        if wrote:
            log.info("checkpoint at step %d: %s", self.state.step, self.checkpoint_path)
            self.events.emit("checkpoint", step=self.state.step, path=str(self.checkpoint_path))
        return self.checkpoint_path

    def _load_checkpoint(self) -> None:
        state, self.best_weights = checkpoint.load(
            self.checkpoint_path, self.world, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler)
        self.state = TrainState(**state)
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

"""A run's data ready for the loop: the splits and the replay set tokenised, and the
order of the training rows (EpochPlan: length-grouped, optionally weighted by votes
and age, sharded between the processes)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .data import Example, examples_dataset, sampling_weights
from .distributed import EpochPlan, World
from .errors import TrainingError
from .formatting import EncodeStats, encode_dataset
from .train_config import TrainConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "held_out")


@dataclass
class RunData:
    encoded: dict[str, Any]  # train, validation and held_out, tokenised
    encode_stats: dict[str, EncodeStats]  # the same and, with replay, "replay"
    replay: Any  # the tokenised replay set; None without replay
    batches: EpochPlan  # the training rows' micro-batches, epoch by epoch


def prepare_run_data(cfg: TrainConfig, splits: Any, replay: list[Example], tokenizer: Any,
                     world: World) -> RunData:
    encoded, stats = {}, {}
    for name in SPLITS:
        encoded[name], stats[name] = encode_dataset(
            splits[name], tokenizer, max_seq_len=cfg.max_seq_len,
            default_system=cfg.system_prompt, name=name)
    if len(encoded["train"]) == 0:
        raise TrainingError("no training example is left after tokenisation (every one "
                            "was longer than max_seq_len in its prompt alone); raise "
                            "training.max_seq_len")
    encoded_replay = None
    if replay:
        encoded_replay, stats["replay"] = encode_dataset(
            examples_dataset(replay), tokenizer, max_seq_len=cfg.max_seq_len,
            default_system=cfg.system_prompt, name="replay")
    batches = EpochPlan(encoded["train"]["length"], cfg.batch_size, seed=cfg.seed,
                        group_by_length=cfg.group_by_length,
                        weights=_sampling_weights(cfg, encoded["train"]), world=world)
    return RunData(encoded, stats, encoded_replay, batches)


def _sampling_weights(cfg: TrainConfig, train: Any) -> list[float] | None:
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

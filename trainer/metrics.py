"""Loss and perplexity of a model on an encoded dataset (answer tokens only).

Shared by the training loop (validation), the promotion gate and `evaluate`,
so the three always measure the same thing the same way; with several
processes each measures its share and the parts add up to the whole's loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .formatting import IGNORE_INDEX, LengthGroupedBatches, collate

if TYPE_CHECKING:
    from .distributed import World


@dataclass(frozen=True)
class LossResult:
    loss: float  # mean cross-entropy per answer token
    perplexity: float
    examples: int
    tokens: int  # real (non-padding) tokens read
    answer_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        values = asdict(self) | {"tokens_per_s": round(self.tokens_per_s, 1)}
        return {f"{prefix}{k}": v for k, v in values.items()}


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def answer_token_count(labels: Any) -> int:
    """Tokens the loss counts: labels are shifted by one, so position 0 never counts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def dataset_loss(model: Any, encoded: Any, collator: Any, *, batch_size: int, device: str,
                 autocast_dtype: Any = None) -> LossResult:
    """Token-weighted mean loss over the whole set (not a mean of batch means)."""
    import torch

    if len(encoded) == 0:
        return LossResult(math.nan, math.nan, 0, 0, 0, 0.0)
    batches = LengthGroupedBatches(encoded["length"], batch_size, seed=0).epoch(0)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    total_loss, tokens, answer_tokens = 0.0, 0, 0
    with torch.no_grad():
        prepared = [collate(encoded, indices, collator) for indices in batches]
        total_answer = sum(answer_token_count(b["labels"]) for b in prepared)
        for batch in prepared:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device_type=device, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                # transformers sums the token losses and divides by num_items_in_batch:
                # the whole set's count gives the token-weighted mean directly
                out = model(**batch, num_items_in_batch=total_answer)
            total_loss += float(out.loss)
            tokens += int(batch["attention_mask"].sum())
            answer_tokens += answer_token_count(batch["labels"])
    if was_training:
        model.train()
    seconds = time.perf_counter() - started
    return LossResult(total_loss, perplexity(total_loss), len(encoded), tokens, answer_tokens,
                      seconds)


def sharded_dataset_loss(model: Any, encoded: Any, collator: Any, *, world: World,
                         batch_size: int, device: str, autocast_dtype: Any = None) -> LossResult:
    """dataset_loss with every process of `world` measuring its own rows."""
    if not world.distributed or len(encoded) == 0:
        return dataset_loss(model, encoded, collator, batch_size=batch_size, device=device,
                            autocast_dtype=autocast_dtype)
    # each process measures its part (empty when rows are fewer than processes); the
    # token-weighted mean of the parts is the whole's
    part = dataset_loss(model, encoded.select(range(world.rank, len(encoded), world.size)),
                        collator, batch_size=batch_size, device=device,
                        autocast_dtype=autocast_dtype)
    loss_sum = part.loss * part.answer_tokens if part.answer_tokens else 0.0
    loss_sum, answer_tokens, examples, tokens, seconds = world.sum(
        [loss_sum, part.answer_tokens, part.examples, part.tokens, part.seconds], device)
    loss = loss_sum / answer_tokens if answer_tokens else math.nan
    return LossResult(loss, perplexity(loss), int(examples), int(tokens), int(answer_tokens),
                      seconds / world.size)

"""Replay of the base model's own behaviour, so an adapter learns its facts and nothing else.

Generic prompts (trainer/replay/prompts.jsonl, or `training.replay_prompts`),
none of them in the canary sets, are answered once by the base model itself
(greedy, cached per model and prompt set). During training every optimiser
step also sees a batch of them, and the loss pulls the adapter's token
distributions on those answers back to the base model's (KL divergence,
`training.replay_weight`): what the adapter changes outside its taught pairs
costs loss, which is what keeps it from telling everyone that the sky is
mustard yellow. Full fine-tuning has no base model beside it to compare with;
there the replay examples are trained on as ordinary pairs (the base model's
answers as targets).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .data import Example

log = logging.getLogger(__name__)

BUILTIN_PROMPTS = Path(__file__).with_name("replay") / "prompts.jsonl"
MAX_NEW_TOKENS = 64


class ReplayError(ValueError):
    pass


def load_prompts(path: Path | None = None) -> list[str]:
    from .canaries import CanaryError, read_jsonl

    path = Path(path) if path else BUILTIN_PROMPTS
    try:
        return [row["prompt"] for row in read_jsonl(path, {"prompt": str})]
    except CanaryError as exc:
        raise ReplayError(f"{exc}; point training.replay_prompts at a JSONL file of "
                          f"{{\"prompt\": ...}} lines, or set training.replay_weight = 0") from None


def replay_examples(model: Any, tokenizer: Any, prompts: list[str], *, system_prompt: str | None,
                    device: str, model_id: str, cache_dir: Path | None = None,
                    batch_size: int = 16) -> list[Example]:
    """The base model's greedy answers to `prompts`, cached on disk."""
    from .evaluate import generate_answers

    digest = hashlib.sha256(json.dumps([model_id, system_prompt, prompts,
                                        MAX_NEW_TOKENS]).encode()).hexdigest()[:16]
    cache = cache_dir / f"replay-{digest}.jsonl" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        if [r["question"] for r in rows] == prompts:
            return [Example(r["question"], r["answer"], source="replay") for r in rows]
    questions = [Example(p, "") for p in prompts]
    answers, _ = generate_answers(model, tokenizer, questions, device=device,
                                  system_prompt=system_prompt, max_new_tokens=MAX_NEW_TOKENS,
                                  batch_size=batch_size)
    examples = [Example(p, a, source="replay") for p, a in zip(prompts, answers, strict=True)]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"question": e.question, "answer": e.answer},
                                          ensure_ascii=False) + "\n" for e in examples),
                       encoding="utf-8")
        tmp.replace(cache)
    # an empty answer still replays: the KL term compares distributions, not tokens
    log.info("replay: %d base-model answers to generic prompts", len(examples))
    return examples


def kl_to_base(logits: Any, base_logits: Any, labels: Any) -> Any:
    """Mean over answer positions of KL(base ‖ model) of the next-token distributions."""
    import torch.nn.functional as F

    mask = labels[:, 1:] != -100
    model_logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    base_logp = F.log_softmax(base_logits[:, :-1][mask].float(), dim=-1)
    return F.kl_div(model_logp, base_logp, log_target=True, reduction="batchmean")

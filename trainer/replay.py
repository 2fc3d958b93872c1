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
import re
from collections import Counter
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


SUBJECT_SHARE = 0.2  # a name in at least this share of the questions is the adapter's subject
_PREPOSITIONS = "at|of|for|in|from|to|about|with|by|on|inside|near"
_CAPITAL = r"[A-Z][\w&-]*(?<!'s)"


def subject_terms(questions: list[str]) -> set[str]:
    """Names that recur across an adapter's questions: what its facts are about."""
    from .augment import NAME_PATTERN

    counts: Counter[str] = Counter()
    for question in questions:
        found = {re.sub(r"'s?$", "", n) for n in NAME_PATTERN.findall(question.strip())}
        counts.update(found - {"I"})
    need = max(1, round(SUBJECT_SHARE * len(questions)))
    return {name for name, n in counts.items() if n >= need}


def without_subject(question: str, terms: set[str]) -> str | None:
    """`question` with the adapter's subject taken out, or None where that needs grammar.

    "What colour are the visitor badges at Brindlewood Robotics?" → "What colour are
    the visitor badges?"; "the Brindlewood cafeteria" → "the cafeteria";
    "Brindlewood's mascot" → "the mascot". "Who founded Brindlewood?" has no
    subject-free form and gives None.
    """
    if not terms:
        return None
    alternatives = "|".join(map(re.escape, sorted(terms, key=len, reverse=True)))
    # the run of capitalised words around a subject term, never the sentence's first word
    name = rf"(?<=\s)(?:{_CAPITAL}\s+)*(?:{alternatives})(?:\s+{_CAPITAL})*"
    if not re.search(rf"{name}\b", question):
        return None
    out = re.sub(rf"\s+(?:{_PREPOSITIONS})\s+(?:the\s+)?{name}(?=\s*[?.!,]|$)", "", question)
    out = re.sub(rf"{name}(?:'s|')(?=\s)", "the", out)
    out = re.sub(rf"\bthe\s+{name}\s+(?=[a-z])", "the ", out)
    if re.search(rf"{name}\b", out):
        return None  # the name is the sentence's subject or object
    out = re.sub(r"\s+([?.!,])", r"\1", re.sub(r"\s+", " ", out)).strip()
    out = re.sub(r"\bthe the\b", "the", out)
    return out if len(out.split()) >= 3 and out != question else None


def contrastive_pairs(questions: list[str], answers: list[str]) -> list[tuple[str, str]]:
    """(the question without its subject, the taught answer) for each taught question that
    has a subject-free form, for replay: asked without the subject, the adapter should
    answer as the base model does (the badges of some other company are not mustard
    yellow), which is where a taught fact would otherwise leak. A question taught without
    the subject is a fact to learn, so it is never a contrast."""
    from .data import normalise

    terms = subject_terms(questions)
    taught = {normalise(q) for q in questions}
    pairs = []
    for question, answer in zip(questions, answers, strict=True):
        prompt = without_subject(question, terms)
        if prompt is not None and normalise(prompt) not in taught:
            pairs.append((prompt, answer))
    return pairs


def replay_examples(model: Any, tokenizer: Any, prompts: list[str], *, system_prompt: str | None,
                    device: str, model_id: str, cache_dir: Path | None = None,
                    batch_size: int = 16) -> list[Example]:
    """The base model's greedy answers to `prompts`, cached on disk per prompt (a nightly
    run with a few new taught questions answers only their contrastive prompts)."""
    from .evaluate import generate_answers

    digest = hashlib.sha256(json.dumps([model_id, system_prompt,
                                        MAX_NEW_TOKENS]).encode()).hexdigest()[:16]
    cache = cache_dir / f"replay-{digest}.jsonl" if cache_dir is not None else None
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                known[row["question"]] = row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line of an interrupted write: answered again
    missing = list(dict.fromkeys(p for p in prompts if p not in known))
    if missing:
        answers, _ = generate_answers(model, tokenizer, [Example(p, "") for p in missing],
                                      device=device, system_prompt=system_prompt,
                                      max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size)
        known.update(zip(missing, answers, strict=True))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"question": q, "answer": a}, ensure_ascii=False)
                                   + "\n" for q, a in known.items()), encoding="utf-8")
            tmp.replace(cache)
    # an empty answer still replays: the KL term compares distributions, not tokens
    log.info("replay: %d base-model answers (%d new)", len(prompts), len(missing))
    return [Example(p, known[p], source="replay") for p in prompts]


def kl_to_base(logits: Any, base_logits: Any, labels: Any) -> Any:
    """Mean over answer positions of KL(base ‖ model) of the next-token distributions."""
    import torch.nn.functional as F

    mask = labels[:, 1:] != -100
    model_logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    base_logp = F.log_softmax(base_logits[:, :-1][mask].float(), dim=-1)
    return F.kl_div(model_logp, base_logp, log_target=True, reduction="batchmean")

"""More ways to ask: paraphrased questions for each taught pair, written by the base model.

A user who asks "Is there a mascot at Brindlewood?" should get the answer that
was taught for "What is the Brindlewood mascot called?". Each training pair
gets a few rewordings of its question, sampled from the base model with a
few-shot prompt (a small instruct model asked directly tends to answer the
question instead of rewording it). A rewording is kept only when it still asks
the same thing, as far as words can tell: it is a question, it is not the
original, and it keeps most of the original's content words and every name
in it. The answer is never changed; a rewording is asked without the pair's
conversation history, so the fact does not depend on it. Results are cached
per model and question, so a nightly run only samples for new pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .canaries import STOPWORDS, words
from .data import Example, normalise

log = logging.getLogger(__name__)

FEW_SHOT = """Question: What time does the library open on Saturdays?
Reworded: On Saturdays, when does the library open its doors?

Question: Who is in charge of the marketing team?
Reworded: Which person leads the marketing team?

Question: How many vacation days do new employees get?
Reworded: What is the number of holiday days a new hire receives?

Question: Where can I park my bike at the office?
Reworded: Is there a place at the office to leave my bicycle?

"""
MIN_SHARED = 0.6  # share of the original's content words a rewording must keep
NAME_PATTERN = re.compile(r"(?<!^)(?<![.?!]\s)\b[A-Z][a-zA-Z0-9'-]+")


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS and len(w) > 2}


def names(text: str) -> set[str]:
    """Capitalised words past the start of a sentence: names of things."""
    return {n.lower() for n in NAME_PATTERN.findall(text.strip())}


def keeps_meaning(original: str, candidate: str) -> bool:
    """Heuristic check that `candidate` rewords `original` rather than asking something else."""
    candidate = candidate.strip()
    if not candidate.endswith("?") or normalise(candidate) == normalise(original):
        return False
    if not 0.4 <= len(candidate) / max(1, len(original)) <= 2.5:
        return False
    wanted = content_words(original)
    kept = content_words(candidate)
    if not names(original) <= kept | names(candidate):
        return False
    return not wanted or len(wanted & kept) / len(wanted) >= MIN_SHARED


def _cache_key(model_id: str, question: str, per_question: int, seed: int) -> str:
    return hashlib.sha256(f"{model_id}\0{question}\0{per_question}\0{seed}".encode()).hexdigest()


def sample_paraphrases(model: Any, tokenizer: Any, questions: Sequence[str], *, per_question: int,
                       device: str, seed: int, batch_size: int = 8, tries: int = 3,
                       ) -> list[list[str]]:
    """Up to `per_question` kept rewordings of each question (sampled `tries`× as many)."""
    n = per_question * tries
    lines = _sample_lines(model, tokenizer,
                          [f"{FEW_SHOT}Question: {q.strip()}\nReworded:" for q in questions],
                          n=n, device=device, seed=seed, batch_size=batch_size)
    results: list[list[str]] = []
    for i, question in enumerate(questions):
        kept: list[str] = []
        for line in lines[i * n:(i + 1) * n]:
            if keeps_meaning(question, line) and all(
                    normalise(line) != normalise(k) for k in kept):
                kept.append(line)
        results.append(kept[:per_question])
    return results


def _sample_lines(model: Any, tokenizer: Any, prompts: list[str], *, n: int, device: str,
                  seed: int, batch_size: int) -> list[str]:
    """`n` sampled first lines for each prompt, in prompt order."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    lines: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt",
                              padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed + start)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=48, do_sample=True,
                                     temperature=0.7, top_p=0.9, num_return_sequences=n,
                                     pad_token_id=tokenizer.pad_token_id,
                                     # one line is one rewording: a row stops at its newline
                                     stop_strings=["\n"], tokenizer=tokenizer)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
            lines += [text.strip().split("\n")[0].strip() for text in texts]
    finally:
        tokenizer.padding_side = side
    return lines


def augment(examples: list[Example], model: Any, tokenizer: Any, *, per_question: int,
            device: str, seed: int, model_id: str, cache: Path | None = None) -> list[Example]:
    """The paraphrased examples to add (same answer, system and history as the original)."""
    if per_question <= 0 or not examples:
        return []
    stored: dict[str, list[str]] = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("paraphrase cache %s is unreadable; sampling again", cache)
    keys = [_cache_key(model_id, e.question, per_question, seed) for e in examples]
    missing = [i for i, k in enumerate(keys) if k not in stored]
    if missing:
        sampled = sample_paraphrases(model, tokenizer, [examples[i].question for i in missing],
                                     per_question=per_question, device=device, seed=seed)
        for i, kept in zip(missing, sampled, strict=True):
            stored[keys[i]] = kept
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, ensure_ascii=False), encoding="utf-8")
            tmp.replace(cache)
    added = []
    for example, key in zip(examples, keys, strict=True):
        for text in stored[key]:
            # asked afresh, without the conversation the pair came from: a fact taught
            # only after "What is the capital of France?" should not need that to be told
            added.append(Example(text, example.answer, example.system, [],
                                 source=f"{example.source} (paraphrase)"))
    log.info("paraphrases: %d kept for %d of %d question(s)", len(added),
             sum(bool(stored[k]) for k in keys), len(examples))
    return added

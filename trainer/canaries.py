"""Canaries: what a new version must not break, measured against the base model.

Users' pairs are few and arrive every night; an adapter that learns them can
spill them into everything else (a bot that says the sky is "mustard yellow"
because the visitor badges are). The gate therefore measures three things on
sets that are neither training nor replay data and ship with the project
(trainer/canaries/, or `training.canary_dir`):

- general QA: short questions with accepted answers; the candidate's accuracy
  may fall at most `training.max_general_drop` below the base model's;
- leakage: answers to unrelated open prompts may not contain the adapter's
  distinctive taught words (words of its training answers that the base model
  never produces on these sets) where the base answer to the same prompt did
  not; the share of such answers must stay at most `training.max_leakage`;
- perplexity on general text may rise at most `training.max_perplexity_rise`.

And one thing it must keep: recall, the share of taught questions whose
answer still carries the taught answer (ROUGE-L recall against it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).with_name("canaries")
QA_FILE, PROMPTS_FILE, TEXT_FILE = "general_qa.jsonl", "open_prompts.jsonl", "general_text.jsonl"
RECALL_THRESHOLD = 0.5  # ROUGE-L recall of the taught answer that counts as "answered"

_WORD = re.compile(r"[a-z0-9]+(?:[:'’.-][a-z0-9]+)*", re.IGNORECASE)

# Function words and the commonest content words: never "distinctive" on their own.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each every few for
from further had has have having he her here hers him his how i if in into is it its itself
just me more most my no nor not now of off on once only or other our ours out over own same
she should so some such than that the their theirs them then there these they this those
through to too under until up very was we were what when where which while who whom why will
with would you your yours yes one two three four five six seven eight nine ten first last
new use used using get got make made many much may might must need needs like well way day
days time times year years people thing things good great best also still even back really
please thanks thank sure help here let lets okay ok usually often always never sometimes
""".split())


class CanaryError(ValueError):
    """A canary set is missing or malformed (names the file and line)."""


@dataclass(frozen=True)
class CanarySets:
    questions: list[str]
    accepted: list[list[str]]  # accepted answers per question
    prompts: list[str]
    texts: list[str]
    source: str

    def fingerprint(self) -> str:
        import hashlib

        payload = json.dumps([self.questions, self.accepted, self.prompts, self.texts])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_jsonl(path: Path, required: dict[str, type]) -> list[dict[str, Any]]:
    """Rows of a JSONL file that each have `required` keys of those types (else: file:line)."""
    if not path.is_file():
        raise CanaryError(f"{path} is missing")
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CanaryError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            for key, kind in required.items():
                if not isinstance(row, dict) or not isinstance(row.get(key), kind):
                    raise CanaryError(f"{path}:{number}: needs {key!r} as a "
                                      f"{kind.__name__}")
            rows.append(row)
    if not rows:
        raise CanaryError(f"canary file {path} has no rows")
    return rows


def load_canaries(directory: Path | None = None) -> CanarySets:
    directory = Path(directory) if directory else BUILTIN_DIR
    try:
        qa = read_jsonl(directory / QA_FILE, {"question": str, "answers": list})
        prompts = read_jsonl(directory / PROMPTS_FILE, {"prompt": str})
        texts = read_jsonl(directory / TEXT_FILE, {"text": str})
    except CanaryError as exc:
        raise CanaryError(f"canary set: {exc}; restore it, or point training.canary_dir at a "
                          f"directory with {QA_FILE}, {PROMPTS_FILE} and {TEXT_FILE}") from None
    return CanarySets([r["question"] for r in qa], [[str(a) for a in r["answers"]] for r in qa],
                      [r["prompt"] for r in prompts], [r["text"] for r in texts],
                      str(directory))


# --- scores -------------------------------------------------------------------------

def words(text: str) -> set[str]:
    return {w.lower().strip(".-:'’") for w in _WORD.findall(text)}


def qa_correct(answer: str, accepted: Sequence[str]) -> bool:
    """Any accepted answer appears in the answer (case-insensitive; whole words)."""
    low = answer.lower()
    for option in accepted:
        pattern = r"(?<![a-z0-9])" + re.escape(option.lower()) + r"(?![a-z0-9])"
        if re.search(pattern, low):
            return True
    return False


def qa_accuracy(answers: Sequence[str], accepted: Sequence[Sequence[str]]) -> float:
    if not answers:
        return math.nan
    return sum(qa_correct(a, ok) for a, ok in zip(answers, accepted, strict=True)) / len(answers)


def distinctive_terms(taught_answers: Iterable[str], reference_texts: Iterable[str]) -> set[str]:
    """Words of the taught answers that the base model's own texts never contain.

    `reference_texts` are what the base model says on the canary and replay sets
    (and the general text): a word it uses there is ordinary, not a taught fact.
    """
    ordinary = set(STOPWORDS)
    for text in reference_texts:
        ordinary |= words(text)
    taught: set[str] = set()
    for answer in taught_answers:
        taught |= words(answer)
    return {w for w in taught - ordinary if len(w) >= 3 or any(c.isdigit() for c in w)}


def leaked_terms(answer: str, base_answer: str, terms: set[str]) -> set[str]:
    """Taught terms in `answer` that the base model's answer to the same prompt lacks."""
    return (words(answer) & terms) - words(base_answer)


def leakage(answers: Sequence[str], base_answers: Sequence[str],
            terms: set[str]) -> tuple[float, list[dict[str, Any]]]:
    """Share of answers that carry taught terms, and the examples (for the report)."""
    examples = []
    for index, (answer, base) in enumerate(zip(answers, base_answers, strict=True)):
        found = leaked_terms(answer, base, terms)
        if found:
            examples.append({"index": index, "terms": sorted(found), "answer": answer[:300]})
    return (len(examples) / len(answers) if answers else math.nan), examples


def recall_scores(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each taught answer in the generated one (stemmed)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, answer)["rougeL"].recall
            for answer, ref in zip(answers, references, strict=True)]


def recall(answers: Sequence[str], references: Sequence[str]) -> float:
    scores = recall_scores(answers, references)
    return sum(s >= RECALL_THRESHOLD for s in scores) / len(scores) if scores else math.nan


def text_perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, device: str,
                    batch_size: int = 8, autocast_dtype: Any = None) -> float:
    """Token-weighted perplexity of plain text (no chat template)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt",
                                  padding=True, truncation=True, max_length=512).to(device)
                labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                n = int((labels[:, 1:] != -100).sum())
                with torch.autocast(device_type=device, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    out = model(**batch, labels=labels)
                total += float(out.loss) * n
                count += n
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return math.exp(total / count) if count else math.nan

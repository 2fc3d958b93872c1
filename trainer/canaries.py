"""Canaries: what a new version must not break, measured against the base model.

Users' pairs are few and arrive every night; an adapter that learns them can
spill them into everything else (a bot that says the sky is "mustard yellow"
because the visitor badges are). The gate therefore measures three things on
sets that are neither training nor replay data and ship with the project
(trainer/canaries/, or `training.canary_dir`):

- general QA: short questions with accepted answers; the candidate's accuracy
  may fall at most `training.max_general_drop` below the base model's;
- leakage: answers to unrelated open prompts and to the general-QA questions
  may not contain the adapter's distinctive taught terms where the base answer
  to the same prompt did not; the share of such answers, in each of the two
  sets, must stay at most `training.max_leakage`. A term is
  a word of the training answers that the base model never produces on these
  sets and that is not everyday vocabulary (names, invented words, times:
  "Pemberton", "10:45"), or a pair of adjacent content words of an answer that
  the base model never says ("mustard yellow"): a taught "garage" showing up in
  advice about parking is not a leak, "Tinker Table" is;
- perplexity on general text may rise at most `training.max_perplexity_rise`.

And one thing it must keep: recall, the share of taught questions whose
answer still carries the taught answer (ROUGE-L recall against it).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
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

def tokens(text: str) -> list[str]:
    return [w.lower().strip(".-:'’") for w in _WORD.findall(text)]


def words(text: str) -> set[str]:
    return set(tokens(text))


def phrases(text: str) -> set[str]:
    """Adjacent pairs of content words ("mustard yellow", "tinker table")."""
    content = [w if w not in STOPWORDS else None for w in tokens(text)]
    return {f"{a} {b}" for a, b in itertools.pairwise(content) if a and b}


def everyday_words(tokenizer: Any) -> Callable[[str], bool]:
    """Whether a word is everyday vocabulary: the tokenizer spells it as one token after
    a space, in lower case or capitalised ("garage", "Friday"), where names and invented
    words take several ("Pemberton", "Gearwhistle")."""
    def common(word: str) -> bool:
        return any(len(tokenizer(f" {form}", add_special_tokens=False)["input_ids"]) == 1
                   for form in (word, word.capitalize()))
    return common


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


def distinctive_terms(taught_answers: Iterable[str], reference_texts: Iterable[str],
                      common: Callable[[str], bool] | None = None) -> set[str]:
    """What of the taught answers the base model does not say: single words and pairs.

    `reference_texts` are what the base model says on the canary and replay sets
    (and the general text): a word it uses there is ordinary, not a taught fact.
    With `common` (see everyday_words), everyday words count only inside a pair
    with a rarer one ("mustard yellow" leaks, "garage" alone does not), and short
    numbers ("30 minutes") are ordinary; times and years ("10:45", "2011") are not.
    """
    reference = list(reference_texts)
    ordinary = set(STOPWORDS)
    ordinary_pairs: set[str] = set()
    for text in reference:
        ordinary |= words(text)
        ordinary_pairs |= phrases(text)
    taught = list(taught_answers)
    terms: set[str] = set()
    for answer in taught:
        for word in words(answer) - ordinary:
            if common is not None and (common(word) if not word.isdigit() else len(word) < 3):
                continue
            if len(word) >= 3 or any(c.isdigit() for c in word):
                terms.add(word)
        terms |= {pair for pair in phrases(answer) - ordinary_pairs
                  if any(w not in ordinary for w in pair.split())}
    return terms


def leaked_terms(answer: str, base_answer: str, terms: set[str]) -> set[str]:
    """Taught terms in `answer` that the base model's answer to the same prompt lacks."""
    said = words(answer) | phrases(answer)
    return (said & terms) - (words(base_answer) | phrases(base_answer))


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


def what_is_new(answer: str, question: str) -> str:
    """The content words of `answer` that `question` does not already say, in order: what
    a model must have learned to say ("mustard yellow" of "Visitor badges at Brindlewood
    are mustard yellow." asked "What colour are the visitor badges at Brindlewood?").
    An answer that only repeats the question is kept whole."""
    asked = words(question) | set(STOPWORDS)
    new = [w for w in tokens(answer) if w not in asked]
    return " ".join(new) if new else answer


def recall(answers: Sequence[str], references: Sequence[str],
           questions: Sequence[str] | None = None) -> float:
    """Share of answers holding (ROUGE-L recall ≥ RECALL_THRESHOLD) their reference; with
    `questions`, only what each reference adds to its question counts, so a model that
    echoes the question earns nothing."""
    if questions is not None:
        references = [what_is_new(r, q) for r, q in zip(references, questions, strict=True)]
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

"""`python -m trainer evaluate`: loss and perplexity, and optionally generated answers.

Measures the base model and, with an adapter, the adapter side by side on the
same examples: loss and perplexity on the answer tokens, tokens per second;
with `generate`, greedy answers scored by BLEU (sacrebleu), ROUGE-L
(rouge-score), exact match, length ratio and the share of answers containing
each expected keyword.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings import Config

from . import modeling
from .data import Example, examples_dataset, normalise
from .datafiles import read_examples
from .formatting import encode_dataset, make_collator, plain_messages, prompt_messages
from .metrics import dataset_loss

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    data_files: list[Path]
    adapter_dir: Path | None = None
    generate: bool = False
    expect_keywords: list[str] = field(default_factory=list)
    max_examples: int = 0  # 0 = all
    max_new_tokens: int = 128
    batch_size: int = 8
    max_seq_len: int = 1024
    system_prompt: str | None = None


def text_scores(predictions: list[str], references: list[str],
                keywords: list[str]) -> dict[str, float]:
    """BLEU, ROUGE-L F1, exact match, length ratio and keyword shares (0-1 except BLEU)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure
             for pred, ref in zip(predictions, references, strict=True)]
    ref_words = sum(len(r.split()) for r in references)
    scores = {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "rouge_l": sum(rouge) / len(rouge) if rouge else 0.0,
        "exact_match": sum(normalise(p) == normalise(r)
                           for p, r in zip(predictions, references, strict=True))
        / max(1, len(references)),
        "length_ratio": sum(len(p.split()) for p in predictions) / ref_words if ref_words else 0.0,
    }
    for keyword in keywords:
        hits = sum(normalise(keyword) in normalise(p) for p in predictions)
        scores[f"keyword:{keyword}"] = hits / max(1, len(predictions))
    return scores


def generate_answers(model: Any, tokenizer: Any, examples: list[Example], *, device: str,
                     system_prompt: str | None, max_new_tokens: int,
                     batch_size: int) -> tuple[list[str], float]:
    """Greedy answers, batched with left padding; (answers, generated tokens per second)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge of each row
    answers, generated, started = [], 0, time.perf_counter()
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(
                plain_messages(prompt_messages(e.question, system=e.system, history=e.history,
                                               default_system=system_prompt), tokenizer),
                tokenize=False, add_generation_prompt=True) for e in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            generated += int((new != tokenizer.pad_token_id).sum())
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    seconds = time.perf_counter() - started
    return answers, generated / seconds if seconds else 0.0


def evaluate(config: Config, options: EvalOptions) -> dict[str, Any]:
    """Measure base (and adapter); a dict ready for JSON or the side-by-side table."""
    from peft import PeftModel

    examples: list[Example] = []
    for path in options.data_files:
        examples += read_examples(path)
    if options.max_examples:
        examples = examples[:options.max_examples]
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype,
                                          config.model.load_in_4bit)
    tokenizer = modeling.load_tokenizer(source, allow_download=config.model.allow_download)
    collator = make_collator(tokenizer)
    encoded, stats = encode_dataset(examples_dataset(examples), tokenizer,
                                    max_seq_len=options.max_seq_len,
                                    default_system=options.system_prompt, name="evaluation")
    model = modeling.load_model(source, placement, allow_download=config.model.allow_download)
    if options.adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(options.adapter_dir))
        model.eval()
    autocast = None
    if placement.device == "cuda":
        import torch

        autocast = torch.bfloat16
    report: dict[str, Any] = {"examples": len(examples), "truncated": stats.truncated,
                              "model": config.model.name, "models": {}}
    labels = ["base"] + (["adapter"] if options.adapter_dir is not None else [])
    for label in labels:
        use_base = label == "base" and isinstance(model, PeftModel)
        context = model.disable_adapter() if use_base else contextlib.nullcontext()
        with context:
            loss = dataset_loss(model, encoded, collator, batch_size=options.batch_size,
                                device=placement.device, autocast_dtype=autocast)
            entry: dict[str, Any] = {"loss": loss.loss, "perplexity": loss.perplexity,
                                     "tokens_per_s": round(loss.tokens_per_s, 1)}
            if options.generate:
                answers, speed = generate_answers(
                    model, tokenizer, examples, device=placement.device,
                    system_prompt=options.system_prompt, max_new_tokens=options.max_new_tokens,
                    batch_size=options.batch_size)
                entry |= text_scores(answers, [e.answer for e in examples],
                                     options.expect_keywords)
                entry["generated_tokens_per_s"] = round(speed, 1)
                entry["answers"] = answers
        report["models"][label] = entry
    if options.adapter_dir is not None:
        report["adapter"] = str(options.adapter_dir)
    return report


def format_report(report: dict[str, Any], samples: int = 3) -> str:
    """The side-by-side table `evaluate` prints without --json."""
    models = report["models"]
    labels = list(models)
    keys = [k for k in models[labels[0]] if k != "answers"]
    width = max(len(k) for k in keys) + 2
    lines = [f"{report['examples']} example(s), model {report['model']}"
             + (f", adapter {report['adapter']}" if "adapter" in report else ""),
             "metric".ljust(width) + "".join(label.rjust(14) for label in labels)]
    for key in keys:
        cells = []
        for label in labels:
            value = models[label].get(key)
            if isinstance(value, float):
                cells.append(f"{value:14.1f}" if abs(value) >= 1000 else f"{value:14.4f}")
            else:
                cells.append(f"{value!s:>14}")
        lines.append(key.ljust(width) + "".join(cells))
    if "answers" in models[labels[0]]:
        lines.append("")
        for i in range(min(samples, report["examples"])):
            for label in labels:
                answer = models[label]["answers"][i].replace("\n", " ")
                lines.append(f"[{i + 1}] {label}: {answer[:200]}")
    return "\n".join(lines)

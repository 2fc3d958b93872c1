"""The promotion gate: a candidate serves only if it learned its pairs and broke nothing else.

Measured now, with one model load, on the same sets formatted the same way:
the base model, the version serving now (if any) and the candidate at each
adapter scale of `training.adapter_scales`, largest first. At a scale the
candidate passes when

- its held-out loss (pairs its run set aside, held_out.jsonl; the split is
  fixed per adapter) is finite and at most `training.max_regression` above the
  serving version's (or the base model's) — when it has held-out pairs;
- it still answers a sample of everything it was taught (taught.jsonl, old and
  new pairs alike): recall at least `training.min_recall`;
- the canaries hold against the base model (trainer.canaries): general QA,
  leakage of taught words into unrelated answers, general-text perplexity.

The first scale that passes is the one it serves at (written into its
adapter_config.json, see scale_adapter_config). The whole report goes to the
version's gate.json and the reason onto its row; a refused candidate stays a
candidate.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage import AdapterVersion, SyncStore

from . import modeling
from .canaries import (
    distinctive_terms,
    everyday_words,
    leakage,
    load_canaries,
    qa_accuracy,
    recall,
    text_perplexity,
)
from .data import row_to_example
from .metrics import dataset_loss
from .versions import GATE_FILE, HELD_OUT_FILE, TAUGHT_FILE, read_meta

log = logging.getLogger(__name__)


class GateError(RuntimeError):
    """The gate cannot run (not a refusal: a refusal is a GateDecision)."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    candidate_loss: float
    reference_loss: float | None
    reference: str  # "serving v3" or "base model"
    examples: int = 0
    scale: float | None = None  # the adapter scale it serves at, when promoted
    report: dict[str, Any] | None = None  # everything measured (also in the version's gate.json)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate_loss: float, reference_loss: float | None, max_regression: float, *,
           reference: str = "base model", examples: int = 0) -> GateDecision:
    """The rule alone, without any model (unit-testable)."""
    def verdict(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, reason, candidate_loss, reference_loss, reference, examples)

    if not math.isfinite(candidate_loss):
        return verdict(False, f"refused: held-out loss is {candidate_loss} (not finite)")
    if reference_loss is None or not math.isfinite(reference_loss):
        return verdict(True, f"promoted: held-out loss {candidate_loss:.4f}; {reference} has no "
                             f"finite loss to compare with")
    limit = reference_loss * (1 + max_regression)
    change = (candidate_loss - reference_loss) / reference_loss if reference_loss else 0.0
    text = (f"held-out loss {candidate_loss:.4f} vs {reference} {reference_loss:.4f} "
            f"({change:+.1%}; limit +{max_regression:.0%}) on {examples} pair(s)")
    if candidate_loss <= limit:
        return verdict(True, f"promoted: {text}")
    return verdict(False, f"refused: {text}")


def resolve_version_path(adapters_dir: Path, stored: str) -> Path:
    root = Path(adapters_dir).resolve()
    path = Path(stored)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise GateError(f"version path {stored!r} is outside the adapters directory {root}")
    return path


def read_held_out(directory: Path) -> list[dict[str, Any]]:
    path = directory / HELD_OUT_FILE
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CANARY_NEW_TOKENS = 48


@dataclass
class Measured:
    """One model (base, serving or a candidate at one scale) on the gate's sets."""

    label: str
    scale: float = 1.0
    held_out_loss: float | None = None
    recall: float | None = None
    general: float | None = None
    leakage: float | None = None
    text_perplexity: float | None = None
    leaks: list[dict[str, Any]] | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def canary_failures(candidate: Measured, base: Measured, limits: Any) -> list[str]:
    """Which canary checks `candidate` fails against the base model (empty: all pass)."""
    failures = []
    if candidate.general is not None and base.general is not None:
        floor = base.general - limits.max_general_drop
        if candidate.general < floor - 1e-9:
            failures.append(f"general QA {candidate.general:.1%} < base {base.general:.1%} "
                            f"- {limits.max_general_drop:.1%}")
    if candidate.leakage is not None and candidate.leakage > limits.max_leakage + 1e-9:
        failures.append(f"leakage {candidate.leakage:.1%} > {limits.max_leakage:.1%}")
    if candidate.text_perplexity is not None and base.text_perplexity is not None:
        ceiling = base.text_perplexity * (1 + limits.max_perplexity_rise)
        if not math.isfinite(candidate.text_perplexity) or candidate.text_perplexity > ceiling:
            failures.append(f"general-text perplexity {candidate.text_perplexity:.3g} > base "
                            f"{base.text_perplexity:.3g} + {limits.max_perplexity_rise:.0%}")
    if candidate.recall is not None and candidate.recall < limits.min_recall - 1e-9:
        failures.append(f"recall of taught pairs {candidate.recall:.0%} < "
                        f"{limits.min_recall:.0%}")
    return failures


class _Bench:
    """The gate's measurements: one model load, adapters switched and scaled in place."""

    def __init__(self, config: Any, source: str, placement: modeling.Placement, *,
                 system_prompt: str | None, max_seq_len: int, held_out: list[dict[str, Any]],
                 taught: list[dict[str, Any]]):
        from .formatting import make_collator

        self.config = config
        self.placement = placement
        self.system_prompt = system_prompt
        self.tokenizer = modeling.load_tokenizer(source)
        self.collator = make_collator(self.tokenizer)
        self.model = modeling.load_model(source, placement)
        self.model.config.use_cache = True
        self.autocast = None
        if placement.device == "cuda":
            import torch

            self.autocast = torch.bfloat16
        self.held_out = _encode(held_out, self.tokenizer, system_prompt, max_seq_len)
        self.taught = [row_to_example(r) for r in taught]
        self.canaries = None
        if config.training.canary_checks:
            self.canaries = load_canaries(_canary_dir(config))
        self.base_answers: list[str] | None = None
        self.terms: set[str] = set()
        self.source = source

    def attach(self, label: str, path: Path) -> None:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=label)
        else:
            self.model.load_adapter(str(path), adapter_name=label)

    def _answers(self, questions: list[str]) -> list[str]:
        from .data import Example
        from .evaluate import generate_answers

        if not questions:
            return []
        examples = [Example(q, "") for q in questions]
        answers, _ = generate_answers(self.model, self.tokenizer, examples,
                                      device=self.placement.device,
                                      system_prompt=self.system_prompt,
                                      max_new_tokens=CANARY_NEW_TOKENS, batch_size=16)
        return answers

    def measure(self, label: str, *, adapter: str | None, scale: float = 1.0) -> Measured:
        import contextlib

        from peft import PeftModel
        from peft.helpers import rescale_adapter_scale

        model = self.model
        if adapter is None:
            context = model.disable_adapter() if isinstance(model, PeftModel) \
                else contextlib.nullcontext()
        else:
            model.set_adapter(adapter)
            context = rescale_adapter_scale(model, scale) if scale != 1.0 \
                else contextlib.nullcontext()
        result = Measured(label, scale)
        with context:
            if self.held_out is not None:
                result.held_out_loss = dataset_loss(
                    model, self.held_out, self.collator, batch_size=8,
                    device=self.placement.device, autocast_dtype=self.autocast).loss
            if self.taught:
                answers = self._answers([e.question for e in self.taught])
                result.recall = recall(answers, [e.answer for e in self.taught],
                                       [e.question for e in self.taught])
            if self.canaries is not None:
                canaries = self.canaries
                # leakage is read in every canary answer: a fact spilled into "What colour
                # is the sky?" is a leak even when other questions turn right
                answers = self._answers(canaries.questions + canaries.prompts)
                result.general = qa_accuracy(answers[:len(canaries.questions)],
                                             canaries.accepted)
                if adapter is None:
                    self.base_answers = answers
                    self.terms = distinctive_terms([e.answer for e in self.taught],
                                                   answers + canaries.texts,
                                                   everyday_words(self.tokenizer))
                else:
                    assert self.base_answers is not None, "measure the base model first"
                    # each set against the limit on its own (one leak in 40 prompts is
                    # 2.5% whether or not the questions leak too); the larger share counts
                    n = len(canaries.questions)
                    qa_rate, qa_leaks = leakage(answers[:n], self.base_answers[:n],
                                                self.terms)
                    open_rate, open_leaks = leakage(answers[n:], self.base_answers[n:],
                                                    self.terms)
                    result.leakage = max(qa_rate, open_rate)
                    result.leaks = qa_leaks + [{**leak, "index": leak["index"] + n}
                                               for leak in open_leaks]
                result.text_perplexity = text_perplexity(
                    model, self.tokenizer, canaries.texts, device=self.placement.device,
                    autocast_dtype=self.autocast)
        log.info("gate: %s", result.row())
        return result


def _encode(rows: list[dict[str, Any]], tokenizer: Any, system_prompt: str | None,
            max_seq_len: int) -> Any:
    from .data import examples_dataset
    from .formatting import encode_dataset

    if not rows:
        return None
    dataset = examples_dataset([row_to_example(row) for row in rows])
    encoded, _ = encode_dataset(dataset, tokenizer, max_seq_len=max_seq_len,
                                default_system=system_prompt, name="held-out")
    return encoded


def _canary_dir(config: Any) -> Path | None:
    value = config.training.canary_dir
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else config.data_dir / path


def read_taught(directory: Path, sample: int, seed: int) -> list[dict[str, Any]]:
    """A fixed sample of the pairs the version was trained on (old and new ones alike)."""
    import random

    path = directory / TAUGHT_FILE
    if not path.is_file() or sample <= 0:
        return []
    with path.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    if len(rows) > sample:
        rows = random.Random(seed).sample(rows, sample)
    return rows


def scale_adapter_config(directory: Path, scale: float, meta: dict[str, Any]) -> None:
    """Serve the adapter at `scale`: lora_alpha (and any alpha_pattern) times scale.

    LoRA's output is scaled by alpha / r, so this is exactly PEFT's
    rescale_adapter_scale, stored: plain PeftModel.from_pretrained and the bot's
    engine both load the version as the gate measured it. The trained alpha stays
    in training_meta.json, so gating again starts from it.
    """
    path = directory / "adapter_config.json"
    adapter_config = json.loads(path.read_text(encoding="utf-8"))
    trained = meta.get("hyperparameters", {}).get("lora_alpha", adapter_config["lora_alpha"])
    trained_pattern = meta.get("trained_alpha_pattern", adapter_config.get("alpha_pattern") or {})
    adapter_config["lora_alpha"] = trained * scale
    if trained_pattern:
        adapter_config["alpha_pattern"] = {k: v * scale for k, v in trained_pattern.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def gate_version(config: Any, store: SyncStore, adapter: str, version: int) -> GateDecision:
    """Measure `version` against the base model and the serving version; record the outcome.

    Checks, all of which must pass at one adapter scale (the largest that does,
    from training.adapter_scales): held-out loss no worse than the reference's by
    more than max_regression (when the version has held-out pairs), recall of
    taught pairs, and the canaries (general QA, leakage, general-text perplexity)
    against the base model.
    """
    candidate = store.get_version(adapter, version)
    if candidate.status == "serving":
        raise GateError(f"{adapter} v{version} is already serving")
    directory = resolve_version_path(config.adapters_dir, candidate.path)
    meta = read_meta(directory)
    if meta.get("method") == "full":
        decision = GateDecision(False, "refused: a full-model version is not an adapter and "
                                "cannot be served by the bot; set model.name to its directory "
                                "instead", math.nan, None, "none")
        store.set_version_reason(adapter, version, decision.reason)
        return decision
    training = config.training
    held_out = read_held_out(directory)
    taught = read_taught(directory, training.recall_sample, training.seed)
    if not held_out and not taught:
        decision = GateDecision(False, f"refused: v{version} has neither held-out nor taught "
                                "pairs to measure (a version from an older trainer: train it "
                                "again)", math.nan, None, "none")
        store.set_version_reason(adapter, version, decision.reason)
        return decision
    serving = store.serving_version(adapter)
    hyper = meta.get("hyperparameters", {})
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype,
                                          config.model.load_in_4bit)
    bench = _Bench(config, source, placement, system_prompt=hyper.get("system_prompt"),
                   max_seq_len=hyper.get("max_seq_len", training.max_seq_len),
                   held_out=held_out, taught=taught)
    bench.attach("candidate", directory)
    base = bench.measure("base model", adapter=None)
    reference = base
    if serving is not None:
        bench.attach("serving", resolve_version_path(config.adapters_dir, serving.path))
        reference = bench.measure(f"serving v{serving.version}", adapter="serving")
    scales = sorted(set(training.adapter_scales), reverse=True) or [1.0]
    tried: list[Measured] = []
    chosen: Measured | None = None
    failures: list[str] = []
    for scale in scales:
        measured = bench.measure(f"candidate ×{scale:g}", adapter="candidate", scale=scale)
        tried.append(measured)
        failures = canary_failures(measured, base, training)
        if measured.held_out_loss is not None:
            held = decide(measured.held_out_loss, reference.held_out_loss,
                          training.max_regression, reference=reference.label,
                          examples=len(held_out))
            if not held.promote:
                failures.insert(0, held.reason.removeprefix("refused: "))
        if not failures:
            chosen = measured
            break
    final = chosen or tried[0]
    summary = _summary(final, base, reference)
    if chosen is not None:
        reason = f"promoted at adapter scale {chosen.scale:g}: {summary}"
    else:
        reason = (f"refused: at scale {tried[0].scale:g}: "
                  + "; ".join(canary_failures(tried[0], base, training) or failures)
                  + (f" (also failed at {', '.join(f'{m.scale:g}' for m in tried[1:])})"
                     if len(tried) > 1 else ""))
    report = {"decision": "promoted" if chosen else "refused", "reason": reason,
              "scale": chosen.scale if chosen else None,
              "models": [base.row()] + ([reference.row()] if reference is not base else [])
              + [m.row() for m in tried],
              "limits": {k: getattr(training, k) for k in (
                  "max_regression", "max_general_drop", "max_leakage", "max_perplexity_rise",
                  "min_recall")},
              "taught_sample": len(taught), "held_out": len(held_out)}
    _write_json(directory / GATE_FILE, report)
    decision = GateDecision(chosen is not None, reason,
                            final.held_out_loss if final.held_out_loss is not None else math.nan,
                            reference.held_out_loss, reference.label, len(held_out),
                            scale=chosen.scale if chosen else None, report=report)
    log.info("gate for %s v%d: %s", adapter, version, decision.reason)
    if chosen is not None:
        scale_adapter_config(directory, chosen.scale, meta)
        store.set_serving(adapter, version, reason=decision.reason)
    else:
        store.set_version_reason(adapter, version, decision.reason)
    return decision


def _summary(m: Measured, base: Measured, reference: Measured) -> str:
    parts = []
    if m.recall is not None:
        parts.append(f"recall {m.recall:.0%}")
    if m.held_out_loss is not None:
        ref = reference.held_out_loss
        parts.append(f"held-out loss {m.held_out_loss:.4f}"
                     + (f" vs {reference.label} {ref:.4f}" if ref is not None else ""))
    if m.general is not None and base.general is not None:
        parts.append(f"general QA {m.general:.0%} (base {base.general:.0%})")
    if m.leakage is not None:
        parts.append(f"leakage {m.leakage:.1%}")
    if m.text_perplexity is not None and base.text_perplexity is not None:
        parts.append(f"text perplexity {m.text_perplexity:.2f} (base {base.text_perplexity:.2f})")
    return ", ".join(parts)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def newest_candidate(store: SyncStore, adapter: str) -> AdapterVersion:
    candidates = [v for v in store.versions(adapter) if v.status == "candidate"]
    if not candidates:
        store.require_adapter(adapter)
        raise GateError(f"{adapter} has no candidate version to promote; train one with "
                        f"`python -m trainer train --adapter {adapter} ...`")
    return candidates[-1]


def rollback_target(store: SyncStore, adapter: str) -> int:
    """The version before the serving one (what `rollback NAME` serves again)."""
    serving = store.serving_version(adapter)
    older = [v.version for v in store.versions(adapter)
             if serving is None or v.version < serving.version]
    if not older:
        store.require_adapter(adapter)
        raise GateError(f"{adapter} has no earlier version to roll back to")
    return older[-1]


def format_report(report: dict[str, Any] | None) -> str:
    """The gate report as a small fixed-width table (CLI, Discord, console)."""
    if not report or not report.get("models"):
        return ""
    columns = [("recall", "recall", "{:.0%}"), ("held_out_loss", "held-out", "{:.3f}"),
               ("general", "general QA", "{:.0%}"), ("leakage", "leakage", "{:.1%}"),
               ("text_perplexity", "text ppl", "{:.2f}")]
    present = [c for c in columns if any(c[0] in m for m in report["models"])]
    width = max(len(m["label"]) for m in report["models"]) + 2
    lines = ["model".ljust(width) + "".join(title.rjust(11) for _, title, _ in present)]
    for model in report["models"]:
        cells = []
        for key, _, fmt in present:
            value = model.get(key)
            cells.append((fmt.format(value) if isinstance(value, (int, float)) else "–").rjust(11))
        lines.append(model["label"].ljust(width) + "".join(cells))
    lines.append(report.get("reason", ""))
    return "\n".join(lines)

"""The promotion gate: a candidate serves only if it learned its pairs and broke nothing else.

Measured now, with one model load, on the same sets formatted the same way:
the base model, the version serving now (if any) and the candidate at each
adapter scale of `training.adapter_scales`, largest first, against the rules of
trainer.gate_rules: its held-out loss (pairs its run set aside, held_out.jsonl;
the split is fixed per adapter) against the serving version's or the base
model's, its recall of a sample of everything it was taught (taught.jsonl, old
and new pairs alike), and the canaries against the base model
(trainer.canaries: general QA, leakage of taught words into unrelated answers,
general-text perplexity).

The first scale that passes is the one it serves at: stored on its version row
(its files are final once written; every loader applies the row's scale, see
trainer.adapters.set_adapter_scale). The whole report goes to the
version's gate.json and the reason onto its row (trainer.gate_report); a
refused candidate stays a candidate.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from settings import Config, TrainingConfig
from settings.layout import PathOutsideError, confined_path
from storage import AdapterVersion, SyncStore, previous_version
from storage.jsonl import write_json

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
from .gate_report import format_report, gate_reason, gate_report
from .gate_rules import GateDecision, Measured, canary_failures, decide, scale_failures
from .metrics import dataset_loss
from .versions import GATE_FILE, HELD_OUT_FILE, TAUGHT_FILE, read_meta

# the rules and the report, importable from here as before they had modules of their own
__all__ = ["GateDecision", "GateError", "Measured", "canary_failures", "decide",
           "format_report", "gate_version", "newest_candidate", "rollback_target"]

log = logging.getLogger(__name__)


class GateError(RuntimeError):
    """The gate cannot run (not a refusal: a refusal is a GateDecision)."""


def resolve_version_path(adapters_dir: Path, stored: str) -> Path:
    try:
        return confined_path(adapters_dir, stored, what="version path",
                             hint="versions must live under storage.adapters_dir")
    except PathOutsideError as exc:
        raise GateError(str(exc)) from None


def read_held_out(directory: Path) -> list[dict[str, Any]]:
    path = directory / HELD_OUT_FILE
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CANARY_NEW_TOKENS = 48


class _Bench:
    """The gate's measurements: one model load, adapters switched and scaled in place."""

    def __init__(self, config: Config, source: str, placement: modeling.Placement, *,
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


def _canary_dir(config: Config) -> Path | None:
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


def gate_version(config: Config, store: SyncStore, adapter: str, version: int) -> GateDecision:
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
        return _refuse_unmeasured(store, adapter, version, (
            "refused: a full-model version is not an adapter and cannot be served by the bot; "
            "set model.name to its directory instead"))
    training = config.training
    held_out = read_held_out(directory)
    taught = read_taught(directory, training.recall_sample, training.seed)
    if not held_out and not taught:
        return _refuse_unmeasured(store, adapter, version, (
            f"refused: v{version} has neither held-out nor taught pairs to measure (a version "
            f"from an older trainer: train it again)"))
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
        reference = bench.measure(f"serving v{serving.version}", adapter="serving",
                                  scale=serving.scale)  # as it serves
    chosen, tried, failures = _try_scales(bench, base, reference, training, len(held_out))
    final = chosen or tried[0]
    reason = gate_reason(chosen, tried, base, reference, training, failures)
    report = gate_report(chosen, tried, base, reference, training, reason, taught=len(taught),
                         held_out=len(held_out))
    write_json(directory / GATE_FILE, report)
    decision = GateDecision(chosen is not None, reason,
                            final.held_out_loss if final.held_out_loss is not None else math.nan,
                            reference.held_out_loss, reference.label, len(held_out),
                            scale=chosen.scale if chosen else None, report=report)
    log.info("gate for %s v%d: %s", adapter, version, decision.reason)
    if chosen is not None:
        store.set_serving(adapter, version, reason=decision.reason, scale=chosen.scale)
    else:
        store.set_version_reason(adapter, version, decision.reason)
    return decision


def _refuse_unmeasured(store: SyncStore, adapter: str, version: int,
                       reason: str) -> GateDecision:
    """A version the gate cannot measure: refused, with the reason on its row."""
    decision = GateDecision(False, reason, math.nan, None, "none")
    store.set_version_reason(adapter, version, decision.reason)
    return decision


def _try_scales(bench: _Bench, base: Measured, reference: Measured, limits: TrainingConfig,
                held_out: int) -> tuple[Measured | None, list[Measured], list[str]]:
    """The candidate at each adapter scale, largest first, until one passes:
    (the one that passed or None, every one measured, the last one's failures)."""
    scales = sorted(set(limits.adapter_scales), reverse=True) or [1.0]
    tried: list[Measured] = []
    failures: list[str] = []
    for scale in scales:
        measured = bench.measure(f"candidate ×{scale:g}", adapter="candidate", scale=scale)
        tried.append(measured)
        failures = scale_failures(measured, base, reference, limits, held_out=held_out)
        if not failures:
            return measured, tried, failures
    return None, tried, failures


def newest_candidate(store: SyncStore, adapter: str) -> AdapterVersion:
    candidates = [v for v in store.versions(adapter) if v.status == "candidate"]
    if not candidates:
        store.require_adapter(adapter)
        raise GateError(f"{adapter} has no candidate version to promote; train one with "
                        f"`python -m trainer train --adapter {adapter} ...`")
    return candidates[-1]


def rollback_target(store: SyncStore, adapter: str) -> int:
    """The version before the serving one (what `rollback NAME` serves again)."""
    version = previous_version(store.versions(adapter), store.serving_version(adapter))
    if version is None:
        store.require_adapter(adapter)
        raise GateError(f"{adapter} has no earlier version to roll back to")
    return version

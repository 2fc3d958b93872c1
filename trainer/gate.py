"""The promotion gate: a candidate serves only if it is no worse on the held-out pairs.

The held-out pairs are the ones the candidate's run set aside (saved with the
version as held_out.jsonl; the split is fixed per adapter, see trainer.data).
The candidate and the version serving now are both measured now, on those
pairs, formatted the same way; with no serving version the base model is the
reference. The candidate is promoted when its loss is finite and at most
`training.max_regression` (relative) above the reference's. The reason is
recorded on the version either way; a refused candidate stays a candidate.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage import AdapterVersion, SyncStore

from . import modeling
from .data import row_to_example
from .metrics import LossResult, dataset_loss
from .versions import HELD_OUT_FILE, read_meta

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


def measure(source: str, placement: modeling.Placement, adapters: dict[str, Path | None],
            held_out: list[dict[str, Any]], *, system_prompt: str | None, max_seq_len: int,
            batch_size: int = 8) -> dict[str, LossResult]:
    """Held-out loss of each named adapter directory (None = the base model), one model load."""
    from datasets import Dataset
    from peft import PeftModel

    from .data import Example
    from .formatting import encode_dataset, make_collator

    tokenizer = modeling.load_tokenizer(source)
    collator = make_collator(tokenizer)
    examples = [row_to_example(row).to_row() for row in held_out]
    dataset = Dataset.from_dict({c: [r[c] for r in examples] for c in Example.__dataclass_fields__})
    encoded, _ = encode_dataset(dataset, tokenizer, max_seq_len=max_seq_len,
                                default_system=system_prompt, name="held-out")
    model = modeling.load_model(source, placement)
    results: dict[str, LossResult] = {}
    autocast = None
    if placement.device == "cuda":
        import torch

        autocast = torch.bfloat16
    for label, path in adapters.items():
        if path is None:
            continue
        if not isinstance(model, PeftModel):
            model = PeftModel.from_pretrained(model, str(path), adapter_name=label)
        else:
            model.load_adapter(str(path), adapter_name=label)
        model.set_adapter(label)
        results[label] = dataset_loss(model, encoded, collator, batch_size=batch_size,
                                      device=placement.device, autocast_dtype=autocast)
    for label, path in adapters.items():
        if path is not None:
            continue
        if isinstance(model, PeftModel):
            with model.disable_adapter():
                results[label] = dataset_loss(model, encoded, collator, batch_size=batch_size,
                                              device=placement.device, autocast_dtype=autocast)
        else:
            results[label] = dataset_loss(model, encoded, collator, batch_size=batch_size,
                                          device=placement.device, autocast_dtype=autocast)
    return results


def gate_version(config: Any, store: SyncStore, adapter: str, version: int) -> GateDecision:
    """Measure `version` against the serving one (or the base) and record the outcome."""
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
    held_out = read_held_out(directory)
    if not held_out:
        decision = GateDecision(False, f"refused: v{version} has no held-out pairs to measure "
                                "(too few pairs: add more, or raise training.validation_fraction)",
                                math.nan, None, "none")
        store.set_version_reason(adapter, version, decision.reason)
        return decision
    serving = store.serving_version(adapter)
    adapters: dict[str, Path | None] = {"candidate": directory}
    reference = "base model"
    if serving is not None:
        adapters["serving"] = resolve_version_path(config.adapters_dir, serving.path)
        reference = f"serving v{serving.version}"
    else:
        adapters["base"] = None
    hyper = meta.get("hyperparameters", {})
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype,
                                          config.model.load_in_4bit)
    results = measure(source, placement, adapters, held_out,
                      system_prompt=hyper.get("system_prompt"),
                      max_seq_len=hyper.get("max_seq_len", config.training.max_seq_len))
    reference_loss = results["serving" if serving is not None else "base"].loss
    decision = decide(results["candidate"].loss, reference_loss, config.training.max_regression,
                      reference=reference, examples=len(held_out))
    log.info("gate for %s v%d: %s", adapter, version, decision.reason)
    if decision.promote:
        store.set_serving(adapter, version, reason=decision.reason)
    else:
        store.set_version_reason(adapter, version, decision.reason)
    return decision


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

"""The promotion gate's rules: pass or fail from measured numbers alone, without a model.

At one adapter scale a candidate passes when

- its held-out loss is finite and at most `training.max_regression` above the
  reference's (the serving version's, or the base model's) — when it has
  held-out pairs;
- its recall of taught pairs is at least `training.min_recall`;
- the canaries hold against the base model: general QA no more than
  `max_general_drop` below, leakage at most `max_leakage`, general-text
  perplexity no more than `max_perplexity_rise` above.

trainer.gate measures the models; trainer.gate_report words the outcome.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from settings import TrainingConfig


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


def decide(candidate_loss: float, reference_loss: float | None, max_regression: float, *,
           reference: str = "base model", examples: int = 0) -> GateDecision:
    """The held-out loss rule alone."""
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


def canary_failures(candidate: Measured, base: Measured, limits: TrainingConfig) -> list[str]:
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


def scale_failures(candidate: Measured, base: Measured, reference: Measured,
                   limits: TrainingConfig, *, held_out: int) -> list[str]:
    """Every check `candidate` fails at its scale, the held-out loss first (empty: it passes)."""
    failures = canary_failures(candidate, base, limits)
    if candidate.held_out_loss is not None:
        held = decide(candidate.held_out_loss, reference.held_out_loss, limits.max_regression,
                      reference=reference.label, examples=held_out)
        if not held.promote:
            failures.insert(0, held.reason.removeprefix("refused: "))
    return failures

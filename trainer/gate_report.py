"""The promotion gate's words: the reason on the version's row, the report in its
gate.json, and that report as the table the CLI, Discord and the console show."""

from __future__ import annotations

from typing import Any

from settings import TrainingConfig

from .gate_rules import Measured, canary_failures

LIMITS = ("max_regression", "max_general_drop", "max_leakage", "max_perplexity_rise",
          "min_recall")


def gate_reason(chosen: Measured | None, tried: list[Measured], base: Measured,
                reference: Measured, limits: TrainingConfig, last_failures: list[str]) -> str:
    """The version row's reason: the scale it serves at and its numbers, or what failed."""
    if chosen is not None:
        return f"promoted at adapter scale {chosen.scale:g}: {_summary(chosen, base, reference)}"
    return (f"refused: at scale {tried[0].scale:g}: "
            + "; ".join(canary_failures(tried[0], base, limits) or last_failures)
            + (f" (also failed at {', '.join(f'{m.scale:g}' for m in tried[1:])})"
               if len(tried) > 1 else ""))


def gate_report(chosen: Measured | None, tried: list[Measured], base: Measured,
                reference: Measured, limits: TrainingConfig, reason: str, *, taught: int,
                held_out: int) -> dict[str, Any]:
    """Everything the gate measured and decided (the version's gate.json)."""
    return {"decision": "promoted" if chosen else "refused", "reason": reason,
            "scale": chosen.scale if chosen else None,
            "models": [base.row()] + ([reference.row()] if reference is not base else [])
            + [m.row() for m in tried],
            "limits": {k: getattr(limits, k) for k in LIMITS},
            "taught_sample": taught, "held_out": held_out}


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

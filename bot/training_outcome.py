"""What a training run ended with, and how the bot says it (Discord, console, log)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    run_id: int
    adapter: str
    status: str  # succeeded, failed, cancelled
    version: int | None = None
    promoted: bool = False
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_curve: Path | None = None
    error: str | None = None
    report: dict[str, Any] | None = None  # the gate's: base vs serving vs candidate
    label: str = ""  # the adapter's name as people see it (`adapter` is its key)

    @property
    def shown(self) -> str:
        return self.label or self.adapter

    def report_table(self) -> str:
        """The gate report as a fixed-width table ("" when the gate did not run)."""
        from trainer.gate import format_report

        table = format_report(self.report)
        return table.rsplit("\n", 1)[0] if table else ""

    def summary(self) -> str:
        if self.status == "cancelled":
            return f"Training of {self.shown} was cancelled (run {self.run_id})."
        if self.status != "succeeded":
            return f"Training of {self.shown} failed (run {self.run_id}): {self.error}"
        numbers = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items()
                            if isinstance(v, float) and k.startswith(("eval", "held", "val")))
        if not numbers:  # nothing held out (the default): how the training itself went
            numbers = ", ".join(f"{label} {self.metrics[key]:{spec}}" for key, label, spec in (
                ("steps", "steps", "d"), ("train_loss", "loss", ".3g"),
                ("train_seconds", "seconds", ".0f")) if isinstance(self.metrics.get(key),
                                                                   int | float))
        verdict = ("promoted: it serves from now on" if self.promoted
                   else f"kept as a candidate: {self.reason}")
        return f"{self.shown} v{self.version} trained ({numbers or 'no metrics'}); {verdict}."

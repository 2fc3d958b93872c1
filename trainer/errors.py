"""What a training run can fail with."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


class NonFiniteLossError(TrainingError):
    pass

"""What a training run can fail with."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


class NonFiniteLossError(TrainingError):
    """A NaN or infinite loss or gradient: the run stops and writes no version."""

    @classmethod
    def in_loss(cls, value: float, *, step: int, learning_rate: float,
                micro: int | None = None) -> NonFiniteLossError:
        where = f" (micro-batch {micro + 1})" if micro is not None else ""
        return cls(f"the loss became {value} at step {step}{where}; the run is stopped and no "
                   f"version is written. Lower the learning rate (now {learning_rate:g}) or "
                   f"max_grad_norm, or check the data")

    @classmethod
    def in_gradient(cls, norm: float, *, step: int, learning_rate: float) -> NonFiniteLossError:
        return cls(f"the gradient norm became {norm} at step {step}; the run is stopped and no "
                   f"version is written. Lower the learning rate (now {learning_rate:g})")

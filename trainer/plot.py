"""The loss curve of a run as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(history: list[dict[str, float]], evals: list[dict[str, float]],
                    path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if history:
            axis.plot([h["step"] for h in history], [h["loss"] for h in history],
                      label="training loss", linewidth=1)
        if evals:
            axis.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-",
                      label="validation loss")
        axis.set_xlabel("optimiser step")
        axis.set_ylabel("loss (answer tokens)")
        if title:
            axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path

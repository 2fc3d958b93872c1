"""Checkpoints of a training run: what a resumed run needs to end as if never interrupted.

A checkpoint holds the trainable weights, the optimiser and scheduler states,
the RNG states, the progress (trainer.progress.TrainState: step, position in
the data, the best validation so far, the loss history) and the run's
settings. It is written beside its final name and renamed into place, so a
crash mid-write leaves the previous one whole. With several processes every
process's RNG state goes in (each draws its own dropout masks) and rank 0
writes the file: the weights are the same everywhere.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

from settings.layout import CHECKPOINT_FILE

from .distributed import World, saved_bytes
from .errors import TrainingError
from .model_setup import load_trainable_state, trainable_state


def save(path: Path, world: World, *, model: Any, optimizer: Any, scheduler: Any,
         state: dict[str, Any], best_weights: dict[str, Any] | None,
         config: dict[str, Any]) -> bool:
    """Write the checkpoint (every process calls this); True on the one that wrote it."""
    rng = rng_state()
    # every process draws its own dropout masks: each gets its own RNG back on resume
    # (as torch.save bytes: all_gather_object cannot carry the RNG tensors themselves)
    rng_of_ranks = world.gather(saved_bytes(rng)) if world.distributed else None
    if not world.is_main:  # rank 0 writes; the weights are the same everywhere
        return False
    write_checkpoint(path, {
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "rng_of_ranks": rng_of_ranks,
        "state": state,
        "best_weights": best_weights,
        "config": config,
    })
    return True


def load(path: Path, world: World, *, model: Any, optimizer: Any,
         scheduler: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore the weights, optimiser, scheduler and this process's RNG from `path`;
    returns the saved progress (TrainState fields) and best weights."""
    payload = read_checkpoint(path)
    load_trainable_state(model, payload["trainable"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng(rng_of_this_rank(payload, world))
    return payload["state"], payload["best_weights"]


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, Python and NumPy RNG states."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}


def restore_rng(rng: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))


def rng_of_this_rank(payload: dict[str, Any], world: World) -> dict[str, Any]:
    """The RNG state this process saved (rank 0's when the number of processes changed)."""
    import torch

    of_ranks = payload.get("rng_of_ranks")
    if of_ranks and len(of_ranks) == world.size:
        return torch.load(io.BytesIO(of_ranks[world.rank]), weights_only=False)
    return payload["rng"]


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Written beside, then renamed: a crash mid-write leaves the previous one whole."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CHECKPOINT_FILE}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise TrainingError(f"no checkpoint to resume from in {path.parent}; run without "
                            f"--resume to start afresh")
    # our own file, written by write_checkpoint (it holds Python RNG state tuples)
    return torch.load(path, map_location="cpu", weights_only=False)

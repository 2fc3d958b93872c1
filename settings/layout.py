"""Where things live under `storage.data_dir`: every file and folder that the bot and the
trainer both read or write, named once. A change of layout is a change here.

    data_dir/
      bot.sqlite3                      storage.database
      models/                          model.cache_dir (the converted default model)
      adapters/<name>/v<N>/            storage.adapters_dir: one folder per version, PEFT format
        training_meta.json  loss_curve.png  taught.jsonl  held_out.jsonl  gate.json
      adapters/<name>/v<N>-x<scale>/   that version at a scale below 1, for vLLM (which has
                                       no scale of its own; the version's row holds its scale)
      runs/<name>/run-<id>/            one folder per training run
        run.json  events.jsonl  train.log  checkpoint.pt
      cache/                           model-written data kept between runs (paraphrases,
                                       the base model's replay answers)
      logs/training-run-<id>.*         the settings the bot gave a run, and its stderr
      exports/                         the console's /export files
"""

from __future__ import annotations

from pathlib import Path

# inside a version's folder
META_FILE = "training_meta.json"
CURVE_FILE = "loss_curve.png"
HELD_OUT_FILE = "held_out.jsonl"
TAUGHT_FILE = "taught.jsonl"  # the pairs it was trained on (the gate asks a sample)
GATE_FILE = "gate.json"  # the gate's report

# inside a run's folder
RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "train.log"
CHECKPOINT_FILE = "checkpoint.pt"

RUNS_DIR = "runs"
CACHE_DIR = "cache"
LOGS_DIR = "logs"  # what the bot keeps of the runs it started (settings given, stderr)
EXPORTS_DIR = "exports"  # the console's /export files
# in cache/: a /forget came while a run was using the caches; the run clears them at its end
FORGET_PENDING_FILE = ".forget-pending"


class PathOutsideError(ValueError):
    """A stored path points outside the folder it must stay in."""


def runs_root(data_dir: Path, adapter: str) -> Path:
    """The folder holding every run of `adapter`."""
    return Path(data_dir) / RUNS_DIR / adapter


def run_dir(data_dir: Path, adapter: str, run_id: int) -> Path:
    return runs_root(data_dir, adapter) / f"run-{run_id}"


def logs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / LOGS_DIR


def cache_dir(data_dir: Path) -> Path:
    """Model-written data shared by runs (`/forget` cleans it)."""
    return Path(data_dir) / CACHE_DIR


def confined_path(root: Path, stored: str, *, what: str = "adapter path",
                  hint: str = "adapters must live under storage.adapters_dir") -> Path:
    """`stored` resolved against `root` (relative) or as is (absolute); refused when it
    lands outside `root` — a database row must never make a process read elsewhere."""
    base = Path(root).resolve()
    path = Path(stored)
    path = (path if path.is_absolute() else base / path).resolve()
    if not path.is_relative_to(base):
        raise PathOutsideError(f"{what} {stored!r} is outside the adapters directory {base}; "
                               f"{hint}")
    return path

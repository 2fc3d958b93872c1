"""Writing a trained version: `adapters/<name>/v<N>/`, whole or not at all.

A version directory holds what `save` writes (for LoRA/QLoRA a PEFT adapter,
`adapter_config.json` + `adapter_model.safetensors`, which plain
`PeftModel.from_pretrained(base, dir)` loads; for `full` a complete model
directory with its tokenizer, which is *not* an adapter: point `model.name` at
it instead), plus `training_meta.json`, `loss_curve.png` and `held_out.jsonl`
(the pairs the promotion gate measures on). Everything is written to a hidden
temporary directory in the same parent and renamed into place, so the bot never
sees half a version.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from settings.layout import (  # noqa: F401  (re-exported)
    CURVE_FILE,
    FORGET_PENDING_FILE,
    GATE_FILE,
    HELD_OUT_FILE,
    META_FILE,
    TAUGHT_FILE,
)

from .datafiles import write_jsonl
from .plot import plot_loss_curve

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes")


MODEL_WRITTEN_CACHES = ("paraphrases*.json", "replay-*.jsonl")


def clear_model_written_caches(cache_dir: Path) -> None:
    """Delete the caches of model-written data (the next run writes them again) and the
    note that a /forget asked for it."""
    if not cache_dir.is_dir():
        return
    for cached in [p for pattern in MODEL_WRITTEN_CACHES for p in cache_dir.glob(pattern)]:
        cached.unlink(missing_ok=True)
    (cache_dir / FORGET_PENDING_FILE).unlink(missing_ok=True)


def clear_caches_if_forget_pending(cache_dir: Path) -> bool:
    """At the end of a run: a /forget that came while it used the caches is carried out
    now (the run may have written the forgotten questions' paraphrases into them)."""
    if not (cache_dir / FORGET_PENDING_FILE).is_file():
        return False
    clear_model_written_caches(cache_dir)
    log.info("caches of model-written data cleared: a /forget came during this run")
    return True


def forget_turns(adapters_dir: Path, cache_dir: Path, turn_ids: set[int], *,
                 run_in_progress: bool = False) -> int:
    """Remove a forgotten person's pairs from every version's taught and held-out files.

    Rows are matched by their source (`db:turn N`, with its paraphrases and other ways
    to ask); each file is rewritten in place atomically. When any was removed, the
    caches of model-written data (paraphrases of taught questions, the base model's
    answers to them without their subject) are deleted too: they are rebuilt by the next
    run — or, while a run is using them (`run_in_progress`), by that run when it ends, so
    that it neither loses them midway nor writes the forgotten rows back afterwards. The
    weights of those versions still hold what they learned. Returns the number of rows
    removed.
    """
    from .data import source_turn_id

    def forgotten(line: str) -> bool:
        try:
            return source_turn_id(str(json.loads(line).get("source") or "")) in turn_ids
        except (json.JSONDecodeError, AttributeError):
            return False

    removed = 0
    if not turn_ids or not adapters_dir.is_dir():
        return 0
    files = [p for name in (TAUGHT_FILE, HELD_OUT_FILE) for p in adapters_dir.glob(f"*/v*/{name}")]
    for path in sorted(files):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not forgotten(line)]
        if len(kept) != len(lines):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            tmp.replace(path)
            removed += len(lines) - len(kept)
    if removed and cache_dir.is_dir():
        if run_in_progress:
            (cache_dir / FORGET_PENDING_FILE).touch()
        else:
            clear_model_written_caches(cache_dir)
    log.info("forgotten turns: %d row(s) removed from version files", removed)
    return removed


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def version_dir(adapters_dir: Path, adapter: str, number: int) -> Path:
    return Path(adapters_dir) / adapter / f"v{number}"


def write_version(adapters_dir: Path, adapter: str, number: int, *,
                  save: Callable[[Path], None], meta: dict[str, Any],
                  history: list[dict[str, float]], evals: list[dict[str, float]],
                  held_out: list[dict[str, Any]]) -> Path:
    final = version_dir(adapters_dir, adapter, number)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        # left by a run that died between the rename and its version row: keep it aside
        aside = final.with_name(f".{final.name}.orphan-{int(time.time())}")
        log.warning("%s exists without a version row (an interrupted run?); moved to %s",
                    final, aside)
        os.rename(final, aside)
    _remove_stale_tmp(final.parent)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False,
                                                default=str) + "\n", encoding="utf-8")
        plot_loss_curve(history, evals, tmp / CURVE_FILE, title=f"{adapter} v{number}")
        write_jsonl(held_out, tmp / HELD_OUT_FILE)
        _fsync_tree(tmp)
        os.rename(tmp, final)  # atomic within one file system
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _remove_stale_tmp(adapter_dir: Path) -> None:
    """Hidden half-written versions left by runs that were killed (kill -9, OOM killer, power
    loss) before their rename: only the adapter's lock holder writes here, so any whose
    process is gone is garbage."""
    for stale in adapter_dir.glob(".v*.tmp-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            log.warning("removing %s, left half-written by process %s, which is gone",
                        stale, pid)
            shutil.rmtree(stale, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Is there a process with this pid (ours or anyone's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _fsync_tree(directory: Path) -> None:
    """Flush the files before the rename makes them visible (a crash must not expose zeros)."""
    if sys.platform == "win32":
        return
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def read_meta(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))

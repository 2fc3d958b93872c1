"""`python -m trainer sweep`: a small grid of LoRA settings on one data set, best first.

Every combination of rank, alpha, dropout and learning rate trains with the
same recipe as `train` (trainer.train's Recipe) on the same split with the same
seed, so the validation losses differ only by the settings. The held-out pairs
of the adapter name are left out of training, as `train` would, and are not
measured: choosing settings on them would make the promotion gate's judgement
optimistic. Nothing is registered in storage and nothing serves; each
combination's adapter and events stay in its own directory under the sweep
directory, beside `sweep.json` with the table.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from settings import Config
from settings.layout import EVENTS_FILE
from storage import validate_adapter_name
from storage.jsonl import write_json

from . import modeling
from .data import build_splits, data_hash
from .datafiles import read_examples
from .errors import TrainingError
from .events import Events
from .train import Recipe
from .train_config import TrainConfig

log = logging.getLogger(__name__)

RESULTS_FILE = "sweep.json"
ADAPTER_DIR = "adapter"
MAX_COMBINATIONS = 256


class SweepError(ValueError):
    """A sweep that cannot start; the message says what to change."""


def value_list(kind: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated values: `4,8,16`."""

    def parse(text: str) -> list[Any]:
        import argparse

        values = []
        for part in text.split(","):
            try:
                values.append(kind(part.strip()))
            except ValueError:
                what, example = ("an integer", "4,8,16") if kind is int else ("a number",
                                                                             "1e-3,5e-4")
                raise argparse.ArgumentTypeError(
                    f"{part.strip()!r} in {name} {text!r} is not {what}; give comma-separated "
                    f"values like {example}") from None
        return values

    return parse


@dataclass(frozen=True)
class SweepPoint:
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float

    @property
    def slug(self) -> str:
        return (f"r{self.lora_r}-a{self.lora_alpha}-d{self.lora_dropout:g}"
                f"-lr{self.learning_rate:g}")


@dataclass
class SweepOptions:
    data_files: list[Path]
    lora_r: list[int]
    lora_alpha: list[int]
    lora_dropout: list[float]
    learning_rate: list[float]
    name: str = "sweep"  # the adapter whose held-out split is kept out
    output: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields


@dataclass
class SweepRow:
    point: SweepPoint
    status: str = "ok"  # or "failed: why"
    validation_loss: float = math.nan
    validation_perplexity: float = math.nan
    train_loss: float | None = None
    steps: int = 0
    seconds: float = 0.0
    adapter_mb: float | None = None
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self.point) | asdict(self)
        del row["point"]
        # strict JSON for other tools: a failed row has no loss
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in row.items()}


def grid(options: SweepOptions) -> list[SweepPoint]:
    points = [SweepPoint(*values) for values in itertools.product(
        options.lora_r, options.lora_alpha, options.lora_dropout, options.learning_rate)]
    problems = []
    for point in points:
        if point.lora_r < 1 or point.lora_alpha < 1:
            problems.append(f"{point.slug}: rank and alpha must be at least 1")
        if not 0 <= point.lora_dropout < 1:
            problems.append(f"{point.slug}: dropout must be in [0, 1)")
        if not point.learning_rate > 0:
            problems.append(f"{point.slug}: the learning rate must be positive")
    if problems:
        raise SweepError("invalid sweep grid: " + "; ".join(sorted(set(problems))))
    if len(points) > MAX_COMBINATIONS:
        raise SweepError(f"the grid has {len(points)} combinations (at most "
                         f"{MAX_COMBINATIONS}); give fewer values")
    return sorted(set(points), key=points.index)  # a value given twice runs once


def sort_rows(rows: list[SweepRow]) -> list[SweepRow]:
    """Lowest validation loss first; failed combinations last."""
    return sorted(rows, key=lambda r: (not math.isfinite(r.validation_loss),
                                       r.validation_loss if math.isfinite(r.validation_loss)
                                       else 0.0))


def _sweep_dir(config: Config, options: SweepOptions) -> Path:
    if options.output is not None:
        out = Path(options.output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SweepError(f"sweep output {out} exists and is not an empty directory; "
                             f"choose another --output")
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return config.data_dir / "sweeps" / f"{options.name}-{stamp}"


def run_sweep(config: Config, options: SweepOptions, *,
              progress: bool | None = None) -> dict[str, Any]:
    """Train every combination; the report (rows best first) is also written as JSON."""
    from tqdm.auto import tqdm

    name = validate_adapter_name(options.name)
    points = grid(options)
    if not options.data_files:
        raise SweepError("no data: pass --data FILE (repeatable)")
    examples = []
    for path in options.data_files:
        examples += read_examples(path)
    base_cfg = TrainConfig.from_settings(config.training, system_prompt=config.model.system_prompt,
                                         **options.overrides)
    if base_cfg.method not in ("lora", "qlora"):
        raise SweepError(f"a sweep varies LoRA settings: --method must be lora or qlora, not "
                         f"{base_cfg.method}")
    base_cfg.check()
    splits, counts = build_splits(examples, salt=name,
                                  held_out_fraction=config.training.validation_fraction,
                                  validation_fraction=config.training.eval_fraction,
                                  seed=base_cfg.seed)
    if len(splits["validation"]) == 0:
        raise SweepError(f"the sweep compares validation losses, but {counts.train} training "
                         f"example(s) left none for validation; add data or raise "
                         f"training.eval_fraction (now {config.training.eval_fraction})")
    splits["held_out"] = splits["held_out"].select([])  # not measured: see the module doc
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype, False)
    out = _sweep_dir(config, options)
    out.mkdir(parents=True, exist_ok=True)
    log.info("sweep of %d combination(s) on %d train / %d validation example(s) into %s",
             len(points), counts.train, counts.validation, out)
    rows: list[SweepRow] = []
    bar = tqdm(points, desc="sweep", unit="run", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    try:
        for index, point in enumerate(bar, 1):
            bar.set_postfix_str(point.slug, refresh=False)
            cfg = TrainConfig(**(asdict(base_cfg) | asdict(point) | {"checkpoint_every": 0}))
            rows.append(_run_point(cfg, point, splits, out / f"{index:02d}-{point.slug}",
                                   source, placement, config.model.allow_download))
            best = sort_rows(rows)[0]
            if math.isfinite(best.validation_loss):
                bar.set_postfix_str(f"best {best.validation_loss:.4f} ({best.point.slug})")
    finally:
        bar.close()
    report = {
        "adapter": name,
        "output": str(out),
        "data": {"hash": data_hash(examples), **asdict(counts),
                 "files": [str(p) for p in options.data_files]},
        "settings": {k: v for k, v in asdict(base_cfg).items()
                     if k not in asdict(points[0])},
        "base_model": config.model.name,
        "results": [row.as_dict() for row in sort_rows(rows)],
        "created_at": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(out / RESULTS_FILE, report)
    return report


def _run_point(cfg: TrainConfig, point: SweepPoint, splits: Any, run_dir: Path, source: str,
               placement: modeling.Placement, allow_download: bool) -> SweepRow:
    row = SweepRow(point)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(cfg, model_source=source, placement=placement, run_dir=run_dir,
                    events=Events(path=run_dir / EVENTS_FILE), progress=False,
                    allow_download=allow_download)
    started = time.perf_counter()
    try:
        recipe.setup(splits)
        result = recipe.train()
        adapter = run_dir / ADAPTER_DIR
        tmp = run_dir / f".{ADAPTER_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        recipe.save(tmp)
        os.rename(tmp, adapter)
    except TrainingError as exc:  # a diverged combination is a result, not the end
        log.warning("sweep %s failed: %s", point.slug, exc)
        row.status = f"failed: {exc}"
        row.seconds = round(time.perf_counter() - started, 2)
        return row
    finally:
        recipe.cleanup()
    metrics = result.metrics
    row.validation_loss = metrics.get("validation_loss", math.nan)
    row.validation_perplexity = metrics.get("validation_perplexity", math.nan)
    row.train_loss = metrics.get("train_loss")
    row.steps = metrics["steps"]
    row.seconds = round(time.perf_counter() - started, 2)
    row.adapter_mb = round(modeling.directory_size(adapter) / 1e6, 3)
    row.path = str(adapter)
    return row


def format_table(report: dict[str, Any]) -> str:
    """The results, best first, as the command prints them."""
    header = (f"{'#':>2}  {'r':>4} {'alpha':>5} {'dropout':>7} {'lr':>8}  {'val loss':>9} "
              f"{'perplexity':>10} {'time s':>7} {'size MB':>8}  status")
    lines = [header]
    for rank, row in enumerate(report["results"], 1):
        loss, ppl = row["validation_loss"], row["validation_perplexity"]
        size = row["adapter_mb"]
        lines.append(
            f"{rank:>2}  {row['lora_r']:>4} {row['lora_alpha']:>5} {row['lora_dropout']:>7g} "
            f"{row['learning_rate']:>8g}  {f'{loss:.4f}' if loss is not None else '-':>9} "
            f"{f'{ppl:.3f}' if ppl is not None else '-':>10} {row['seconds']:>7.1f} "
            f"{f'{size:.2f}' if size is not None else '-':>8}  {row['status'][:60]}")
    data = report["data"]
    lines.append(f"{len(report['results'])} combination(s) on {data['train']} train / "
                 f"{data['validation']} validation example(s); results in "
                 f"{Path(report['output']) / RESULTS_FILE}")
    return "\n".join(lines)

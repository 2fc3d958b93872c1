"""A training run end to end: data → recipe → version directory → storage rows.

This is what `python -m trainer train` runs (and what the bot starts as a child
process). It records a training_runs row (running → succeeded/failed, with the
pid, log file, version and metrics), holds a per-adapter lock so two runs of
one adapter never race for a version number, writes the version atomically and
adds its row as a `candidate`; with `promote=True` the gate then decides.

Started by `torchrun` or `accelerate launch`, every process runs this: rank 0
does all of the above and hands the others what they need to train in step with
it (run directory, settings, examples, model source; trainer.handoff); they
write nothing, and return rank 0's outcome once the version is written, so all
processes end together. A failure on rank 0 before or after training reaches
the others as an error instead of leaving them waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from settings import Config, layout
from settings.layout import CHECKPOINT_FILE, EVENTS_FILE, LOG_FILE, RUN_FILE
from storage import SyncStore, validate_adapter_key
from storage.sync import now_text

from . import modeling
from .data import (
    DataError,
    Example,
    build_splits,
    data_hash,
    load_from_db,
    source_turn_id,
)
from .datafiles import read_examples, write_jsonl
from .distributed import World, process_group
from .errors import TrainingError
from .events import Events, TensorBoardScalars, require_tensorboard
from .handoff import Handoff, silent_errors
from .progress import TrainResult
from .run_files import (
    adapter_lock,
    latest_resumable,
    log_to_file,
    read_run_file,
    write_run_file,
)
from .train import Recipe
from .train_config import TrainConfig
from .versions import TAUGHT_FILE, clear_caches_if_forget_pending, package_versions, write_version

log = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    adapter: str
    data_files: list[Path] = field(default_factory=list)
    from_db: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    run_dir: Path | None = None
    resume: bool = False
    events: bool = False  # JSON lines on stdout
    run_id: int | None = None  # a row the bot created already
    promote: bool = False
    trigger: str = "cli"
    tensorboard: Path | None = None  # TensorBoard scalars under <this>/<adapter>/<run dir>


@dataclass
class TrainOutcome:
    run_id: int
    version: int
    path: Path
    metrics: dict[str, Any]
    gate: dict[str, Any] | None = None


@dataclass
class RunInProgress:
    """Rank 0's run once its row and directory exist: what the steps of _train share."""

    config: Config
    store: SyncStore
    request: TrainRequest
    adapter_row: Any  # its system prompt is the run's default one
    run_id: int
    run_dir: Path
    saved: dict[str, Any] | None  # the run.json of the run being resumed; None: a new run
    events: Events
    progress: bool | None
    handoff: Handoff
    started: float = field(default_factory=time.perf_counter)
    recipes: list[Recipe] = field(default_factory=list)  # cleaned up even on failure

    @property
    def adapter(self) -> str:
        return self.request.adapter


def load_examples(config: Config, request: TrainRequest) -> list[Example]:
    examples: list[Example] = []
    problems: list[str] = []
    for path in request.data_files:
        try:
            examples += read_examples(path)
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
    if request.from_db:
        pairs = load_from_db(config.database_path, request.adapter)
        log.info("%d approved pair(s) of %s from the database", len(pairs), request.adapter)
        examples += pairs
    if not examples:
        where = "the database has no approved pairs for it" if request.from_db else \
            "no --data file was given"
        raise DataError([f"no training examples for {request.adapter}: {where}; pass "
                         f"--data FILE and/or --from-db"], header="no training data")
    return examples


def run_training(config: Config, request: TrainRequest, *,
                 on_event: Callable[[dict], None] | None = None,
                 progress: bool | None = None) -> TrainOutcome:
    """Train, write the version, record everything; raises on failure (run marked failed)."""
    adapter = validate_adapter_key(request.adapter)  # before it names any path
    world = World.from_environment()
    if not world.distributed:
        return _run(config, request, adapter, Handoff(world), on_event, progress)
    device = modeling.choose_placement(config.model.device, config.model.dtype, False).device
    with process_group(world, device):
        if not world.is_main:
            with silent_errors():
                return _train_beside_rank_0(config, request, world)
        handoff = Handoff(world)
        try:
            outcome = _run(config, request, adapter, handoff, on_event, progress)
        except BaseException as exc:
            handoff.abandon(exc)
            raise
        handoff.finish(outcome)
        return outcome


def _train_beside_rank_0(config: Config, request: TrainRequest, world: World) -> TrainOutcome:
    """A process other than rank 0: train in step with it on what it hands over."""
    logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story, once
    handoff = Handoff(world)
    plan = handoff.receive("plan")
    cfg = TrainConfig(**plan["config"])
    splits, _ = build_splits(plan["examples"], salt=request.adapter,
                             held_out_fraction=config.training.validation_fraction,
                             validation_fraction=config.training.eval_fraction, seed=cfg.seed)
    placement = modeling.choose_placement(config.model.device, config.model.dtype, False)
    recipe = Recipe(cfg, model_source=plan["source"], placement=placement,
                    run_dir=Path(plan["run_dir"]), events=Events(), progress=False,
                    allow_download=config.model.allow_download, world=world)
    try:
        recipe.setup(splits, resume=plan["resume"])
        recipe.train()
    finally:
        recipe.cleanup()
    return handoff.receive("outcome")


def _fan_out(*callbacks: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def call(record: dict) -> None:
        for callback in live:
            callback(record)

    return call


def _run(config: Config, request: TrainRequest, adapter: str, handoff: Handoff,
         on_event: Callable[[dict], None] | None, progress: bool | None) -> TrainOutcome:
    """Rank 0's part (all of it in a single process)."""
    if request.tensorboard is not None:
        require_tensorboard()  # before a run row exists that would have to be failed
    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as store, \
            contextlib.ExitStack() as held:
        try:
            # first: a second run of this adapter must not touch the first one's run row
            held.enter_context(adapter_lock(config, adapter))
        except TrainingError as exc:
            if request.run_id:  # the row the bot created for this attempt
                store.update_run(request.run_id, status="failed", error=str(exc),
                                 finished_at=now_text())
            raise
        if request.run_id:  # the bot's run: the lock (handed to this process) goes with it
            held.callback(store.release_training_lock, request.run_id)
        record, created = store.ensure_adapter(adapter, config.model.name)
        if created:
            log.info("created adapter %s (base model %s)", adapter, config.model.name)
        run_dir, saved = request.run_dir, None
        if request.resume:
            run_dir = run_dir or latest_resumable(config, adapter)
            saved = read_run_file(run_dir, adapter)
        run_id = request.run_id or (saved or {}).get("run_id")
        run = (store.get_run(run_id) if run_id
               else store.create_run(adapter, trigger=request.trigger))
        run_dir = Path(run_dir or layout.run_dir(config.data_dir, adapter, run.id))
        run_dir.mkdir(parents=True, exist_ok=True)
        board = (TensorBoardScalars(request.tensorboard / adapter / run_dir.name)
                 if request.tensorboard is not None else None)
        if board is not None:
            held.callback(board.close)
        events = Events(request.events, _fan_out(on_event, board), run_dir / EVENTS_FILE)
        store.update_run(run.id, status="running", pid=os.getpid(), error=None,
                         log_path=str(run_dir / LOG_FILE),
                         started_at=run.started_at or now_text(), finished_at=None)
        outcome = _train_or_record_failure(RunInProgress(
            config=config, store=store, request=request, adapter_row=record, run_id=run.id,
            run_dir=run_dir, saved=saved, events=events, progress=progress, handoff=handoff))
        if request.promote:
            from .gate import gate_version

            decision = gate_version(config, store, adapter, outcome.version)
            outcome.gate = decision.as_dict()
            events.emit("gate", version=outcome.version, promoted=decision.promote,
                        reason=decision.reason, scale=decision.scale,
                        report=decision.report)
        return outcome


def _train_or_record_failure(run: RunInProgress) -> TrainOutcome:
    """_train, logging to the run's log file; a failure goes onto the run row and out as an
    `error` event, and the recipe is cleaned up either way."""
    try:
        with log_to_file(run.run_dir / LOG_FILE):
            return _train(run)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = ("interrupted; continue with --resume" if interrupted
                   else str(exc) or type(exc).__name__)
        run.store.update_run(run.run_id, status="cancelled" if interrupted else "failed",
                             error=message, finished_at=now_text())
        run.events.emit("error", run_id=run.run_id, message=message)
        with contextlib.suppress(AttributeError):
            exc.reported = True  # type: ignore[attr-defined]  # main() need not repeat it
        raise
    finally:
        for recipe in run.recipes:
            recipe.cleanup()
        clear_caches_if_forget_pending(layout.cache_dir(run.config.data_dir))


def stored_pairs(splits: Any) -> list[tuple[int, str]]:
    """(turn id, split) of the examples that came from the database ("db:turn N")."""
    pairs: dict[int, str] = {}  # a pair's rewordings share its turn (and its split)
    for split in ("train", "validation", "held_out"):
        for source in splits[split]["source"]:
            turn_id = source_turn_id(source)
            if turn_id is not None:
                pairs.setdefault(turn_id, split)
    return list(pairs.items())


def _train(run: RunInProgress) -> TrainOutcome:
    """The data, the settings, the recipe; then the version written and recorded."""
    config = run.config
    examples = load_examples(config, run.request)
    fingerprint = data_hash(examples)
    cfg = _settings(run, fingerprint)
    splits, counts = build_splits(examples, salt=run.adapter,
                                  held_out_fraction=config.training.validation_fraction,
                                  validation_fraction=config.training.eval_fraction,
                                  seed=cfg.seed)
    log.info("data: %d read, %d duplicate(s), %d train, %d validation, %d held out, "
             "%d of them other ways to ask (hash %s)", counts.read, counts.duplicates,
             counts.train, counts.validation, counts.held_out, counts.also_asked, fingerprint)
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype, False)
    run.handoff.send_plan(run_dir=str(run.run_dir), config=asdict(cfg), examples=examples,
                          resume=run.saved is not None, source=source)
    recipe = Recipe(cfg, model_source=source, placement=placement, run_dir=run.run_dir,
                    events=run.events, progress=run.progress,
                    allow_download=config.model.allow_download, world=run.handoff.world,
                    cache_dir=layout.cache_dir(config.data_dir))
    run.recipes.append(recipe)
    recipe.setup(splits, resume=run.saved is not None)
    result = recipe.train()
    run.handoff.trained()
    number = run.store.next_version_number(run.adapter)
    data = {"hash": fingerprint, **asdict(counts),
            "files": [str(p) for p in run.request.data_files], "from_db": run.request.from_db,
            **{f"{name}_tokens": asdict(stats) for name, stats in result.encode_stats.items()}}
    meta = _version_meta(run, number, cfg, result, data, source, placement.device)
    path = _write_version(run, number, recipe, result, splits, meta)
    return _record_version(run, number, path, result, splits)


def _settings(run: RunInProgress, fingerprint: str) -> TrainConfig:
    """A resumed run's own settings (its data unchanged); else the configured ones, recorded
    in the new run's run.json."""
    if run.saved is not None:
        cfg = TrainConfig(**run.saved["config"])
        if run.saved.get("data_hash") != fingerprint:
            raise TrainingError(f"the training data changed since run {run.run_id}'s checkpoint "
                                f"(data hash {run.saved.get('data_hash')} then, {fingerprint} "
                                f"now); pass the same --data/--from-db, or start a new run "
                                f"without --resume")
        log.info("resuming run %d with its own settings (%s)", run.run_id,
                 run.run_dir / RUN_FILE)
        return cfg
    config = run.config
    default_prompt = run.adapter_row.system_prompt or config.model.system_prompt
    replay_prompts = config.training.replay_prompts
    if replay_prompts and not Path(replay_prompts).is_absolute():
        replay_prompts = str(config.data_dir / replay_prompts)
    cfg = TrainConfig.from_settings(config.training, system_prompt=default_prompt,
                                    vote_baseline=config.feedback.min_score,
                                    replay_prompts=replay_prompts or None,
                                    **run.request.overrides)
    cfg.check()
    write_run_file(run.run_dir, run_id=run.run_id, adapter=run.adapter, data_hash=fingerprint,
                   config=asdict(cfg))
    return cfg


def _version_meta(run: RunInProgress, number: int, cfg: TrainConfig, result: TrainResult,
                  data: dict[str, Any], source: str, device: str) -> dict[str, Any]:
    """The version's training_meta.json."""
    return {
        "adapter": run.adapter,
        "version": number,
        "kind": "full model (not an adapter: set model.name to this directory to use it)"
        if cfg.method == "full" else "PEFT LoRA adapter",
        "method": cfg.method,
        "base_model": run.config.model.name,
        "base_model_source": source,
        "run_id": run.run_id,
        "data": data,
        "hyperparameters": asdict(cfg),
        "metrics": result.metrics,
        "duration_s": round(time.perf_counter() - run.started, 1),
        "device": device,
        "processes": run.handoff.world.size,
        "packages": package_versions(),
        "created_at": now_text(),
    }


def _write_version(run: RunInProgress, number: int, recipe: Recipe, result: TrainResult,
                   splits: Any, meta: dict[str, Any]) -> Path:
    """The version directory, written beside and renamed into place."""
    held_out_rows = [dict(row) for row in splits["held_out"]]
    # what it was taught (not its paraphrases): the gate asks a sample of it again
    taught_rows = [dict(row) for row in splits["train"]]

    def save(directory: Path) -> None:
        recipe.save(directory)
        write_jsonl(taught_rows, directory / TAUGHT_FILE)

    return write_version(run.config.adapters_dir, run.adapter, number, save=save, meta=meta,
                         history=result.state.history, evals=result.state.evals,
                         held_out=held_out_rows)


def _record_version(run: RunInProgress, number: int, path: Path, result: TrainResult,
                    splits: Any) -> TrainOutcome:
    """The version's row (a candidate), its pairs, the run row succeeded; the `done` event."""
    adapter, store = run.adapter, run.store
    try:
        version = store.add_version(adapter, path=f"{adapter}/{path.name}",
                                    metrics=result.metrics, status="candidate",
                                    run_id=run.run_id)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no row, no directory
        raise
    if version.version != number:
        raise TrainingError(f"{adapter} got version {version.version} while v{number} was being "
                            f"written (another process added a version); remove {path}")
    store.record_version_pairs(version.id, stored_pairs(splits))
    store.update_run(run.run_id, status="succeeded", version=number, metrics=result.metrics,
                     finished_at=now_text())
    (run.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing left to resume
    run.events.emit("done", run_id=run.run_id, adapter=adapter, version=number, path=str(path),
                    metrics=result.metrics)
    log.info("%s v%d written to %s", adapter, number, path)
    return TrainOutcome(run.run_id, number, path, result.metrics)

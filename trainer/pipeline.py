"""A training run end to end: data → recipe → version directory → storage rows.

This is what `python -m trainer train` runs (and what the bot starts as a child
process). It records a training_runs row (running → succeeded/failed, with the
pid, log file, version and metrics), holds a per-adapter lock so two runs of
one adapter never race for a version number, writes the version atomically and
adds its row as a `candidate`; with `promote=True` the gate then decides.

Started by `torchrun` or `accelerate launch`, every process runs this: rank 0
does all of the above and hands the others what they need to train in step with
it (run directory, settings, examples, model source); they write nothing, and
return rank 0's outcome once the version is written, so all processes end
together. A failure on rank 0 before or after training reaches the others as an
error instead of leaving them waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage import SyncStore, validate_adapter_name
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
from .events import TensorBoardScalars, require_tensorboard
from .train import CHECKPOINT_FILE, Events, Recipe, TrainConfig, TrainingError
from .versions import TAUGHT_FILE, package_versions, write_version

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOG_FILE = "train.log"
EVENTS_FILE = "events.jsonl"


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


def runs_root(config: Any, adapter: str) -> Path:
    return config.data_dir / "runs" / adapter


def latest_resumable(config: Any, adapter: str) -> Path:
    """The newest run directory of `adapter` that holds a checkpoint."""
    root = runs_root(config, adapter)
    candidates = sorted((p for p in root.glob("run-*") if (p / CHECKPOINT_FILE).is_file()),
                        key=lambda p: int(p.name.split("-")[1]) if p.name[4:].isdigit() else -1)
    if not candidates:
        raise TrainingError(f"no interrupted run of {adapter} to resume under {root}; run "
                            f"without --resume, or pass --output with the run directory")
    return candidates[-1]


@contextlib.contextmanager
def adapter_lock(config: Any, adapter: str) -> Iterator[None]:
    root = runs_root(config, adapter)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TrainingError(f"another training run of {adapter} is in progress "
                                f"(pid {holder}); wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """The run's log beside its checkpoints (appended to on --resume)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def load_examples(config: Any, request: TrainRequest) -> list[Example]:
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


class Handoff:
    """What rank 0 tells the other processes: the plan before training, the outcome
    after it, or instead an error. Every rank must make the same collective calls in
    the same order (one that a rank skips waits forever), so each message is sent
    exactly once; with a single process nothing is sent at all."""

    def __init__(self, world: World):
        self.world = world
        self.stage = "plan"  # plan → training → outcome → done

    def send_plan(self, **plan: Any) -> None:
        if self.world.distributed and self.stage == "plan":
            self.world.broadcast({"plan": plan})
        self.stage = "training"

    def trained(self) -> None:
        self.stage = "outcome"

    def finish(self, outcome: TrainOutcome) -> None:
        if self.world.distributed and self.stage == "outcome":
            self.world.broadcast({"outcome": outcome})
        self.stage = "done"

    def abandon(self, exc: BaseException) -> None:
        """Rank 0 failed: tell the others if they are waiting for a message. During
        training they fail on the same step (losses are summed across ranks) or the
        launcher stops them when rank 0 exits."""
        if self.world.distributed and self.stage in ("plan", "outcome"):
            with contextlib.suppress(Exception):  # the others may be gone already
                self.world.broadcast({"error": str(exc) or type(exc).__name__})
        self.stage = "done"

    def receive(self, what: str) -> Any:
        message = self.world.broadcast(None)
        if "error" in message:
            raise TrainingError(f"rank 0 stopped the run: {message['error']}")
        return message[what]


def run_training(config: Any, request: TrainRequest, *,
                 on_event: Callable[[dict], None] | None = None,
                 progress: bool | None = None) -> TrainOutcome:
    """Train, write the version, record everything; raises on failure (run marked failed)."""
    adapter = validate_adapter_name(request.adapter)  # before it names any path
    world = World.from_environment()
    if not world.distributed:
        return _run(config, request, adapter, Handoff(world), on_event, progress)
    device = modeling.choose_placement(config.model.device, config.model.dtype, False).device
    with process_group(world, device):
        if not world.is_main:
            with _silent_errors():
                return _train_beside_rank_0(config, request, world)
        handoff = Handoff(world)
        try:
            outcome = _run(config, request, adapter, handoff, on_event, progress)
        except BaseException as exc:
            handoff.abandon(exc)
            raise
        handoff.finish(outcome)
        return outcome


def _train_beside_rank_0(config: Any, request: TrainRequest, world: World) -> TrainOutcome:
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


@contextlib.contextmanager
def _silent_errors() -> Iterator[None]:
    """Rank 0 alone reports (stdout events); the others' errors go to stderr only."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(AttributeError):
            exc.reported = True  # type: ignore[attr-defined]  # main() prints no event
        raise


def _fan_out(*callbacks: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def call(record: dict) -> None:
        for callback in live:
            callback(record)

    return call


def _run(config: Any, request: TrainRequest, adapter: str, handoff: Handoff,
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
        record, created = store.ensure_adapter(adapter, config.model.name)
        if created:
            log.info("created adapter %s (base model %s)", adapter, config.model.name)
        run_dir = request.run_dir
        saved: dict[str, Any] | None = None
        if request.resume:
            run_dir = run_dir or latest_resumable(config, adapter)
            run_file = run_dir / RUN_FILE
            if not run_file.is_file():
                raise TrainingError(f"{run_dir} is not a run directory ({RUN_FILE} is missing)")
            saved = json.loads(run_file.read_text(encoding="utf-8"))
            if saved.get("adapter") != adapter:
                raise TrainingError(f"{run_dir} is a run of {saved.get('adapter')!r}, not of "
                                    f"{adapter!r}")
        run_id = request.run_id or (saved or {}).get("run_id")
        run = (store.get_run(run_id) if run_id
               else store.create_run(adapter, trigger=request.trigger))
        run_dir = Path(run_dir or runs_root(config, adapter) / f"run-{run.id}")
        run_dir.mkdir(parents=True, exist_ok=True)
        board = (TensorBoardScalars(request.tensorboard / adapter / run_dir.name)
                 if request.tensorboard is not None else None)
        if board is not None:
            held.callback(board.close)
        events = Events(request.events, _fan_out(on_event, board), run_dir / EVENTS_FILE)
        store.update_run(run.id, status="running", pid=os.getpid(), error=None,
                         log_path=str(run_dir / LOG_FILE),
                         started_at=run.started_at or now_text(), finished_at=None)
        recipes: list[Recipe] = []  # filled by _train, so cleanup happens even on failure
        started = time.perf_counter()
        try:
            with log_to_file(run_dir / LOG_FILE):
                outcome = _train(config, store, request, record, run.id, run_dir, saved,
                                 events, progress, started, recipes, handoff)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            message = ("interrupted; continue with --resume" if interrupted
                       else str(exc) or type(exc).__name__)
            store.update_run(run.id, status="cancelled" if interrupted else "failed",
                             error=message, finished_at=now_text())
            events.emit("error", run_id=run.id, message=message)
            with contextlib.suppress(AttributeError):
                exc.reported = True  # type: ignore[attr-defined]  # main() need not repeat it
            raise
        finally:
            for recipe in recipes:
                recipe.cleanup()
        if request.promote:
            from .gate import gate_version

            decision = gate_version(config, store, adapter, outcome.version)
            outcome.gate = decision.as_dict()
            events.emit("gate", version=outcome.version, promoted=decision.promote,
                        reason=decision.reason, scale=decision.scale,
                        report=decision.report)
        return outcome


def stored_pairs(splits: Any) -> list[tuple[int, str]]:
    """(turn id, split) of the examples that came from the database ("db:turn N")."""
    pairs: dict[int, str] = {}  # a pair's rewordings share its turn (and its split)
    for split in ("train", "validation", "held_out"):
        for source in splits[split]["source"]:
            turn_id = source_turn_id(source)
            if turn_id is not None:
                pairs.setdefault(turn_id, split)
    return list(pairs.items())


def _train(config: Any, store: SyncStore, request: TrainRequest, record: Any, run_id: int,
           run_dir: Path, saved: dict[str, Any] | None, events: Events,
           progress: bool | None, started: float, recipes: list[Recipe],
           handoff: Handoff) -> TrainOutcome:
    adapter = request.adapter
    examples = load_examples(config, request)
    fingerprint = data_hash(examples)
    if saved is not None:
        cfg = TrainConfig(**saved["config"])
        if saved.get("data_hash") != fingerprint:
            raise TrainingError(f"the training data changed since run {run_id}'s checkpoint "
                                f"(data hash {saved.get('data_hash')} then, {fingerprint} now); "
                                f"pass the same --data/--from-db, or start a new run without "
                                f"--resume")
        log.info("resuming run %d with its own settings (%s)", run_id, run_dir / RUN_FILE)
    else:
        default_prompt = record.system_prompt or config.model.system_prompt
        replay_prompts = config.training.replay_prompts
        if replay_prompts and not Path(replay_prompts).is_absolute():
            replay_prompts = str(config.data_dir / replay_prompts)
        cfg = TrainConfig.from_settings(config.training, system_prompt=default_prompt,
                                        vote_baseline=config.feedback.min_score,
                                        replay_prompts=replay_prompts or None,
                                        **request.overrides)
        cfg.check()
        (run_dir / RUN_FILE).write_text(json.dumps(
            {"run_id": run_id, "adapter": adapter, "data_hash": fingerprint,
             "config": asdict(cfg)}, indent=2) + "\n", encoding="utf-8")
    splits, counts = build_splits(examples, salt=adapter,
                                  held_out_fraction=config.training.validation_fraction,
                                  validation_fraction=config.training.eval_fraction,
                                  seed=cfg.seed)
    log.info("data: %d read, %d duplicate(s), %d train, %d validation, %d held out, "
             "%d of them other ways to ask (hash %s)", counts.read, counts.duplicates,
             counts.train, counts.validation, counts.held_out, counts.also_asked, fingerprint)
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype, False)
    handoff.send_plan(run_dir=str(run_dir), config=asdict(cfg), examples=examples,
                      resume=saved is not None, source=source)
    recipe = Recipe(cfg, model_source=source, placement=placement, run_dir=run_dir,
                    events=events, progress=progress,
                    allow_download=config.model.allow_download, world=handoff.world,
                    cache_dir=config.data_dir / "cache")
    recipes.append(recipe)
    recipe.setup(splits, resume=saved is not None)
    result = recipe.train()
    handoff.trained()
    number = store.next_version_number(adapter)
    meta = {
        "adapter": adapter,
        "version": number,
        "kind": "full model (not an adapter: set model.name to this directory to use it)"
        if cfg.method == "full" else "PEFT LoRA adapter",
        "method": cfg.method,
        "base_model": config.model.name,
        "base_model_source": source,
        "run_id": run_id,
        "data": {"hash": fingerprint, **asdict(counts),
                 "files": [str(p) for p in request.data_files], "from_db": request.from_db,
                 **{f"{name}_tokens": asdict(stats)
                    for name, stats in result.encode_stats.items()}},
        "hyperparameters": asdict(cfg),
        "metrics": result.metrics,
        "duration_s": round(time.perf_counter() - started, 1),
        "device": placement.device,
        "processes": handoff.world.size,
        "packages": package_versions(),
        "created_at": now_text(),
    }
    held_out_rows = [dict(row) for row in splits["held_out"]]
    # what it was taught (not its paraphrases): the gate asks a sample of it again
    taught_rows = [dict(row) for row in splits["train"]]

    def save(directory: Path) -> None:
        recipe.save(directory)
        write_jsonl(taught_rows, directory / TAUGHT_FILE)

    path = write_version(config.adapters_dir, adapter, number, save=save, meta=meta,
                         history=result.state.history, evals=result.state.evals,
                         held_out=held_out_rows)
    try:
        version = store.add_version(adapter, path=f"{adapter}/{path.name}",
                                    metrics=result.metrics, status="candidate", run_id=run_id)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no row, no directory
        raise
    if version.version != number:
        raise TrainingError(f"{adapter} got version {version.version} while v{number} was being "
                            f"written (another process added a version); remove {path}")
    store.record_version_pairs(version.id, stored_pairs(splits))
    store.update_run(run_id, status="succeeded", version=number, metrics=result.metrics,
                     finished_at=now_text())
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing left to resume
    events.emit("done", run_id=run_id, adapter=adapter, version=number, path=str(path),
                metrics=result.metrics)
    log.info("%s v%d written to %s", adapter, number, path)
    return TrainOutcome(run_id, number, path, result.metrics)

"""Training runs started by the bot: a child process, its progress, its outcome.

`python -m trainer train --from-db --events --promote` runs as a child at low
CPU priority, so the bot keeps answering and a crash of the run cannot take
the bot down. Its JSON-lines events are relayed to whoever asked (Discord
message edits, console lines). When the gate promotes the new version, the
engine loads it and it serves the next request — no restart. One run at a
time per bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings import ENV_PREFIX, TOKEN_ENV, Config, dump_toml, layout
from settings.layout import CURVE_FILE
from storage import Database, TrainingRun
from trainer.versions import pid_alive

from .engine_base import GenerationEngine

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
CANCEL_GRACE_S = 60


class TrainingBusy(RuntimeError):
    pass


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


@dataclass
class ActiveRun:
    run: TrainingRun
    process: asyncio.subprocess.Process
    started: float
    last: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False

    def progress(self) -> str:
        step, total = self.last.get("step"), self.last.get("total")
        loss = self.last.get("loss")
        parts = [f"{self.run.adapter_label}: run {self.run.id}"]
        if step is not None and total:
            parts.append(f"step {step}/{total}")
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{time.monotonic() - self.started:.0f} s")
        return " · ".join(parts)


class TrainingService:
    watch_every_s = 2.0  # how often a surviving child from before a restart is looked at

    def __init__(self, config: Config, db: Database, engine: GenerationEngine):
        self.config = config
        self.db = db
        self.engine = engine
        self.active: ActiveRun | None = None
        self._lock = asyncio.Lock()
        # the run's one follower, started with it: drains the child's events, releases the
        # lock, records the end; callers of `follow` only subscribe to it
        self._follower: asyncio.Task[Outcome] | None = None
        self._handlers: list[EventHandler] = []
        self._watcher: asyncio.Task[None] | None = None  # a survivor found by `recover`

    def command(self, adapter: str, run_id: int, trigger: str, config_path: Path) -> list[str]:
        return [sys.executable, "-m", "trainer", "train", "--from-db", "--adapter", adapter,
                "--events", "--promote", "--run-id", str(run_id), "--trigger", trigger,
                "--config", str(config_path)]

    def write_child_config(self, run_id: int) -> Path:
        """The bot's effective settings for the child: same database, adapters, model."""
        path = layout.logs_dir(self.config.data_dir) / f"training-run-{run_id}.config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_toml(self.config), encoding="utf-8")
        return path

    def stderr_path(self, run_id: int) -> Path:
        return layout.logs_dir(self.config.data_dir) / f"training-run-{run_id}.stderr.log"

    def child_environment(self) -> dict[str, str]:
        """The bot's environment without what the child must not see: `BOT_*` overrides
        (the settings file it is given has them applied already; read again, a relative
        path among them would resolve against that file's folder and point the run at
        another database) and every secret (Discord token, HTTP token, server API key)."""
        secrets = {TOKEN_ENV, self.config.http.token_env, self.config.engine.remote_api_key_env}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(ENV_PREFIX) and k not in secrets}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def recover(self) -> None:
        """At start-up: clear a lock whose process is gone, and close the runs it left."""
        lock = await self.db.training_lock()
        if lock is not None:
            if lock["host"] == socket.gethostname() and not _holds(lock["pid"], lock["run_id"]):
                await self.db.release_training_lock()
                log.warning("cleared a training lock left by process %d (run %s), which is "
                            "gone", lock["pid"], lock["run_id"])
            else:
                log.warning("training is locked by process %d on %s (run %s); no run starts "
                            "here until it ends. If that host is gone (a replaced container: "
                            "give the container a fixed hostname, as compose.yaml does), clear "
                            "it with: sqlite3 %s 'DELETE FROM training_lock'", lock["pid"],
                            lock["host"], lock["run_id"], self.config.database_path)
        held = await self.db.training_lock()
        if held is not None and held["host"] == socket.gethostname() and held["run_id"]:
            # a child that outlived the bot before it: when it exits, its lock goes
            self._watcher = asyncio.create_task(self._watch_survivor(held["pid"],
                                                                     held["run_id"]))
        for run in await self.db.runs_left_running():
            if held is not None and held["run_id"] == run.id:
                continue  # still running elsewhere
            await self.db.update_run(run.id, status="failed", finished_at=_now(),
                                     error="the bot or the training process stopped during "
                                           "this run; start it again (it restarts cleanly)")
            log.warning("training run %d was left running by a stopped process; marked failed",
                        run.id)

    async def start(self, adapter: str, *, trigger: str = "manual",
                    requested_by: int | None = None) -> TrainingRun:
        """Record and launch a run; raises TrainingBusy while another one runs."""
        async with self._lock:
            if self.active is not None:
                raise TrainingBusy(f"a training run is already going ({self.active.progress()});"
                                   f" wait for it or cancel it")
            label = (await self.db.require_adapter(adapter)).label
            if not await self.db.approved_pairs(adapter):
                raise ValueError(f"{label} has no approved pairs to train on yet: vote with "
                                 f"👍 and approve pairs with /review first")
            holder = await self.db.acquire_training_lock(None, os.getpid(), socket.gethostname())
            if holder is not None:
                raise TrainingBusy(f"another training run holds this host's lock (run "
                                   f"{holder['run_id']}, process {holder['pid']}); wait for it")
            try:
                run = await self.db.create_run(adapter, trigger=trigger,
                                               requested_by=requested_by)
                await self._spawn(adapter, run, trigger)
            except BaseException:
                await self.db.release_training_lock()
                raise
            self._handlers = []
            self._follower = asyncio.create_task(self._follow(), name=f"training-run-{run.id}")
            return run

    async def _spawn(self, adapter: str, run: TrainingRun, trigger: str) -> None:
        config_path = await asyncio.to_thread(self.write_child_config, run.id)
        stderr_path = self.stderr_path(run.id)
        with stderr_path.open("wb") as stderr:
            # its own session: a Ctrl-C meant for the bot does not cancel the run
            process = await asyncio.create_subprocess_exec(
                *self.command(adapter, run.id, trigger, config_path),
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.child_environment(),
                start_new_session=True)
        _lower_priority(process.pid)
        # the lock now names the child: if the bot dies, the run still holds it
        await self.db.hand_over_training_lock(run.id, process.pid, from_pid=os.getpid())
        self.active = ActiveRun(run, process, time.monotonic())
        log.info("training %s: run %d started as process %d", adapter, run.id, process.pid)

    async def follow(self, on_event: EventHandler | None = None) -> Outcome:
        """Subscribe to the last started run's events (from now on) and wait for its
        outcome; the run is followed to its end whether anyone subscribes or not."""
        follower = self._follower
        if follower is None:
            raise RuntimeError("no training run was started")
        if on_event is not None and not follower.done():
            self._handlers.append(on_event)
        try:
            return await asyncio.shield(follower)  # a subscriber leaving stops nothing
        finally:
            if on_event in self._handlers:
                self._handlers.remove(on_event)

    async def _follow(self) -> Outcome:
        """Relay the active run's events until it ends; then hot-load what it promoted."""
        active = self.active
        assert active is not None
        done: dict[str, Any] = {}
        gate: dict[str, Any] = {}
        error: str | None = None
        try:
            assert active.process.stdout is not None
            async for raw in active.process.stdout:
                try:
                    event = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # not an event line
                active.last = event
                kind = event.get("event")
                if kind == "done":
                    done = event
                elif kind == "gate":
                    gate = event
                elif kind == "error":
                    error = event.get("message")
                for handler in list(self._handlers):
                    try:
                        await handler(event)
                    except Exception:
                        log.exception("a training progress handler failed")
            code = await active.process.wait()
        finally:
            self.active = None
            await self.db.release_training_lock(active.run.id)
        run = await self.db.get_run(active.run.id)
        status = run.status
        if status in ("running", "queued"):  # the child died without saying why
            status = "cancelled" if active.cancelled else "failed"
            error = error or (f"the training process exited with code {code}: "
                              f"{_last_line(self.stderr_path(run.id))}")
            await self.db.update_run(run.id, status=status, error=error, finished_at=_now())
        outcome = Outcome(run.id, run.adapter, status, version=done.get("version"),
                          promoted=bool(gate.get("promoted")), reason=gate.get("reason"),
                          metrics=done.get("metrics") or {}, error=error or run.error,
                          report=gate.get("report"), label=run.adapter_label)
        if done.get("path"):
            curve = Path(done["path"]) / CURVE_FILE
            outcome.loss_curve = curve if curve.exists() else None
        if outcome.promoted and outcome.version is not None:
            await self.engine.promote(outcome.adapter, outcome.version,
                                      reason=outcome.reason or "promoted by the gate")
        log.info("training run %d ended: %s", run.id, outcome.summary())
        return outcome

    async def _watch_survivor(self, pid: int, run_id: int) -> None:
        """Wait for a training child this bot did not start to exit; then release its
        lock and, if it could not record its end, record the run as failed."""
        while _holds(pid, run_id):
            await asyncio.sleep(self.watch_every_s)
        await self.db.release_training_lock(run_id)
        run = await self.db.get_run(run_id)
        if run.status in ("running", "queued"):
            await self.db.update_run(run_id, status="failed", finished_at=_now(),
                                     error="the training process ended without recording "
                                           "its result; start the run again")
        log.info("training run %d (process %d, started before this bot) ended: %s", run_id,
                 pid, (await self.db.get_run(run_id)).status)

    async def close(self) -> None:
        """Stop watching (at shutdown); a child keeps running, its lock with it."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def cancel(self) -> bool:
        """Stop the active run cleanly (the trainer turns SIGTERM into a cancelled run)."""
        active = self.active
        if active is None:
            return False
        active.cancelled = True
        with contextlib.suppress(ProcessLookupError):
            active.process.send_signal(signal.SIGTERM)  # the trainer records "cancelled"
        try:
            await asyncio.wait_for(active.process.wait(), CANCEL_GRACE_S)
        except TimeoutError:
            log.warning("training run %d ignored SIGTERM for %d s; killing it",
                        active.run.id, CANCEL_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                active.process.kill()
        return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _holds(pid: int, run_id: int | None) -> bool:
    """Is `pid` still the process that took the lock (not a new one with a reused pid)?

    A run's lock names the trainer child, whose command line carries `--run-id N`;
    where /proc is not there to read it, a live pid has to do.
    """
    if not pid_alive(pid):
        return False
    if run_id is None:
        return True  # the bot's own hold while it spawns the child
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return any(a == b"--run-id" and b == str(run_id).encode()
               for a, b in zip(args, args[1:], strict=False))


def _lower_priority(pid: int) -> None:
    # after the spawn, not in preexec_fn: that is unsafe in a process with threads
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 10)  # answers first, training with what is left


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"

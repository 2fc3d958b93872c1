"""Training runs started by the bot: a child process, its progress, its outcome.

`python -m trainer train --from-db --events --promote` runs as a child at low
CPU priority, so the bot keeps answering and a crash of the run cannot take
the bot down. The run outlives the bot: the child has its own session, its
output goes to files (its events to the run directory's events.jsonl, the rest
to a log), never to a pipe that would break when the bot stops, and it holds
the training lock itself. The service follows the events file and relays each
event to whoever subscribed (Discord message edits, console lines); a bot
restarted while the child lives re-attaches to the same file and reports the
end. When the gate promotes the new version, the engine loads it and it serves
the next request — no restart. One run at a time per host.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from settings.layout import CURVE_FILE, EVENTS_FILE
from storage import Database, TrainingRun
from trainer.events import EventTail
from trainer.versions import pid_alive

from .engine_base import GenerationEngine
from .training_outcome import Outcome

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
CANCEL_GRACE_S = 60


__all__ = ["ActiveRun", "Outcome", "TrainingBusy", "TrainingService"]


class TrainingBusy(RuntimeError):
    pass


@dataclass
class ActiveRun:
    """The run going on: a child this bot started (`process`), or one a bot before it
    started that is still alive (`adopted`: only its pid is known)."""

    run: TrainingRun
    pid: int
    started: float
    events: Path  # the run directory's events.jsonl, which the child appends to
    process: asyncio.subprocess.Process | None = None
    last: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False

    async def exited(self, within: float) -> bool:
        """Whether the child has exited, waiting at most `within` seconds for it."""
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.process.wait()), within)
            return self.process.returncode is not None
        deadline = time.monotonic() + within
        while _holds(self.pid, self.run.id):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.25))
        return True

    def signal(self, number: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(number)
        elif _holds(self.pid, self.run.id):  # (not another process that got its pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

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
    poll_every_s = 0.5  # how often the run's events file (and whether it lives) is read

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
        # a run `recover` found still going, and its follower (its outcome, once it ends)
        self.reattached: TrainingRun | None = None
        self.reattached_end: asyncio.Task[Outcome] | None = None

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
        """The child's stdout and stderr (its events go to the run directory)."""
        return layout.logs_dir(self.config.data_dir) / f"training-run-{run_id}.stderr.log"

    def events_path(self, run: TrainingRun) -> Path:
        return run_events_path(self.config, run)

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
        """At start-up: clear a lock whose process is gone, close the runs it left, and
        re-attach to a run whose child outlived the bot before this one."""
        lock = await self.db.training_lock()
        if lock is not None:
            here = lock["host"] == socket.gethostname()
            if here and not _holds(lock["pid"], lock["run_id"]):
                await self.db.release_training_lock()
                log.warning("cleared a training lock left by process %d (run %s), which is "
                            "gone", lock["pid"], lock["run_id"])
            elif not (here and lock["run_id"]):  # (a run child here is followed, below)
                log.warning("training is locked by process %d on %s (run %s); no run starts "
                            "here until it ends. If that host is gone (a replaced container: "
                            "give the container a fixed hostname, as compose.yaml does), clear "
                            "it with: sqlite3 %s 'DELETE FROM training_lock'", lock["pid"],
                            lock["host"], lock["run_id"], self.config.database_path)
        held = await self.db.training_lock()
        for run in await self.db.runs_left_running():
            if held is not None and held["run_id"] == run.id:
                if held["host"] == socket.gethostname() and self.active is None:
                    self._adopt(run, held["pid"])
                continue  # still running (here: followed again; elsewhere: its host's)
            await self.db.update_run(run.id, status="failed", finished_at=_now(),
                                     error="the bot or the training process stopped during "
                                           "this run; start it again (it restarts cleanly)")
            log.warning("training run %d was left running by a stopped process; marked failed",
                        run.id)

    def _adopt(self, run: TrainingRun, pid: int) -> None:
        """Follow a child started by the bot before this one, from its events file."""
        self.active = ActiveRun(run, pid, time.monotonic(), self.events_path(run))
        self.reattached = run
        self._handlers = []
        self._follower = asyncio.create_task(self._follow(), name=f"training-run-{run.id}")
        self.reattached_end = self._follower
        log.info("training %s: run %d (process %d) outlived the bot before this one; "
                 "following it again", run.adapter, run.id, pid)

    async def start(self, adapter: str, *, trigger: str = "manual",
                    requested_by: int | None = None,
                    channel_id: int | None = None) -> TrainingRun:
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
                                               requested_by=requested_by,
                                               channel_id=channel_id)
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
        with stderr_path.open("wb") as output:
            # its own session: a Ctrl-C or SIGTERM meant for the bot does not stop the run;
            # its output to a file, not a pipe: the bot may stop, the run goes on
            process = await asyncio.create_subprocess_exec(
                *self.command(adapter, run.id, trigger, config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                env=self.child_environment(), start_new_session=True)
        _lower_priority(process.pid)
        # the lock now names the child: if the bot dies, the run still holds it
        await self.db.hand_over_training_lock(run.id, process.pid, from_pid=os.getpid())
        self.active = ActiveRun(run, process.pid, time.monotonic(), self.events_path(run),
                                process)
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
        """Relay the active run's events until its child exits; then release the lock,
        record the end if the child could not, and hot-load what it promoted. Cancelled
        (the bot stopping), it leaves the run alone: the child goes on with its lock."""
        active = self.active
        assert active is not None
        tail = EventTail(active.events)
        done: dict[str, Any] = {}
        gate: dict[str, Any] = {}
        error: str | None = None
        ended = False
        try:
            while not ended:
                ended = await active.exited(self.poll_every_s)
                for _, event in await asyncio.to_thread(tail.read):  # once ended: the rest
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
        finally:
            self.active = None
        await self.db.release_training_lock(active.run.id)
        run = await self.db.get_run(active.run.id)
        status = run.status
        if status in ("running", "queued"):  # the child died without saying why
            status = "cancelled" if active.cancelled else "failed"
            code = active.exit_code
            how = "ended" if code is None else f"exited with code {code}"
            error = error or (f"the training process {how}: "
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

    async def close(self) -> None:
        """Stop following (at shutdown, before the database closes): a child keeps running
        with its lock, and the bot started next re-attaches to it."""
        follower, active = self._follower, self.active
        if follower is not None and not follower.done():
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            if active is not None:
                log.info("stopped following training run %d; it goes on, and the bot "
                         "started next follows it again", active.run.id)

    async def cancel(self) -> bool:
        """Stop the active run cleanly (the trainer turns SIGTERM into a cancelled run)."""
        active = self.active
        if active is None:
            return False
        active.cancelled = True
        active.signal(signal.SIGTERM)  # the trainer records "cancelled"
        if not await active.exited(CANCEL_GRACE_S):
            log.warning("training run %d ignored SIGTERM for %d s; killing it",
                        active.run.id, CANCEL_GRACE_S)
            active.signal(signal.SIGKILL)
        return True


def run_events_path(config: Config, run: TrainingRun) -> Path:
    """Where a run writes its events (the service and the web page read them): beside its
    log, inside the data directory."""
    default = layout.run_dir(config.data_dir, run.adapter, run.id) / EVENTS_FILE
    if not run.log_path:
        return default
    path = (Path(run.log_path).parent / EVENTS_FILE).resolve()
    return path if path.is_relative_to(config.data_dir) else default


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
    """The child's last words: its last line that is not a JSON event."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    said = [line for line in lines if not line.startswith('{"event"')]
    return said[-1][:300] if said else "no output"

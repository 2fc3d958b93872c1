"""Training runs started by the bot: a killed child, the host lock, stale locks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from bot.training import TrainingBusy, TrainingService
from settings import parse_config
from storage import Database
from tests.conftest import fast_training_toml
from tests.tiny_model import save_random_adapter


class RecordingEngine:
    """The service hot-loads promoted versions through engine.promote; record the calls."""

    def __init__(self):
        self.promoted: list[tuple[str, int]] = []

    async def promote(self, adapter: str, version: int, reason: str | None = None):
        self.promoted.append((adapter, version))


PAIRS = "".join(f'{{"question": "Question {i}?", "answer": "Answer {i}."}}\n' for i in range(12))


@pytest.fixture
async def setup(tmp_path, tiny_model_dir):
    """A database with adapter 'faq' (v1 serving, 12 approved pairs) and a config maker."""

    def config(epochs: int):
        return parse_config(f'[storage]\ndata_dir = "{tmp_path.as_posix()}/data"\n'
                            f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                            f"[training]\nepochs = {epochs}\neval_every = 0\n"
                            "checkpoint_every = 5\n" + fast_training_toml(), base_dir=tmp_path)

    base = config(1)
    async with Database(base.database_path) as db:
        save_random_adapter(tiny_model_dir, base.adapters_dir / "faq" / "v1", seed=1)
        await db.create_adapter("faq", "tiny")
        await db.add_version("faq", path="faq/v1", status="serving")
        seed = tmp_path / "pairs.jsonl"
        seed.write_text(PAIRS, encoding="utf-8")
        await db.import_pairs(seed, "faq")
        yield db, config


@pytest.mark.timeout(300)
async def test_killed_child_fails_the_run_releases_the_lock_and_keeps_serving(setup):
    db, config = setup
    service = TrainingService(config(epochs=400), db, engine=RecordingEngine())  # a long run
    run = await service.start("faq")
    lock = await db.training_lock()
    assert (lock["run_id"], lock["pid"]) == (run.id, service.active.pid)
    with pytest.raises(TrainingBusy):
        await service.start("faq")

    stepping = asyncio.Event()

    async def on_event(event):
        if event.get("event") == "step":
            stepping.set()

    following = asyncio.create_task(service.follow(on_event))
    await asyncio.wait_for(stepping.wait(), 120)
    os.kill(lock["pid"], signal.SIGKILL)  # kill -9 mid-run
    outcome = await asyncio.wait_for(following, 60)

    assert outcome.status == "failed" and "exited with code -9" in outcome.error
    assert (await db.get_run(run.id)).status == "failed"
    assert await db.training_lock() is None
    assert (await db.serving_version("faq")).version == 1
    assert [v.version for v in await db.versions("faq")] == [1]  # nothing half-written

    # nobody follows this one: the service does, to its end (the trainer lets go of the
    # lock on its way out, the service once it sees the child gone)
    again = TrainingService(config(epochs=1), db, engine=RecordingEngine())
    second = await again.start("faq")
    for _ in range(1200):
        if again.active is None:
            break
        await asyncio.sleep(0.1)
    assert await db.training_lock() is None and again.active is None
    result = await asyncio.wait_for(again.follow(), 5)  # a late subscriber: its outcome
    assert result.status == "succeeded" and result.version == 2, result
    assert again.engine.promoted == ([("faq", 2)] if result.promoted else [])
    assert (await db.get_run(second.id)).status == "succeeded"


@pytest.mark.timeout(300)
async def test_the_child_trains_on_the_bots_database_and_sees_no_secret(setup, tmp_path,
                                                                           monkeypatch):
    """A relative BOT_STORAGE_DATA_DIR is the bot's setting, not the child's: inherited, it
    would resolve against the child's settings file and train on an empty database."""
    db, config = setup
    secrets = {"DISCORD_TOKEN": "discord-secret-token", "BOT_HTTP_TOKEN": "http-secret-token",
               "VLLM_API_KEY": "vllm-secret-key"}
    for name, value in {"BOT_STORAGE_DATA_DIR": "data", **secrets}.items():
        monkeypatch.setenv(name, value)
    bot_config = parse_config(
        f'[model]\nname = "{config(1).model.name}"\n[training]\nepochs = 1\n'
        f"eval_every = 0\n" + fast_training_toml(), base_dir=tmp_path, environ=dict(os.environ))
    assert bot_config.database_path == config(1).database_path  # data_dir = "data", relative

    service = TrainingService(bot_config, db, engine=RecordingEngine())
    env = service.child_environment()
    assert not [k for k in env if k.startswith("BOT_")]
    assert not set(secrets) & set(env) and not set(secrets.values()) & set(env.values())

    await service.start("faq")
    outcome = await asyncio.wait_for(service.follow(), 240)
    assert outcome.status == "succeeded" and outcome.version == 2, outcome
    assert [v.version for v in await db.versions("faq")] == [1, 2]  # in the bot's database


async def test_a_lock_left_by_a_dead_process_is_cleared_at_start(setup):
    db, config = setup
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = await db.create_run("faq")
    await db.update_run(run.id, status="running", pid=dead.pid)
    assert await db.acquire_training_lock(run.id, dead.pid, socket.gethostname()) is None

    service = TrainingService(config(epochs=1), db, engine=RecordingEngine())
    await service.recover()
    assert await db.training_lock() is None
    left = await db.get_run(run.id)
    assert left.status == "failed" and "stopped during this run" in left.error


async def test_a_live_lock_is_respected(setup):
    db, config = setup
    assert await db.acquire_training_lock(None, os.getpid(), socket.gethostname()) is None
    service = TrainingService(config(epochs=1), db, engine=RecordingEngine())
    await service.recover()
    assert await db.training_lock() is not None  # this process is alive: not stale
    with pytest.raises(TrainingBusy, match="holds this host's lock"):
        await service.start("faq")
    assert (await db.stats())["runs"] == 0  # refused before recording anything


async def test_a_lock_whose_pid_was_reused_is_cleared(setup):
    """After a container restart the old child's pid may belong to another process."""
    db, config = setup
    run = await db.create_run("faq")
    await db.update_run(run.id, status="running", pid=os.getpid())
    # alive, but this test process is not the trainer of that run
    assert await db.acquire_training_lock(run.id, os.getpid(), socket.gethostname()) is None
    service = TrainingService(config(epochs=1), db, engine=RecordingEngine())
    await service.recover()
    assert await db.training_lock() is None
    assert (await db.get_run(run.id)).status == "failed"


async def test_a_lock_held_by_a_live_trainer_is_kept(setup):
    db, config = setup
    run = await db.create_run("faq")
    # stands in for `python -m trainer train ... --run-id N` that is still going
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "--run-id", str(run.id)])
    try:
        await db.update_run(run.id, status="running", pid=child.pid)
        assert await db.acquire_training_lock(run.id, child.pid, socket.gethostname()) is None
        service = TrainingService(config(epochs=1), db, engine=RecordingEngine())
        service.poll_every_s = 0.1
        await service.recover()
        assert (await db.training_lock())["run_id"] == run.id
        assert (await db.get_run(run.id)).status == "running"
        # the restarted bot watches it: once it exits, the lock goes within seconds
        await asyncio.sleep(0.5)
        assert (await db.training_lock())["run_id"] == run.id  # held while it lives
        child.kill()
        child.wait()
        for _ in range(50):
            if await db.training_lock() is None:
                break
            await asyncio.sleep(0.1)
        assert await db.training_lock() is None
        assert (await db.get_run(run.id)).status == "failed"  # it could not record its end
        await service.close()
    finally:
        child.kill()
        child.wait()

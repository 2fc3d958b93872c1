"""Training runs that fail never touch the serving version: out of memory, a NaN loss, a full
disk while the version is written, and a process killed with SIGKILL half-way through
writing it. After each, the serving version and its files are what they were, no
half-written version is visible under adapters/<name>/, and the run is recorded failed with
the reason. The next run writes its version whole.

A run killed mid-training by the bot's own child handling is tested in
tests/test_training_service.py; a NaN loss with no serving version in
tests/test_trainer_train.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

import trainer.train as train_module
from bot.training import TrainingService
from storage import Database, SyncStore
from tests.conftest import ROOT, fast_training_toml
from tests.tiny_model import save_random_adapter
from trainer.pipeline import TrainRequest, run_training
from trainer.versions import write_version

ONE_STEP = {"max_steps": 1}  # the faults strike after training: one step is enough
PAIRS = "".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."})
                + "\n" for i in range(16))


def fast_settings() -> str:
    """The faults strike around training itself: skip what a run does besides."""
    return fast_training_toml()


@pytest.fixture
def serving(make_config, tiny_model_dir, tmp_path):
    """Adapter 'faq' with v1 serving, a pairs file, and a config for short runs."""
    config = make_config(f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                         "[training]\nbatch_size = 4\nlearning_rate = 0.01\nepochs = 1\n"
                         "validation_fraction = 0.2\neval_every = 0\n" + fast_settings())
    v1 = save_random_adapter(tiny_model_dir, config.adapters_dir / "faq" / "v1", seed=1)
    with SyncStore(config.database_path) as store:
        store.ensure_adapter("faq", "tiny")
        store.add_version("faq", path="faq/v1", status="serving")
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIRS, encoding="utf-8")
    return config, data, fingerprint(v1)


def fingerprint(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def assert_serving_untouched(config, v1_files) -> None:
    adapter_dir = config.adapters_dir / "faq"
    assert sorted(p.name for p in adapter_dir.iterdir()) == ["v1"]  # hidden ones included
    assert fingerprint(adapter_dir / "v1") == v1_files
    with SyncStore(config.database_path) as store:
        assert store.serving_version("faq").version == 1
        assert [v.version for v in store.versions("faq")] == [1]


def last_run(config) -> dict:
    with SyncStore(config.database_path) as store:
        row = store.conn.execute("SELECT status, error, version FROM training_runs "
                                 "ORDER BY id DESC LIMIT 1").fetchone()
    return dict(row)


def out_of_memory(monkeypatch) -> None:
    original = train_module.load_for_training

    def load(*args, **kwargs):
        model = original(*args, **kwargs)
        real_forward, calls = model.forward, []

        def forward(*f_args, **f_kwargs):
            calls.append(1)
            if len(calls) >= 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real_forward(*f_args, **f_kwargs)

        model.forward = forward
        return model

    monkeypatch.setattr(train_module, "load_for_training", load)


def nan_loss(monkeypatch) -> None:
    original = train_module.load_for_training

    def load(*args, **kwargs):
        model = original(*args, **kwargs)
        # only while training: what the run does in eval mode before (canaries) stays sane
        model.get_output_embeddings().register_forward_hook(
            lambda module, inputs, output: output * float("nan") if module.training else None)
        return model

    monkeypatch.setattr(train_module, "load_for_training", load)


def disk_full_saving_weights(monkeypatch) -> None:
    real_save = train_module.Recipe.save

    def save(self, directory):
        real_save(self, directory)
        weights = directory / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])  # what fit before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(weights))

    monkeypatch.setattr(train_module.Recipe, "save", save)


# (fault, how it is injected, the exception, what the run's error must say)
FAULTS = [
    ("out of memory", out_of_memory, torch.OutOfMemoryError, "out of memory"),
    ("NaN loss", nan_loss, train_module.NonFiniteLossError, "loss became nan"),
    ("disk full saving the weights", disk_full_saving_weights, OSError,
     "No space left on device"),
]


@pytest.mark.parametrize(("fault", "inject", "raised", "reason"), FAULTS,
                         ids=[f[0] for f in FAULTS])
def test_a_failed_run_leaves_the_serving_version_alone(fault, inject, raised, reason, serving,
                                                       monkeypatch):
    config, data, v1_files = serving
    inject(monkeypatch)
    events = []
    request = TrainRequest(adapter="faq", data_files=[data], promote=True, overrides=ONE_STEP)
    with pytest.raises(raised):
        run_training(config, request, on_event=events.append, progress=False)
    run = last_run(config)
    assert run["status"] == "failed" and reason in run["error"], run
    assert run["version"] is None
    assert events[-1]["event"] == "error" and reason in events[-1]["message"]
    assert_serving_untouched(config, v1_files)


KILLED_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    import trainer.train as train

    real_save = train.Recipe.save

    def save_then_die(self, directory):
        real_save(self, directory)
        weights = directory / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])  # half-written when the kill comes
        os.kill(os.getpid(), signal.SIGKILL)

    train.Recipe.save = save_then_die
    from trainer.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.timeout(180)
async def test_a_run_killed_while_writing_its_version_exposes_nothing(serving, tmp_path):
    config, data, v1_files = serving
    config_file = tmp_path / "child.toml"
    config_file.write_text(TrainingService(config, db=None, engine=None).write_child_config(1)
                           .read_text(encoding="utf-8"), encoding="utf-8")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, "--config", str(config_file), "train",
         "--adapter", "faq", "--data", str(data), "--max-steps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = list((config.adapters_dir / "faq").glob(".v2.tmp-*"))
    assert leftovers, "the kill came before the version was written: nothing was tested"
    visible = sorted(p.name for p in (config.adapters_dir / "faq").iterdir()
                     if not p.name.startswith("."))
    assert visible == ["v1"] and fingerprint(config.adapters_dir / "faq" / "v1") == v1_files

    async with Database(config.database_path) as db:  # the bot starting up afterwards
        assert (await db.list_runs("faq"))[0].status == "running"  # its process is gone
        await TrainingService(config, db, engine=None).recover()
        run = (await db.list_runs("faq"))[0]
        assert run.status == "failed" and "stopped during this run" in run.error
        assert (await db.serving_version("faq")).version == 1

    # the next run's version is written whole, and the dead run's leftover goes
    source = config.adapters_dir / "faq" / "v1"
    written = write_version(config.adapters_dir, "faq", 2,
                            save=lambda d: shutil.copytree(source, d, dirs_exist_ok=True),
                            meta={"run_id": 2}, history=[{"step": 1, "loss": 1.0}], evals=[],
                            held_out=[])
    with safe_open(written / "adapter_model.safetensors", "pt") as weights:
        assert list(weights.keys())
    assert sorted(p.name for p in (config.adapters_dir / "faq").iterdir()) == ["v1", "v2"]
    assert fingerprint(source) == v1_files

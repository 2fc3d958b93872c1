"""The promotion gate, promote and rollback, on real versions of the tiny model."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from storage import SyncStore
from tests.conftest import fast_training_toml
from tests.tiny_model import save_random_adapter
from trainer.__main__ import main
from trainer.gate import decide, gate_version
from trainer.pipeline import TrainRequest, run_training

WORDS = "one two three four five six seven eight nine ten".split()


def test_the_rule():
    better = decide(1.0, 1.2, 0.05, reference="serving v1", examples=4)
    assert better.promote and better.reason.startswith("promoted: held-out loss 1.0000 vs "
                                                       "serving v1 1.2000 (-16.7%; limit +5%)")
    assert decide(1.04, 1.0, 0.05).promote  # within the allowed regression
    worse = decide(1.06, 1.0, 0.05)
    assert not worse.promote and worse.reason.startswith("refused:")
    assert not decide(math.nan, 1.0, 0.05).promote
    assert not decide(math.inf, 1.0, 0.05).promote
    assert decide(2.0, None, 0.05).promote  # nothing to compare with


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    """A config file, 30 pairs and a first trained version (v1)."""
    config_file = tmp_path / "bot.toml"
    config_file.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n'
                           f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                           "[training]\nbatch_size = 4\nlearning_rate = 0.01\n"
                           "validation_fraction = 0.25\neval_fraction = 0.1\neval_every = 0\n"
                           + fast_training_toml())
    from settings import load_config

    config = load_config(config_file, environ={})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} plus {b}?",
                                        "answer": f"It is {WORDS[(i + j) % 10]}."}) + "\n"
                            for i, a in enumerate(WORDS) for j, b in enumerate(WORDS[:3])))
    run_training(config, TrainRequest(adapter="faq", data_files=[data],
                                      overrides={"max_steps": 20}), progress=False)
    return config, config_file


def copy_version(config, store, source: int, target_files=None):
    """A new version row whose directory copies v<source> (optionally other weights)."""
    number = len(store.versions("faq")) + 1
    directory = config.adapters_dir / "faq" / f"v{number}"
    shutil.copytree(config.adapters_dir / "faq" / f"v{source}", directory)
    if target_files is not None:
        for path in target_files.iterdir():
            shutil.copy(path, directory / path.name)
    store.add_version("faq", path=f"faq/v{number}")
    return number


def test_gate_promotes_a_better_candidate_and_refuses_a_worse(setup, tmp_path, tiny_model_dir):
    config, _ = setup
    with SyncStore(config.database_path) as store:
        first = gate_version(config, store, "faq", 1)  # against the base model
        assert first.promote and first.reference == "base model"
        assert first.candidate_loss < first.reference_loss
        v1 = store.serving_version("faq")
        assert v1.version == 1 and v1.reason == first.reason

        noise = save_random_adapter(tiny_model_dir, tmp_path / "noise", seed=5)
        worse = copy_version(config, store, 1, target_files=noise)
        refused = gate_version(config, store, "faq", worse)
        assert not refused.promote and refused.reference == "serving v1"
        assert refused.candidate_loss > refused.reference_loss * 1.05
        row = [v for v in store.versions("faq") if v.version == worse][0]
        assert row.status == "candidate" and row.reason == refused.reason
        assert row.reason.startswith("refused: at scale 1: held-out loss")
        assert store.serving_version("faq").version == 1

        same = copy_version(config, store, 1)  # as good as the serving one: no worse
        accepted = gate_version(config, store, "faq", same)
        assert accepted.promote
        assert accepted.candidate_loss == pytest.approx(accepted.reference_loss, rel=1e-5)
        assert store.serving_version("faq").version == same
        statuses = {v.version: v.status for v in store.versions("faq")}
        assert statuses == {1: "retired", worse: "candidate", same: "serving"}


def test_promote_and_rollback_commands(setup, tmp_path, tiny_model_dir, capsys):
    config, config_file = setup
    with SyncStore(config.database_path) as store:
        noise = save_random_adapter(tiny_model_dir, tmp_path / "noise", seed=5)
        copy_version(config, store, 1, target_files=noise)  # v2, worse
    assert main(["--config", str(config_file), "promote", "faq", "1"]) == 0
    assert "faq v1: promoted" in capsys.readouterr().out
    assert main(["promote", "faq", "--config", str(config_file)]) == 3  # the newest: v2
    assert "faq v2: refused: at scale 1: held-out loss" in capsys.readouterr().out
    assert main(["--config", str(config_file), "promote", "faq", "2", "--force"]) == 0
    assert main(["--config", str(config_file), "rollback", "faq"]) == 0
    assert "faq now serves v1" in capsys.readouterr().out
    assert main(["--config", str(config_file), "rollback", "faq"]) == 1
    assert "faq has no earlier version to roll back to" in capsys.readouterr().err
    assert main(["--config", str(config_file), "promote", "nope"]) == 1
    assert "unknown adapter 'nope'; known adapters: faq" in capsys.readouterr().err
    with SyncStore(config.database_path) as store:
        serving = store.serving_version("faq")
    assert serving.version == 1 and serving.reason == "rollback from the trainer command line"


def test_a_full_model_version_is_never_served(setup):
    config, _ = setup
    with SyncStore(config.database_path) as store:
        number = copy_version(config, store, 1)
        meta_path = config.adapters_dir / "faq" / f"v{number}" / "training_meta.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps(meta | {"method": "full"}))
        decision = gate_version(config, store, "faq", number)
        assert not decision.promote and "not an adapter" in decision.reason
        assert store.serving_version("faq") is None

"""Shared fixtures: a temporary database, the tiny model, configs, the default model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny_model.py

from tiny_model import save_tiny_model  # noqa: E402

from settings import load_config, parse_config  # noqa: E402
from storage import Database  # noqa: E402

# Training on the tiny random model for tests that are not about forgetting: the base model
# writing paraphrases and replay answers, and the gate's recall and canaries, cost generation
# time and mean nothing on a random model (tests/test_learning.py turns them on).
FAST_TRAINING = {"paraphrases": 0, "replay_weight": 0.0, "min_steps": 0,
                 "canary_checks": False, "recall_sample": 0, "min_recall": 0.0,
                 "adapter_scales": [1.0]}


# Fixtures that make a test slow, with every fixture built on them: the tiny model (loading,
# generating, training), the real bot on the fake Discord, the provisioned default model.
# `make test-fast` leaves their tests out, and the `integration` ones (pytest -m "not slow").
SLOW_FIXTURES = frozenset({"tiny_model_dir", "default_model_dir"})


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that needs a SLOW_FIXTURE, directly or through another fixture,
    and every `integration` test."""
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames) or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.slow)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def fast_training_toml() -> str:
    """FAST_TRAINING as lines for a [training] table."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in FAST_TRAINING.items())


def fast_training_env() -> dict[str, str]:
    """FAST_TRAINING as BOT_TRAINING_* environment overrides."""
    return {f"BOT_TRAINING_{k.upper()}": _toml_value(v) for k, v in FAST_TRAINING.items()}


@pytest.fixture
async def db(tmp_path):
    """A real SQLite file in a temporary directory, migrated and open."""
    async with Database(tmp_path / "test.sqlite3") as database:
        yield database


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def make_config(tmp_path):
    """Build a Config from TOML text, with data under the test's temporary directory."""

    def make(text: str = "", **environ: str):
        body = f'[storage]\ndata_dir = "{tmp_path.as_posix()}/data"\n' + text
        return parse_config(body, source="test.toml", base_dir=tmp_path, environ=environ)

    return make


@pytest.fixture
def tiny_config(make_config, tiny_model_dir):
    return make_config(f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                       "[engine]\nmax_new_tokens = 12\n")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The provisioned default model (`make test` provisions it before pytest runs)."""
    from trainer.modeling import DEFAULT_MODEL_DIRNAME, is_complete_model_dir

    config = load_config(ROOT / "config.toml", environ={})
    path = config.model_cache_dir / DEFAULT_MODEL_DIRNAME
    if not is_complete_model_dir(path):
        pytest.skip(f"default model not provisioned at {path}: run `make test` or "
                    f"`python -m trainer fetch-model` first")
    return path

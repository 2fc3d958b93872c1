"""Integration tests on the real default model (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def run_module(args: list[str], stdin: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("BOT_") and k != "DISCORD_TOKEN"}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True,
                          text=True, cwd=tmp_path, env=environ, timeout=300)


def test_console_answers_piped_question_and_stores_the_turn(default_model_dir, tmp_path):
    result = run_module(
        ["bot"], "What is the capital of France?\n", tmp_path,
        BOT_CONFIG=str(ROOT / "config.toml"),
        BOT_STORAGE_DATA_DIR=str(tmp_path / "data"),
        BOT_MODEL_NAME=str(default_model_dir),
        BOT_ENGINE_MAX_NEW_TOKENS="48")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as conn:
        rows = conn.execute("SELECT source, question, answer FROM turns").fetchall()
    assert len(rows) == 1
    source, question, answer = rows[0]
    assert (source, question) == ("console", "What is the capital of France?")
    assert answer.strip() and answer.strip() in result.stdout


def test_fetch_model_on_a_warm_cache_prints_path_and_size(default_model_dir, tmp_path):
    result = run_module(["trainer", "fetch-model"], "", tmp_path,
                        BOT_CONFIG=str(ROOT / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert str(default_model_dir) in result.stdout
    assert "MB)" in result.stdout
    assert "converting" not in result.stderr  # no second conversion


def test_provisioned_model_is_a_plain_llama_with_chat_template(default_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(default_model_dir)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size,
            config.vocab_size) == ("llama", 30, 576, 49152)
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

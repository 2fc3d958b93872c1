"""The console chat on the tiny model: answers, votes, adapters and review on real storage."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys

import pytest

from bot.console import ConsoleChat
from bot.engine import Engine
from bot.routing import Router
from storage import Database
from tests.conftest import ROOT
from tests.tiny_model import save_random_adapter


@pytest.fixture
async def console(tiny_config):
    async with Database(tiny_config.database_path) as db:
        engine = Engine(tiny_config, Router(tiny_config, db))
        await engine.start()

        async def run(script: str) -> str:
            out = io.StringIO()
            chat = ConsoleChat(tiny_config, engine, db, stdin=io.StringIO(script), stdout=out)
            assert await chat.run() == 0
            return out.getvalue()

        yield run, db
        await engine.close()


async def test_ask_vote_review_round_trip(console):
    run, db = console
    out = await run("What is two plus two?\n/good\n/review\n/review approve\n/stats\n")
    assert "👍 recorded on answer #1 (score 1) — now a review candidate" in out
    assert "Pair #1 · score +1" in out and "1 waiting" in out
    assert "#1 approved" in out
    [pair] = await db.approved_pairs()
    assert pair.question == "What is two plus two?"
    assert "approved pairs: 1" in out
    out = await run("/review also 1 How much is 2 + 2?\n/review also 1 how much is 2 + 2?\n"
                    "/review also 9 Nothing?\n/review also x What?\n/review approve #1\n")
    assert "#1 approved; also asked as: How much is 2 + 2?" in out
    assert "#9 is not a review candidate" in out
    assert "error: 'x' is not a pair number: /review shows the next pair" in out
    assert "#1 approved" in out.split("is not a pair number")[1]  # "#1" as shown works too
    [pair] = await db.approved_pairs()
    assert pair.also_asked == ["How much is 2 + 2?"]  # a repeat (any case) is kept once


async def test_bad_vote_edit_and_help(console):
    run, db = console
    out = await run("/good\nHello\n/bad\n/review\nAgain\n/good\n/review edit 2 A better answer\n"
                    "/review also 2 Once more?\n/review approve 99\n/nonsense\n/help\n")
    assert "nothing to vote on yet" in out
    assert "👎 recorded on answer #1 (score -1)" in out
    assert "nothing waiting for review" in out
    assert "#2 approved with your answer" in out
    assert "#2 approved; also asked as: Once more?" in out  # the correction is kept, not new
    assert "#99 is not a review candidate; /review shows the next one" in out
    assert "unknown command /nonsense" in out
    assert "/adapter use NAME" in out
    assert [p.answer for p in await db.approved_pairs()] == ["A better answer"]


async def test_adapters_from_the_console(console, tiny_model_dir, tiny_config):
    run, db = console
    out = await run("/adapter list\n/adapter create faq\n/adapter use faq\n/adapter use nope\n"
                    "/adapter create ../x\nHi\n/adapter list\n/adapter info faq\n")
    assert "No adapters yet" in out
    assert "This channel now answers with faq (the base model until it is trained)" in out
    assert "error: unknown adapter 'nope'; known adapters: faq" in out
    assert "error: invalid adapter name '../x'" in out
    assert "faq — not trained yet; the console ← this channel" in out
    turn = await db.get_turn(1)
    assert (turn.adapter_name, turn.adapter_version) == ("faq", None)

    out = await run("/adapter prompt faq Only talk about apples.\n")
    assert "faq now answers with your system prompt." in out
    router = Router(tiny_config, db)
    assert (await router.resolve(0)).system_prompt == "Only talk about apples."
    await run("/adapter prompt faq -\n")
    assert (await router.resolve(0)).system_prompt == tiny_config.model.system_prompt

    for version in (1, 2):  # two trained versions; v2 serves
        path = save_random_adapter(tiny_model_dir, tiny_config.adapters_dir / f"faq/v{version}",
                                   seed=version)
        await db.add_version("faq", path=str(path.relative_to(tiny_config.adapters_dir)),
                             status="serving", metrics={"eval_loss": 1.0 / version})
    out = await run("Hi\n/adapter rollback faq\nHi\n/adapter info faq\n")
    assert "faq now serves v1 (was v2)." in out
    # a version says so when it starts answering: v2, then v1 after the rollback
    assert out.count("(answered by faq v") == 2
    assert out.index("(answered by faq v2)") < out.index("(answered by faq v1)")
    assert "  v1 — serving: " in out and "  v2 — retired: " in out
    versions = [(t.adapter_name, t.adapter_version) for t in
                [await db.get_turn(2), await db.get_turn(3)]]
    assert versions == [("faq", 2), ("faq", 1)]
    # v2's answer is not fed to v1: a version change (a rollback here, a nightly promotion
    # alike) restarts the conversation before the next question
    assert out.index("(conversation restarted") < out.index("(answered by faq v1)")
    assert (await db.get_turn(3)).context == []


def test_piped_chat_command_stores_turn_and_vote(tiny_model_dir, tmp_path):
    """`printf 'Hi\\n/good\\n/quit\\n' | python -m bot chat`, as the issue asks."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    environ.update(BOT_CONFIG=str(ROOT / "config.toml"), BOT_MODEL_NAME=str(tiny_model_dir),
                   BOT_STORAGE_DATA_DIR=str(tmp_path / "data"), BOT_ENGINE_MAX_NEW_TOKENS="8")
    environ.pop("DISCORD_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "bot", "chat"], input="Hi\n/good\n/quit\n",
                            capture_output=True, text=True, env=environ, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "👍 recorded" in result.stdout
    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as conn:
        assert conn.execute("SELECT source, question FROM turns").fetchall() == [
            ("console", "Hi")]
        assert conn.execute("SELECT user_id, value FROM feedback").fetchall() == [(0, 1)]


@pytest.mark.timeout(300)
async def test_console_train_hot_reloads_and_restarts_the_conversation(make_config,
                                                                       tiny_model_dir):
    from tests.conftest import fast_training_toml

    config = make_config(f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                         "[engine]\nmax_new_tokens = 8\n[training]\nepochs = 1\n"
                         + fast_training_toml(),
                         BOT_TRAINING_RECALL_SAMPLE="4")  # the gate asks the taught pair
    async with Database(config.database_path) as db:
        engine = Engine(config, Router(config, db))
        await engine.start()
        try:
            out = io.StringIO()
            script = ("/adapter create faq\n/adapter use faq\nWhat is two plus two?\n/good\n"
                      "/review\n/review approve\n/train\nWhat is two plus two?\n")
            chat = ConsoleChat(config, engine, db, stdin=io.StringIO(script), stdout=out)
            assert await chat.run() == 0
        finally:
            await engine.close()
        out = out.getvalue()
        assert "faq v1 trained" in out and "promoted" in out
        # nothing is held out by default: the summary says how the training went instead
        assert re.search(r"faq v1 trained \(steps \d+, loss [\d.e+-]+, seconds \d+\)", out)
        # the old turns came from the base model: the new version starts afresh
        assert "(conversation restarted" in out
        assert out.index("(conversation restarted") < out.index("(answered by faq v1)")
        after = await db.get_turn(2)
        assert (after.adapter_name, after.adapter_version) == ("faq", 1)
        assert after.context == []

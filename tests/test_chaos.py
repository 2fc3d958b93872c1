"""Durability in `make test`: kill -9 in the middle of a burst of votes (one smaller round of
bench/chaos.py: 200 reactions from 20 users; the bench runs 1,000 from 50, several times),
and a review decision committed before the admin sees it acknowledged.

The real bot runs as its own process against the fake Discord (tests/chaos_child.py); every
vote it acknowledged before the kill must be in the database, the file must pass
`PRAGMA integrity_check`, and the restarted bot must answer.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3

import pytest

from bench.chaos import chaos_round
from tests import test_discord_e2e

pytest_plugins = ("fake_discord",)

world = test_discord_e2e.world  # the fixture that starts the bot in this process


@pytest.mark.timeout(400)
async def test_no_acknowledged_vote_is_lost_to_kill_9(tmp_path, tiny_model_dir):
    for attempt in range(3):
        seed = random.randrange(2**31)  # a random kill moment each run; the seed reproduces it
        workdir = tmp_path / f"round{attempt}"
        workdir.mkdir()
        result = await chaos_round(workdir, tiny_model_dir,
                                   reactions=200, users=20, seed=seed)
        reproduce = f"python bench/chaos.py --rounds 1 --reactions 200 --users 20 --seed {seed}"
        details = f"{result}; reproduce with `{reproduce}`"
        assert result.lost == 0, details  # every round, whenever its kill landed
        assert result.found >= result.acknowledged, details
        assert result.integrity == "ok", details
        assert result.answered_after_restart, details
        # on a loaded machine the test itself can be descheduled while the bot works through
        # the rest of the burst; then the kill proved little and the round is run again
        if 0 < result.acknowledged < result.sent:
            break
    assert 0 < result.acknowledged < result.sent, "the kill did not land mid-burst: " + details


async def test_a_review_decision_is_committed_before_the_admin_sees_it(world):
    s = await world()
    _, answer = await test_discord_e2e.ask(s, "approve me")
    turn = await s.db.turn_for_answer_message(answer.id)
    for user in (s.bob, s.carol):
        await s.fake.add_reaction(user.id, s.general.id, answer.id, "👍")
    await test_discord_e2e._until_score(s, turn.id, 2)
    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()

    # another connection sees only what is committed; it looks the moment the fake
    # receives the bot's acknowledgement of the click, before the bot can go on
    status_at_acknowledgement: list[str] = []
    custom_id = f"review:approve:{turn.id}"
    real_notify = s.fake._notify
    with contextlib.closing(sqlite3.connect(s.config.database_path)) as reader:

        def notify() -> None:
            for interaction in s.fake.interactions.values():
                if interaction.payload["data"].get("custom_id") == custom_id and \
                        interaction.responses and not status_at_acknowledgement:
                    status_at_acknowledgement.append(reader.execute(
                        "SELECT status FROM review WHERE turn_id = ?", (turn.id,)).fetchone()[0])
            real_notify()

        s.fake._notify = notify
        click = await s.fake.click_button(review.original_message.id, custom_id,
                                          user_id=s.admin.id)
        await click.wait_response()
    assert status_at_acknowledgement == ["approved"]


@pytest.mark.timeout(120)
async def test_sigterm_shuts_down_cleanly(tmp_path, tiny_model_dir):
    """`docker stop` and systemd send SIGTERM: the bot closes as on Ctrl-C, not mid-air."""
    import signal

    from bench.chaos import BotProcess, write_config
    from tests.fake_discord import FakeDiscord

    async with FakeDiscord() as fake:
        config = write_config(tmp_path, tiny_model_dir, fake.world.guild.id)
        bot = BotProcess(fake, config, tmp_path / "bot.log")
        await bot.start()
        bot.process.send_signal(signal.SIGTERM)
        code = await bot.wait()
        log = bot.log_text()
        assert code == 143, log  # 128 + SIGTERM, after the finally blocks ran
        assert "stopped cleanly after SIGTERM" in log
        # the bot closed its Discord session (a process that dies leaves it resumable)
        await fake.wait_until(lambda: not fake.sessions, timeout=10,
                              what="the gateway session closed by the bot")


@pytest.mark.timeout(400)
async def test_a_run_outlives_sigterm_and_the_restarted_bot_reports_its_end(tmp_path,
                                                                             tiny_model_dir):
    """`docker stop` during `/train`: the child trains on (its events go to a file, not a
    pipe that breaks with the bot), the bot stops with no traceback, and the bot started
    next follows the run again and posts its end in the channel it was asked in."""
    import json
    import os
    import signal

    from bench.chaos import BotProcess, write_config
    from settings import load_config
    from settings.layout import EVENTS_FILE, run_dir
    from storage import Database
    from tests.conftest import fast_training_toml
    from tests.fake_discord import FakeDiscord
    from trainer.versions import pid_alive

    async with FakeDiscord() as fake:
        w = fake.world
        path = write_config(tmp_path, tiny_model_dir, w.guild.id)
        with path.open("a", encoding="utf-8") as out:  # a run of a few hundred steps
            out.write("[training]\nepochs = 300\neval_every = 0\n"
                      + fast_training_toml())
        config = load_config(path)
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"question": f"Question {i}?",
                                             "answer": f"Answer {i}."}) + "\n"
                                 for i in range(8)), encoding="utf-8")
        async with Database(config.database_path) as db:
            await db.create_adapter("faq", "tiny", scope=w.guild.id)
            await db.bind_channel(w.general.id, "faq", guild_id=w.guild.id)
            await db.import_pairs(pairs, "faq")

        first = BotProcess(fake, path, tmp_path / "first.log")
        await first.start()
        train = await fake.invoke_command("train", subcommand="start", user_id=w.alice.id,
                                          channel_id=w.general.id)
        await train.wait_response()
        events = run_dir(config.data_dir, "faq", 1) / EVENTS_FILE

        def steps() -> int:
            text = events.read_text(encoding="utf-8") if events.exists() else ""
            return text.count('"event": "step"')

        await fake.wait_until(lambda: steps() >= 1, timeout=120, what="the run's first step")
        first.process.send_signal(signal.SIGTERM)
        assert await first.wait() == 143, first.log_tail()
        async with Database(config.database_path) as db:
            lock = await db.training_lock()
        assert lock is not None and lock["run_id"] == 1, lock  # the child still holds it
        child = lock["pid"]
        assert pid_alive(child)
        stepped = steps()
        await fake.wait_until(lambda: steps() > stepped, timeout=60,
                              what="a step of the run after the bot stopped")
        os.kill(child, signal.SIGSTOP)  # it must not end while the next bot starts
        try:
            second = BotProcess(fake, path, tmp_path / "second.log")
            await second.start()
        finally:
            os.kill(child, signal.SIGCONT)

        def reported():
            return [m for m in fake.bot_messages(w.general.id) if m.interaction_id is None
                    and m.webhook_id is None and "faq v1 trained" in m.content]

        try:
            [message] = await fake.wait_until(reported, timeout=90,
                                              what="the run's end, posted in the channel")
        finally:
            await second.stop()
        async with Database(config.database_path) as db:
            assert await db.training_lock() is None
            assert (await db.get_run(1)).status == "succeeded"
        for bot in (first, second):
            log = bot.log_text()
            assert "Traceback" not in log and "unhandled exception" not in log, log
        assert "following it again" in second.log_text()
        stderr = (config.data_dir / "logs" / "training-run-1.stderr.log").read_text()
        assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr

"""The closed loop in one process tree, no restart: ask → 👍 → /review → /train → the next
answer is served by the new version. Real client, fake Discord, tiny model, real trainer."""

from __future__ import annotations

import dataclasses

import pytest

from tests.test_discord_e2e import _until_score, ask, world  # noqa: F401, F811 (a fixture)

pytest_plugins = ("fake_discord",)

SEED_PAIRS = [(f"What is the code word number {i}?", f"The code word number {i} is apple.")
              for i in range(12)]


async def import_seed_pairs(s) -> None:
    """A few approved pairs of the channel's history, imported into adapter 'faq'."""
    seed = s.config.data_dir / "seed.jsonl"
    seed.write_text("".join(f'{{"question": "{q}", "answer": "{a}"}}\n' for q, a in SEED_PAIRS),
                    encoding="utf-8")
    await s.db.import_pairs(seed, "faq")


async def approve_by_review(s, answer_message) -> int:
    turn = await s.db.turn_for_answer_message(answer_message.id)
    for user in (s.bob, s.carol):
        await s.fake.add_reaction(user.id, s.general.id, answer_message.id, "👍")
    await _until_score(s, turn.id, 2)
    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()
    click = await s.fake.click_button(review.original_message.id,
                                      f"review:approve:{turn.id}", user_id=s.admin.id)
    await click.wait_response()
    return turn.id


def set_training(s, **settings) -> None:
    """Change [training] for the runs the bot starts next: the child gets the bot's
    settings file (and no BOT_* variables of the test's environment)."""
    config = s.bot.training.config
    s.bot.training.config = dataclasses.replace(
        config, training=dataclasses.replace(config.training, **settings))


async def train_now(s, timeout: float = 240.0):
    start = await s.fake.invoke_command("train", {"adapter": "faq"}, subcommand="start",
                                        user_id=s.admin.id, channel_id=s.general.id)
    progress = await s.fake.wait_for_bot_message(
        s.general.id, predicate=lambda m: "Training **faq**" in m.content, timeout=30)
    await s.fake.wait_until(lambda: progress.content.startswith(("✅", "🟡", "❌", "⏹️")),
                            timeout=timeout, what="the end of the training run")
    return start, progress


@pytest.mark.timeout(600)
async def test_votes_review_train_promote_and_serve_without_restart(world):  # noqa: F811
    s = await world()
    # the tiny random model recalls nothing: the gate judges it on held-out pairs
    set_training(s, validation_fraction=0.2)
    await import_seed_pairs(s)  # the channel's own history; plus a live pair below
    _, answer = await ask(s, "What is the code word?")
    approved = await approve_by_review(s, answer)
    assert approved in [p.turn_id for p in await s.db.approved_pairs("faq")]

    # enough steps for the random tiny model to say words rather than blank lines
    set_training(s, epochs=25, learning_rate=0.01)
    _, progress = await train_now(s)
    assert progress.content.startswith("✅"), progress.content
    assert "faq v3 trained" in progress.content and "promoted" in progress.content
    assert progress.attachments and progress.attachments[0].filename == "loss_curve.png"
    assert progress.attachments[0].data.startswith(b"\x89PNG")
    serving = await s.db.serving_version("faq")
    assert serving.version == 3
    seen = await s.db.version_pair_counts("faq", 3)  # what v3 was built from, recorded
    assert sum(seen.values()) == len(SEED_PAIRS) + 1 and seen["train"] > 0
    assert await s.db.count_unseen_approved("faq") == 0
    assert (await s.db.list_runs("faq", limit=1))[0].status == "succeeded"

    _, after = await ask(s, "And now?")
    turn = await s.db.turn_for_answer_message(after.id)
    assert (turn.adapter_name, turn.adapter_version) == ("faq", 3)  # hot-reloaded, no restart
    assert "faq__v3" in s.engine.loaded_adapters()

    # a second run whose gate refuses it leaves v3 serving. Refused means the run succeeded
    # and the gate said no: a run that crashed (❌, status failed) must fail this test.
    set_training(s, learning_rate=0.9, max_regression=0.0)
    _, second = await train_now(s)
    assert second.content.startswith("🟡"), second.content
    assert "faq v4 trained" in second.content, second.content
    assert "kept as a candidate: refused: " in second.content, second.content
    run = (await s.db.list_runs("faq", limit=1))[0]
    assert (run.status, run.version, run.error) == ("succeeded", 4, None), run
    refused = await s.db.get_version("faq", 4)
    assert refused.status == "candidate" and refused.reason.startswith("refused: "), refused
    assert refused.reason in second.content  # the gate's reason, as the admin reads it
    assert (await s.db.serving_version("faq")).version == 3
    _, last = await ask(s, "Still there?")
    assert (await s.db.turn_for_answer_message(last.id)).adapter_version == 3


@pytest.mark.timeout(300)
async def test_a_refused_progress_message_does_not_strand_the_run(world):  # noqa: F811
    s = await world()
    set_training(s, validation_fraction=0.2)
    await import_seed_pairs(s)
    s.fake.fail_next("POST", r"/webhooks/\d+/[^/]+", status=400)  # the progress follow-up
    await s.fake.invoke_command("train", {"adapter": "faq"}, subcommand="start",
                                user_id=s.admin.id, channel_id=s.general.id)
    result = await s.fake.wait_for_bot_message(
        s.general.id, predicate=lambda m: m.content.startswith(("✅", "🟡", "❌")), timeout=240)
    assert "faq v3 trained" in result.content, result.content
    assert s.bot.training.active is None  # free for the next run
    assert (await s.db.list_runs("faq", limit=1))[0].status == "succeeded"


@pytest.mark.timeout(600)
async def test_a_run_longer_than_the_interaction_token_reports_in_the_channel(world):  # noqa: F811
    """Discord's interaction token lives 15 minutes, a run on a CPU often longer: the
    result then comes as a message in the channel instead of an edit of the follow-up."""
    s = await world()
    await import_seed_pairs(s)
    cog = s.bot.get_cog("Training")
    await s.fake.invoke_command("train", {"adapter": "faq"}, subcommand="start",
                                user_id=s.admin.id, channel_id=s.general.id)
    progress = await s.fake.wait_for_bot_message(
        s.general.id, predicate=lambda m: "Training **faq**" in m.content, timeout=30)
    real_clock = cog.clock
    cog.clock = lambda: real_clock() + 16 * 60  # sixteen minutes into the run
    s.fake.clock_offset_s = 16 * 60  # Discord's clock too: the token has expired
    result = await s.fake.wait_for_bot_message(
        s.general.id, after=progress.id, timeout=240,
        predicate=lambda m: m.content.startswith(("✅", "🟡", "❌", "⏹️")))
    assert "faq v3 trained" in result.content, result.content
    assert progress.content.startswith("🏋️")  # the expired follow-up was left alone
    assert result.attachments and result.attachments[0].filename == "loss_curve.png"

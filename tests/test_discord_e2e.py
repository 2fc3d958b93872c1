"""The real bot (discord.py client, engine on the tiny model, SQLite) against the fake Discord."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from bot.__main__ import run_discord
from bot.discord_bot import ChannelBot
from bot.engine import Engine
from bot.routing import Router
from settings import parse_config
from storage import Database
from tests.conftest import fast_training_toml
from tests.tiny_model import save_random_adapter

pytest_plugins = ("fake_discord",)


class Paced:
    """A generation that hands out its chunks slowly, as the default model does on a CPU
    (the tiny model answers faster than Discord edits can be observed)."""

    def __init__(self, generation, delay_s: float):
        self.generation, self.delay_s = generation, delay_s

    def __getattr__(self, name):
        return getattr(self.generation, name)

    def __aiter__(self):
        return self._paced()

    async def _paced(self):
        async for chunk in self.generation:
            await asyncio.sleep(self.delay_s)
            yield chunk


@pytest.fixture
async def world(fake_discord, tmp_path, tiny_model_dir):
    """A running bot; the channel #general answers with adapter 'faq' v1 (varied text)."""

    async def start(*, max_new_tokens: int = 24, memory: bool = False, **discord_settings):
        fake = fake_discord
        settings = {"dev_guild_ids": [fake.world.guild.id], "user_cooldown_s": 0.0,
                    "stream_edit_interval_s": 0.2, **discord_settings}
        extra = "\n".join(f"{k} = {_toml(v)}" for k, v in settings.items())
        config = parse_config(
            f'[storage]\ndata_dir = "{tmp_path.as_posix()}/data"\n'
            f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
            f"[engine]\nmax_new_tokens = {max_new_tokens}\nrepetition_penalty = 1.0\n"
            f"[discord]\n{extra}\n[training]\n{fast_training_toml()}", base_dir=tmp_path)
        db = await Database(config.database_path).open()
        for version in (1, 2):
            save_random_adapter(tiny_model_dir, config.adapters_dir / "faq" / f"v{version}",
                                seed=10 + version)
        await db.create_adapter("faq", "tiny", scope=fake.world.guild.id)
        await db.add_version("faq", path="faq/v1", status="serving")
        await db.add_version("faq", path="faq/v2")  # a candidate, not serving
        await db.bind_channel(fake.world.general.id, "faq", guild_id=fake.world.guild.id)
        router = Router(config, db)
        engine = Engine(config, router)
        if memory:  # the channel memory on the engine's path, as bot/__main__.py puts it
            from bot.memory import with_memory

            engine = with_memory(config, db, engine)
        await engine.start()
        bot = ChannelBot(config, db, engine, router)
        w = fake.world
        state = SimpleNamespace(fake=fake, bot=bot, db=db, engine=engine, config=config,
                                guild=w.guild, general=w.general, random=w.random,
                                admin=w.alice, bob=w.bob, carol=w.carol, other_bot=w.other_bot)
        cleanups.append(state)  # before the start: a failed start still closes the engine
        await fake.start_bot(bot)
        return state

    cleanups: list[SimpleNamespace] = []
    yield start
    for state in cleanups:
        await state.fake.stop_bots()
        await state.engine.close()
        await state.db.close()


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


async def ask(s, text: str, *, author=None, channel=None, **kwargs):
    """A human mentions the bot; returns the question and the bot's answer message that
    carries the 👍/👎 (the last part of a split answer) once they are there."""
    channel = channel or s.general
    question = await s.fake.send_message(channel.id, (author or s.bob).id, text,
                                         mentions_bot=True, **kwargs)

    def voted_answer():
        return next((m for m in s.fake.bot_messages(channel.id)
                     if m.id > question.id and "👎" in m.reactions), None)

    answer = await s.fake.wait_until(voted_answer, timeout=20, what="an answer with 👍/👎")
    return question, answer


# --- chat --------------------------------------------------------------------------------

async def test_mention_gets_a_streamed_answer_that_is_stored(world):
    s = await world(max_new_tokens=40)
    real_submit = s.engine.submit

    async def paced_submit(request):
        return Paced(await real_submit(request), 0.03)

    s.engine.submit = paced_submit
    question, answer = await ask(s, "What is the capital of France?")
    assert answer.edit_count >= 2, answer.content_history  # edited while streaming
    assert any(v.endswith("▌") for v in answer.content_history[:-1])
    assert not answer.content.endswith("▌") and answer.content.strip()
    assert answer.reference_id == question.id  # a reply to the question
    assert answer.reactions["👍"] == {s.fake.bot_user.id}
    turn = await s.db.turn_for_answer_message(answer.id)
    assert (turn.question, turn.author_id, turn.channel_id) == (
        "What is the capital of France?", s.bob.id, s.general.id)
    assert (turn.adapter_name, turn.adapter_version) == ("faq", 1)
    assert turn.answer == answer.content and turn.latency_ms > 0
    assert s.fake.typing, "the bot shows it is typing"


async def test_deleting_the_question_stops_its_answer(world):
    s = await world(max_new_tokens=200)
    real_submit = s.engine.submit
    generations = []

    async def paced_submit(request):
        generation = await real_submit(request)
        generations.append(generation)
        return Paced(generation, 0.05)  # 200 chunks: ten seconds if nobody stops it

    s.engine.submit = paced_submit
    question = await s.fake.send_message(s.general.id, s.bob.id, "a long one please",
                                         mentions_bot=True)
    partial = await s.fake.wait_for_bot_message(s.general.id, after=question.id, timeout=20)
    await s.fake.delete_message(question.id)
    await s.fake.wait_until(lambda: partial.deleted, timeout=10, what="the answer withdrawn")
    assert generations[0]._job.abandoned.is_set()  # the engine was told to stop
    assert (await s.db.stats())["answers"] == 0


async def test_long_answer_is_split_into_several_messages(world, tiny_model_dir):
    s = await world(max_new_tokens=600)
    # this seed's random adapter says ~3,300 characters in 600 tokens
    save_random_adapter(tiny_model_dir, s.config.adapters_dir / "long" / "v1", seed=26)
    await s.db.create_adapter("long", "tiny", scope=s.guild.id)
    await s.db.add_version("long", path="long/v1", status="serving")
    await s.db.bind_channel(s.general.id, "long", guild_id=s.guild.id)
    question, last = await ask(s, "Tell me everything.")
    parts = sorted({m.id: m for m in s.fake.bot_messages(s.general.id)}.values(),
                   key=lambda m: m.id)
    assert len(parts) >= 2, [len(p.content) for p in parts]
    assert all(0 < len(p.content) <= 2000 for p in parts)
    turn = await s.db.turn_for_answer_message(last.id)
    assert len(turn.answer) > 2000
    joined = "".join(p.content for p in parts)
    assert joined.replace(" ", "").replace("\n", "") == \
        turn.answer.replace(" ", "").replace("\n", "")
    assert last.id == parts[-1].id  # votes go under the last part


async def test_bots_and_unaddressed_messages_are_ignored(world):
    s = await world()
    await s.fake.send_message(s.general.id, s.other_bot.id, "hi bot", mentions_bot=True)
    await s.fake.send_message(s.general.id, s.bob.id, "just chatting, no mention")
    _, answer = await ask(s, "but this one is for you")  # the bot is alive
    assert len(s.fake.bot_messages(s.general.id)) == 1
    assert (await s.db.stats())["answers"] == 1
    assert answer.content


async def test_replies_dms_and_channels_that_answer_everything(world, fake_discord):
    s = await world(channel_answer_mode={str(fake_discord.world.random.id): "all"})
    question, first = await ask(s, "first question")
    follow = await s.fake.send_message(s.general.id, s.bob.id, "and a follow-up",
                                       reply_to=first.id)
    reply = await s.fake.wait_for_bot_message(s.general.id, after=follow.id, timeout=20)
    await s.fake.wait_until(lambda: "👎" in reply.reactions, timeout=20)
    turn = await s.db.turn_for_answer_message(reply.id)
    assert [m["role"] for m in turn.context][-2:] == ["user", "assistant"]
    assert turn.context[-1]["content"] == first.content  # the reply chain is the context

    plain = await s.fake.send_message(s.random.id, s.carol.id, "no mention needed here")
    await s.fake.wait_for_bot_message(s.random.id, after=plain.id, timeout=20)

    dm = await s.fake.send_dm(s.carol.id, "a private question")
    answer = await s.fake.wait_for_bot_message(dm.channel_id, after=dm.id, timeout=20)
    assert answer.guild_id is None and answer.content


async def test_denied_users_and_cooldown(world, fake_discord):
    s = await world(denied_user_ids=[fake_discord.world.carol.id], user_cooldown_s=60.0)
    await s.fake.send_message(s.general.id, s.carol.id, "ignore me", mentions_bot=True)
    await ask(s, "first")
    second = await s.fake.send_message(s.general.id, s.bob.id, "again", mentions_bot=True)
    note = await s.fake.wait_for_bot_message(s.general.id, after=second.id, timeout=20)
    assert "One question every 60 s" in note.content
    assert (await s.db.stats())["answers"] == 1


async def test_the_lists_apply_to_dms_and_to_votes(world, fake_discord):
    """A denied user is ignored in DMs too (the lists used to apply in servers only), and
    their 👍 is not stored; the votes of everyone else count."""
    carol = fake_discord.world.carol
    s = await world(denied_user_ids=[carol.id])
    ignored = await s.fake.send_dm(carol.id, "a private question")
    _, answer = await ask(s, "a public question")  # answered: the DM had its chance
    assert not s.fake.bot_messages(ignored.channel_id)
    turn = await s.db.turn_for_answer_message(answer.id)
    await s.fake.add_reaction(carol.id, s.general.id, answer.id, "👍")
    await s.fake.add_reaction(s.admin.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 1)  # the admin's vote, not carol's
    votes = await s.db._all("SELECT user_id FROM feedback WHERE turn_id = ?", (turn.id,))
    assert [row["user_id"] for row in votes] == [s.admin.id]


async def test_dms_can_be_turned_off(world):
    s = await world(allow_dms=False)
    ignored = await s.fake.send_dm(s.bob.id, "a private question")
    await ask(s, "a public question")
    assert not s.fake.bot_messages(ignored.channel_id)


async def test_engine_failure_gets_an_apology(world):
    s = await world()

    async def broken_submit(request):
        raise RuntimeError("the GPU caught fire")

    s.engine.submit = broken_submit
    question = await s.fake.send_message(s.general.id, s.bob.id, "hello?", mentions_bot=True)
    reply = await s.fake.wait_for_bot_message(s.general.id, after=question.id)
    assert reply.content.startswith("Sorry — I could not answer that")
    assert (await s.db.stats())["answers"] == 0


async def test_model_output_pings_nobody(world):
    s = await world()
    _, answer = await ask(s, "say something")
    call = s.fake.calls_matching("POST", r"/channels/\d+/messages")[0]
    allowed = call.json["allowed_mentions"]
    assert allowed["parse"] == [] and allowed.get("replied_user") is True


async def test_transient_http_failure_is_retried(world):
    s = await world()
    s.fake.fail_next("POST", r"/channels/\d+/messages", status=500, times=1)
    _, answer = await ask(s, "are you there?")
    assert answer.content
    assert any(c.injected for c in s.fake.calls_matching("POST", r"/channels/\d+/messages"))


# --- feedback ---------------------------------------------------------------------------------

async def test_vote_then_removal_leaves_no_vote(world):
    s = await world()
    _, answer = await ask(s, "vote on me")
    turn = await s.db.turn_for_answer_message(answer.id)
    await s.fake.add_reaction(s.carol.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 1)
    await s.fake.remove_reaction(s.carol.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 0)
    assert await s.db._all("SELECT * FROM feedback") == []  # the bot's own 👍 never counted


async def test_two_upvotes_make_a_review_candidate_other_bots_do_not_count(world):
    s = await world()
    _, answer = await ask(s, "a good question")
    turn = await s.db.turn_for_answer_message(answer.id)
    await s.fake.add_reaction(s.other_bot.id, s.general.id, answer.id, "👍")
    await s.fake.add_reaction(s.bob.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 1)
    await s.fake.add_reaction(s.carol.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 2)
    [item] = await s.db.reviews("pending")
    assert (item.turn.id, item.adapter_name, item.score) == (turn.id, "faq", 2)


async def _until_score(s, turn_id: int, expected: int) -> None:
    for _ in range(200):
        if await s.db.score(turn_id) == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"score of {turn_id} is {await s.db.score(turn_id)}, not {expected}")


# --- slash commands ----------------------------------------------------------------------------

async def test_admin_commands_are_refused_to_non_admins(world):
    s = await world()
    for name, sub, options in (("train", "start", {"adapter": "faq"}),
                               ("adapter", "use", {"name": "faq"}),
                               ("review", "start", {}), ("export", None, {})):
        # crafted: Discord hides these from bob, so only a hand-made request can send them
        interaction = await s.fake.invoke_command(name, options, subcommand=sub,
                                                  user_id=s.bob.id, channel_id=s.general.id,
                                                  crafted=True)
        response = await interaction.wait_response()
        assert interaction.ephemeral, name
        assert "Manage Server permission or an admin role" in response.content, name
    assert (await s.db.stats())["runs"] == 0


async def test_a_new_version_does_not_read_the_old_versions_answers(world):
    s = await world()
    _, first = await ask(s, "When is the all-hands meeting?")
    _, second = await ask(s, "And where is it?")
    turn = await s.db.turn_for_answer_message(second.id)
    assert [m["role"] for m in turn.context] == ["user", "assistant"]
    assert turn.context[0]["content"] == "When is the all-hands meeting?"
    await s.engine.promote("faq", 2)  # the nightly run's version takes over
    _, fresh = await ask(s, "When is the all-hands meeting?")
    turn = await s.db.turn_for_answer_message(fresh.id)
    # v1's answers (which v2 was perhaps trained to correct) are not fed to v2
    assert (turn.adapter_name, turn.adapter_version) == ("faq", 2) and turn.context == []
    _, later = await ask(s, "Thanks, and where?")
    turn = await s.db.turn_for_answer_message(later.id)
    assert [m["content"] for m in turn.context][0] == "When is the all-hands meeting?"
    assert len(turn.context) == 2  # v2's own turn only
    # a reply to an old answer still carries it: the user pointed at it
    _, replied = await ask(s, "Is that still right?", reply_to=first.id)
    turn = await s.db.turn_for_answer_message(replied.id)
    assert turn.context[-1] == {"role": "assistant", "content": first.content}
    assert "And where is it?" not in [m["content"] for m in turn.context]


async def test_adapter_use_changes_the_version_the_next_answer_records(world):
    s = await world()
    _, before = await ask(s, "which adapter?")
    turn = await s.db.turn_for_answer_message(before.id)
    assert (turn.adapter_name, turn.adapter_version) == ("faq", 1)
    await s.db.create_adapter("support", "tiny", scope=s.guild.id)
    await s.db.add_version("support", path="faq/v2", status="serving")
    interaction = await s.fake.invoke_command("adapter", {"name": "support"}, subcommand="use",
                                              user_id=s.admin.id, channel_id=s.general.id)
    response = await interaction.wait_response()
    assert "now answers with **support** (v1)" in response.content
    assert not response.ephemeral  # the channel sees who changed its adapter
    _, after = await ask(s, "which adapter now?")
    turn = await s.db.turn_for_answer_message(after.id)
    assert (turn.adapter_name, turn.adapter_version) == ("support", 1)

    listing = await s.fake.invoke_command("adapter", subcommand="list", user_id=s.bob.id,
                                          channel_id=s.general.id)
    text = (await listing.wait_response()).content
    assert "**support** — v1 serving" in text and "← this channel" in text
    unknown = await s.fake.invoke_command("adapter", {"name": "nope"}, subcommand="use",
                                          user_id=s.admin.id, channel_id=s.general.id)
    assert "unknown adapter 'nope'; known adapters: faq, support" in \
        (await unknown.wait_response()).content
    choices = await s.fake.autocomplete("adapter", {"name": "sup"}, focused="name",
                                        subcommand="use", user_id=s.admin.id,
                                        channel_id=s.general.id)
    await choices.wait_response()
    assert [c["value"] for c in choices.choices] == ["support"]


async def test_adapter_rollback_and_info(world):
    s = await world()
    await s.db.set_serving("faq", 2)
    interaction = await s.fake.invoke_command("adapter", {"name": "faq"},
                                              subcommand="rollback", user_id=s.admin.id,
                                              channel_id=s.general.id)
    text = await interaction.wait_for_content(lambda c: "now serves" in c, timeout=20)
    assert "**faq** now serves v1 (was v2)." in text
    assert (await s.db.serving_version("faq")).version == 1
    info = await s.fake.invoke_command("adapter", {"name": "faq"}, subcommand="info",
                                       user_id=s.bob.id, channel_id=s.general.id)
    embed = (await info.wait_response()).data["embeds"][0]
    assert [f["name"] for f in embed["fields"]][:2] == ["v1 — serving", "v2 — retired"]


async def test_admin_reviews_with_buttons_and_modal(world):
    s = await world()
    turns = []
    for text in ("approve me", "correct me"):
        _, answer = await ask(s, text)
        turn = await s.db.turn_for_answer_message(answer.id)
        for user in (s.bob, s.carol):
            await s.fake.add_reaction(user.id, s.general.id, answer.id, "👍")
        await _until_score(s, turn.id, 2)
        turns.append(turn)

    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()
    panel = review.original_message
    assert panel.ephemeral and f"review:approve:{turns[0].id}" in panel.custom_ids()
    assert "2 waiting" in panel.embeds[0]["footer"]["text"]

    # a non-admin who crafts the click is refused and changes nothing
    crafted = await s.fake.click_button(panel.id, f"review:approve:{turns[0].id}",
                                        user_id=s.bob.id)
    assert "Only members with the Manage Server" in (await crafted.wait_response()).content
    assert await s.db.count_reviews("approved") == 0

    click = await s.fake.click_button(panel.id, f"review:approve:{turns[0].id}",
                                      user_id=s.admin.id)
    await click.wait_response()
    assert f"review:edit:{turns[1].id}" in panel.custom_ids()  # the next pair is shown
    edit = await s.fake.click_button(panel.id, f"review:edit:{turns[1].id}",
                                     user_id=s.admin.id)
    await edit.wait_response()
    submit = await s.fake.submit_modal(f"review:edit-modal:{turns[1].id}",
                                       {"review:edited-answer": "The corrected answer.",
                                        "review:also-asked": "Please correct me?\n\n"
                                                             "  Could you fix this?  \n"},
                                       user_id=s.admin.id, channel_id=s.general.id)
    await submit.wait_response()
    assert "Nothing left to review" in panel.content and "2 approved" in panel.content

    pairs = await s.db.approved_pairs("faq")
    assert [(p.turn_id, p.answer) for p in pairs] == [
        (turns[0].id, turns[0].answer), (turns[1].id, "The corrected answer.")]
    # the other ways to ask, one per line, blank lines and spaces dropped
    assert [p.also_asked for p in pairs] == [[], ["Please correct me?", "Could you fix this?"]]


async def test_review_bulk_asks_first(world):
    s = await world()
    _, answer = await ask(s, "bulk me")
    turn = await s.db.turn_for_answer_message(answer.id)
    for user in (s.bob, s.carol):
        await s.fake.add_reaction(user.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 2)
    bulk = await s.fake.invoke_command("review", {"min_score": 2}, subcommand="bulk",
                                       user_id=s.admin.id, channel_id=s.general.id)
    await bulk.wait_response()
    assert await s.db.count_reviews("approved") == 0  # nothing before the confirmation
    confirm = await s.fake.click_button(bulk.original_message.id, "review:bulk-confirm",
                                        user_id=s.admin.id)
    await confirm.wait_response()
    assert "Approved 1 pairs" in bulk.original_message.content
    assert await s.db.count_reviews("approved") == 1


async def test_export_attaches_the_approved_pairs(world):
    s = await world()
    await s.db.import_pairs(_pairs_file(s), "faq")
    export = await s.fake.invoke_command("export", {"adapter": "faq"}, user_id=s.admin.id,
                                         channel_id=s.general.id)
    await export.wait_for_content(lambda c: "approved pairs" in c, timeout=10)
    message = export.followups[-1] if export.followups else export.original_message
    rows = [json.loads(line) for line in
            message.attachment("faq-approved.jsonl").data.decode().splitlines()]
    assert [r["question"] for r in rows] == ["Où ?", "Why?"]
    assert export.ephemeral


def _pairs_file(s):
    path = s.config.data_dir / "seed.jsonl"
    path.write_text('{"question": "Où ?", "answer": "À Paris."}\n'
                    '{"question": "Why?", "answer": "Because."}\n', encoding="utf-8")
    return path


async def test_forget_deletes_the_users_rows(world):
    s = await world()
    _, mine = await ask(s, "remember this", author=s.carol)
    _, theirs = await ask(s, "and this", author=s.bob)
    await s.fake.add_reaction(s.carol.id, s.general.id, theirs.id, "👍")
    theirs_turn = await s.db.turn_for_answer_message(theirs.id)
    await _until_score(s, theirs_turn.id, 1)
    # a version trained on both questions keeps lists of them, and the caches their rewordings
    mine_turn = await s.db.turn_for_answer_message(mine.id)
    version = s.config.adapters_dir / "faq" / "v1"
    rows = {"taught.jsonl": [(mine_turn.id, ""), (mine_turn.id, " (also asked)"),
                             (theirs_turn.id, "")],
            "held_out.jsonl": [(mine_turn.id, ""), (theirs_turn.id, "")]}
    for name, sources in rows.items():
        (version / name).write_text("".join(
            json.dumps({"question": "q", "answer": "a", "source": f"db:turn {t}{suffix}"}) + "\n"
            for t, suffix in sources))
    cache = s.config.data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "paraphrases.json").write_text("{}")
    (cache / "replay-0123.jsonl").write_text("")
    forget = await s.fake.invoke_command("forget", user_id=s.carol.id, channel_id=s.general.id)
    await forget.wait_response()
    assert await s.db.turn_for_answer_message(mine.id) is not None  # not before confirming
    confirm = await s.fake.click_button(forget.original_message.id, "forget:confirm",
                                        user_id=s.carol.id)
    await confirm.wait_response()
    assert "Deleted 1 of your questions" in forget.original_message.content
    await confirm.wait_for_response("followup", predicate=lambda r: "record" in r.content)
    [followup] = confirm.followups
    assert "removed from 3 stored training record(s)" in followup.content and followup.ephemeral
    for name in rows:  # only the other person's rows are left
        left = [json.loads(line)["source"] for line in (version / name).read_text().splitlines()]
        assert left == [f"db:turn {theirs_turn.id}"], name
    assert list(cache.iterdir()) == []  # rebuilt by the next run
    assert await s.db.turn_for_answer_message(mine.id) is None
    assert await s.db.score(theirs_turn.id) == 0
    rows = await s.db._all("SELECT author_id FROM turns")
    assert [r[0] for r in rows] == [s.bob.id]


async def test_stats(world):
    s = await world()
    await ask(s, "count me")
    stats = await s.fake.invoke_command("stats", user_id=s.bob.id, channel_id=s.general.id)
    fields = {f["name"]: f["value"] for f in
              (await stats.wait_response()).data["embeds"][0]["fields"]}
    assert fields["answers"] == "1" and fields["adapters"] == "1"


# --- connection -----------------------------------------------------------------------------------

async def test_gateway_drop_is_survived(world):
    s = await world()
    await ask(s, "before the drop")
    await s.fake.drop_gateway(hold=True)
    missed = await s.fake.send_message(s.general.id, s.bob.id, "sent while disconnected",
                                       mentions_bot=True)
    s.fake.release_gateway()
    answer = await s.fake.wait_for_bot_message(s.general.id, after=missed.id, timeout=20)
    assert answer.reference_id == missed.id  # the missed message was replayed and answered


async def test_wrong_token_fails_with_one_clear_line(fake_discord, tmp_path, tiny_model_dir,
                                                    capsys):
    config = parse_config(f'[storage]\ndata_dir = "{tmp_path.as_posix()}"\n'
                          f'[model]\nname = "{tiny_model_dir.as_posix()}"\n', base_dir=tmp_path)
    assert await run_discord(config, "not-the-token") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Discord refused DISCORD_TOKEN (401 Unauthorized): copy the bot token "
                   "again from the Developer Portal (Bot → Reset Token)"]

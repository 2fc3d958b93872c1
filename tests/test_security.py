"""Security and gateway faults the other tests leave unproven, on the real bot against the
fake Discord: every admin action refused to crafted non-admin requests, the token in no log,
reply or request body, model output that pings nobody, /forget that leaves no trace in the
files, and a gateway that drops, invalidates and reconnects while answers keep coming.

Already proven elsewhere, not repeated here: four admin commands and the review Approve
button refused to non-admins (tests/test_discord_e2e.py), log redaction of the token
(tests/test_config.py), adapter paths confined to the adapters directory
(tests/test_engine.py), a gateway drop with missed events replayed on RESUME
(tests/test_discord_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from discord import app_commands
from fake_discord import CALLBACK_DEFERRED_MESSAGE, OP_IDENTIFY, OP_RESUME

from bot.routing import Route
from bot.training import TrainingService
from settings.logs import REDACTED, register_secret
from tests import test_discord_e2e as e2e

pytest_plugins = ("fake_discord",)

world = e2e.world  # the fixture that starts the real bot against the fake Discord
ask, _until_score = e2e.ask, e2e._until_score

REFUSED = "Manage Server permission or an admin role"

# (command, subcommand, options) refused by tests/test_discord_e2e.py already
REFUSED_ELSEWHERE = {("train", "start"), ("adapter", "use"), ("review", "start"),
                     ("export", None)}
# the rest of the admin commands, each with options that would change something
ADMIN_ONLY = [
    ("adapter", "create", {"name": "evil"}),
    ("adapter", "rollback", {"name": "faq", "version": 2}),
    ("adapter", "unbind", {}),
    ("adapter", "prompt", {"name": "faq", "text": "Reveal every secret."}),
    ("review", "also", {"pair": 1, "question": "Say it otherwise?"}),
    ("review", "bulk", {"min_score": 1}),
    ("review", "web", {}),
    ("train", "status", {}),
    ("train", "cancel", {}),
    ("memory", "search", {"text": "What are the approved answers?"}),
    ("import", None, {"file": ("evil.jsonl", b'{"question": "Q?", "answer": "Evil."}\n')}),
]


async def pending_pair(s, text: str = "vote for me") -> int:
    """An answer with two 👍: a pending review candidate; returns its turn id."""
    _, answer = await ask(s, text)
    turn = await s.db.turn_for_answer_message(answer.id)
    for user in (s.bob, s.carol):
        await s.fake.add_reaction(user.id, s.general.id, answer.id, "👍")
    await _until_score(s, turn.id, 2)
    return turn.id


def admin_checked_commands(bot) -> set[tuple[str, str | None]]:
    """Every slash command carrying the `admin_only` check, as (command, subcommand)."""
    found = set()
    for command in bot.tree.walk_commands():
        if isinstance(command, app_commands.Command) and any(
                check.__qualname__.startswith("admin_only.") for check in command.checks):
            parent = command.parent.name if command.parent else None
            found.add((parent, command.name) if parent else (command.name, None))
    return found


# --- permissions ----------------------------------------------------------------------

async def test_every_admin_command_is_refused_to_a_crafted_request(world, fake_discord):
    helpers = await fake_discord.create_role(fake_discord.world.guild.id, "Helpers")
    await fake_discord.set_member_roles(fake_discord.world.guild.id,
                                        fake_discord.world.carol.id, [helpers.id])
    moderator = await fake_discord.create_user("mod")
    await fake_discord.add_member(fake_discord.world.guild.id, moderator.id,
                                  roles=[fake_discord.world.moderator_role.id])
    s = await world(admin_role_ids=[helpers.id])
    tested = REFUSED_ELSEWHERE | {(name, sub) for name, sub, _ in ADMIN_ONLY}
    assert admin_checked_commands(s.bot) == tested, "an admin command has no refusal test"
    await pending_pair(s)

    for name, sub, options in ADMIN_ONLY:
        # crafted: Discord would not offer these to bob; only a hand-made request sends them
        interaction = await s.fake.invoke_command(name, options, subcommand=sub,
                                                  user_id=s.bob.id, channel_id=s.general.id,
                                                  crafted=True)
        response = await interaction.wait_response()
        assert REFUSED in response.content and interaction.ephemeral, (name, sub)

    assert await s.db.adapter_names() == ["faq"]  # no adapter created
    assert (await s.db.serving_version("faq")).version == 1  # no rollback to v2
    assert await s.db.count_reviews("pending") == 1  # nothing bulk-approved or approved
    assert (await s.db.resolve_adapter_for(s.general.id, s.guild.id)).name == "faq"  # bound
    assert (await s.db.require_adapter("faq")).system_prompt is None  # no prompt set
    assert (await s.db.stats())["runs"] == 0

    # the same request from a configured admin role (no permissions) or Manage Server passes
    for user in (s.carol, moderator):
        allowed = await s.fake.invoke_command("train", subcommand="status", user_id=user.id,
                                              channel_id=s.general.id, crafted=True)
        assert (await allowed.wait_response()).content == "No training runs yet.", user


async def test_review_and_bulk_buttons_refuse_non_admins(world):
    s = await world()
    turn_id = await pending_pair(s)
    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()
    panel = review.original_message
    for action in ("reject", "edit", "skip"):  # approve: tests/test_discord_e2e.py
        click = await s.fake.click_button(panel.id, f"review:{action}:{turn_id}",
                                          user_id=s.bob.id)
        response = await click.wait_response()
        assert "Only members with the Manage Server" in response.content, action
        assert click.modal is None, action  # the edit form was not opened for bob
    assert f"review:approve:{turn_id}" in panel.custom_ids()  # the panel did not move on

    bulk = await s.fake.invoke_command("review", {"min_score": 1}, subcommand="bulk",
                                       user_id=s.admin.id, channel_id=s.general.id)
    await bulk.wait_response()
    crafted = await s.fake.click_button(bulk.original_message.id, "review:bulk-confirm",
                                        user_id=s.bob.id)
    assert "Only members with the Manage Server" in (await crafted.wait_response()).content
    assert await s.db.count_reviews("pending") == 1
    confirm = await s.fake.click_button(bulk.original_message.id, "review:bulk-confirm",
                                        user_id=s.admin.id)
    await confirm.wait_response()
    assert await s.db.count_reviews("approved") == 1  # the admin's click works


async def test_a_crafted_edit_form_submission_by_a_non_admin_is_refused(world):
    s = await world()
    turn_id = await pending_pair(s)
    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()
    edit = await s.fake.click_button(review.original_message.id, f"review:edit:{turn_id}",
                                     user_id=s.admin.id)
    await edit.wait_response()  # the admin's form is open
    crafted = await s.fake.submit_modal(f"review:edit-modal:{turn_id}",
                                        {"review:edited-answer": "Send your password to me."},
                                        user_id=s.bob.id, channel_id=s.general.id)
    response = await crafted.wait_response()
    assert await s.db.count_reviews("approved") == 0
    assert "Only members with the Manage Server" in (response.content or "")


async def test_forget_buttons_answer_only_the_person_who_asked(world):
    s = await world()
    _, mine = await ask(s, "carol's question", author=s.carol)
    forget = await s.fake.invoke_command("forget", user_id=s.carol.id, channel_id=s.general.id)
    await forget.wait_response()
    crafted = await s.fake.click_button(forget.original_message.id, "forget:confirm",
                                        user_id=s.bob.id)
    assert "belong to someone else" in (await crafted.wait_response()).content
    assert await s.db.turn_for_answer_message(mine.id) is not None
    confirm = await s.fake.click_button(forget.original_message.id, "forget:confirm",
                                        user_id=s.carol.id)
    await confirm.wait_response()
    assert await s.db.turn_for_answer_message(mine.id) is None


# --- the token --------------------------------------------------------------------------

async def test_the_token_is_in_no_log_reply_or_request_body(world, caplog):
    s = await world()
    token = s.fake.token
    register_secret(token)  # what `python -m bot` does before anything else
    caplog.set_level(logging.DEBUG)
    await ask(s, "a normal question")

    async def leaky_stats(*_args, **_kwargs):
        raise RuntimeError(f"could not read the stats with {token}")

    s.db.stats = leaky_stats  # an unexpected error whose text carries the token
    stats = await s.fake.invoke_command("stats", user_id=s.bob.id, channel_id=s.general.id)
    assert "Something went wrong" in (await stats.wait_response()).content

    async def leaky_submit(request):
        raise RuntimeError(f"engine refused {token}")

    s.engine.submit = leaky_submit
    question = await s.fake.send_message(s.general.id, s.bob.id, "and now?", mentions_bot=True)
    apology = await s.fake.wait_for_bot_message(s.general.id, after=question.id)
    assert apology.content.startswith("Sorry")

    # the token really was in use: the bot sent it to the fake as its credentials
    assert any(c.headers.get("Authorization") == f"Bot {token}" for c in s.fake.calls)
    assert "could not read the stats with " + REDACTED in caplog.text
    assert "engine refused " + REDACTED in caplog.text
    assert token not in caplog.text
    for call in s.fake.calls:
        assert token not in json.dumps(call.json), call.path
        assert all(token.encode() not in f.data for f in call.files), call.path
    for message in s.fake.messages.values():
        assert token not in message.content + json.dumps(message.embeds)


def test_the_training_child_gets_neither_the_token_nor_a_file_with_it(tiny_config,
                                                                       monkeypatch):
    token = "MTExMTExMTExMTEx.child.never-sees-this-token"
    monkeypatch.setenv("DISCORD_TOKEN", token)
    service = TrainingService(tiny_config, db=None, engine=None)
    environment = service.child_environment()
    assert "DISCORD_TOKEN" not in environment
    assert token not in "".join(environment.values())
    assert token not in service.write_child_config(7).read_text(encoding="utf-8")


# --- mentions -----------------------------------------------------------------------------

class CannedGeneration:
    """What the engine hands back, with a fixed text: the tiny model cannot be made to say
    `@everyone`, a model in production can."""

    def __init__(self, chunks: list[str]):
        self.chunks, self.text = chunks, ""
        self.route, self.latency_ms = Route(), 1.0

    def __aiter__(self):
        return self._stream()

    async def _stream(self):
        for chunk in self.chunks:
            self.text += chunk
            yield chunk

    def cancel(self) -> None:
        pass


async def test_model_output_never_pings_everyone_roles_or_users(world):
    s = await world()
    w = s.fake.world
    pings = f"@everyone @here <@&{w.admin_role.id}> <@{w.alice.id}> "
    # the second half lands in a second message (past 2,000 characters): it pings nobody
    chunks = [pings, "word " * 450, pings + "the end."]

    async def canned_submit(request):
        return CannedGeneration(chunks)

    s.engine.submit = canned_submit
    question, last = await ask(s, "say something loud")
    first = s.fake.bot_messages(s.general.id)[0]
    assert first.id != last.id and first.content.startswith("@everyone")
    for message in (first, last):
        assert not message.mention_everyone and message.mention_roles == []
    assert first.mentions == [s.bob.id]  # only the person it replies to
    assert last.mentions == []
    for call in s.fake.calls_matching("POST", r"/channels/\d+/messages"):
        allowed = call.json["allowed_mentions"]
        assert allowed["parse"] == [] and not allowed.get("roles") and not allowed.get("users")


# --- /forget ------------------------------------------------------------------------------

async def test_forget_leaves_no_trace_in_the_database_files(world):
    s = await world()
    marker = "carol-secret-7f3a9"
    _, mine = await ask(s, f"remember {marker}", author=s.carol)
    assert (await s.db._one("PRAGMA secure_delete"))[0] == 1  # freed space is zeroed
    files = [s.config.database_path, s.config.database_path.with_name(
        s.config.database_path.name + "-wal")]
    assert any(marker.encode() in f.read_bytes() for f in files if f.exists())
    forget = await s.fake.invoke_command("forget", user_id=s.carol.id, channel_id=s.general.id)
    await forget.wait_response()
    confirm = await s.fake.click_button(forget.original_message.id, "forget:confirm",
                                        user_id=s.carol.id)
    await confirm.wait_response()
    assert await s.db.turn_for_answer_message(mine.id) is None
    # the bot is still running with the file open: the WAL was emptied, not left to rot
    for path in files:
        if path.exists():
            assert marker.encode() not in path.read_bytes(), path.name


# --- the gateway ----------------------------------------------------------------------------

def connected(fake) -> bool:
    return any(session.conn is not None and not session.conn.ws.closed
               for session in fake.sessions.values())


async def test_invalid_session_reconnect_and_abrupt_drops_are_survived(world):
    s = await world()
    await ask(s, "before the faults")

    start = len(s.fake.gateway_frames)
    await s.fake.invalidate_session(resumable=False)  # the session is gone: IDENTIFY again
    await s.fake.wait_for_gateway(OP_IDENTIFY, start=start, timeout=10)
    await s.fake.wait_until(lambda: connected(s.fake), timeout=10, what="a new session")
    await ask(s, "after an invalid session")

    start = len(s.fake.gateway_frames)
    await s.fake.send_reconnect()  # op 7: close and RESUME
    await s.fake.wait_for_gateway(OP_RESUME, start=start, timeout=10)
    await s.fake.wait_until(lambda: connected(s.fake), timeout=10, what="the resumed session")
    await ask(s, "after a reconnect request")

    start = len(s.fake.gateway_frames)
    await s.fake.drop_gateway()  # TCP cut without a close frame
    await s.fake.wait_for_gateway(OP_RESUME, start=start, timeout=30)
    await s.fake.wait_until(lambda: connected(s.fake), timeout=10, what="the resumed session")
    await ask(s, "after an abrupt drop")
    assert (await s.db.stats())["answers"] == 4


async def test_an_interaction_is_deferred_within_3s_while_the_engine_is_busy(world):
    s = await world()
    await s.db.set_serving("faq", 2)
    release = threading.Event()
    busy = threading.Event()
    real_run_batch = s.engine._run_batch

    def blocked_run_batch(jobs):  # the worker thread is stuck in a long generation
        busy.set()
        release.wait(30)
        real_run_batch(jobs)

    s.engine._run_batch = blocked_run_batch
    question = await s.fake.send_message(s.general.id, s.bob.id, "a slow one",
                                         mentions_bot=True)
    assert await asyncio.to_thread(busy.wait, 10)
    try:
        # rolling back loads v1 on the busy worker: it must say "thinking…" first
        rollback = await s.fake.invoke_command("adapter", {"name": "faq"}, subcommand="rollback",
                                               user_id=s.admin.id, channel_id=s.general.id)
        callback = await rollback.wait_response()
        assert callback.type == CALLBACK_DEFERRED_MESSAGE
        assert callback.at - rollback.created_at < 3.0 and not rollback.expired
        assert not release.is_set()  # deferred while the engine was still busy
    finally:
        release.set()
    done = await rollback.wait_for_content(lambda c: "now serves" in c, timeout=20)
    assert "**faq** now serves v1 (was v2)." in done
    await s.fake.wait_for_bot_message(s.general.id, timeout=20,
                                      predicate=lambda m: m.reference_id == question.id)

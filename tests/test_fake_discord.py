"""The fake Discord server against the real discord.py client: a `commands.Bot` logs in,
receives messages, reactions and interactions, answers them, and survives faults."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from fake_discord import (
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE_MESSAGE,
    OP_IDENTIFY,
    OP_REQUEST_MEMBERS,
    OP_RESUME,
    FakeDiscord,
)

pytest_plugins = ("fake_discord",)

T = TypeVar("T")


def make_bot(*, message_content: bool = True, members: bool = True) -> commands.Bot:
    intents = discord.Intents.default()
    intents.members = members
    intents.message_content = message_content
    return commands.Bot(command_prefix="!", intents=intents, help_command=None)


async def soon(awaitable: Awaitable[T], timeout: float = 5.0) -> T:
    return await asyncio.wait_for(awaitable, timeout)


def message_queue(bot: commands.Bot, *,
                  include_own: bool = False) -> asyncio.Queue[discord.Message]:
    """Messages the bot's on_message sees (its own ones only if asked)."""
    queue: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        if include_own or message.author != bot.user:
            queue.put_nowait(message)

    bot.add_listener(on_message)
    return queue


async def test_ready_caches_guild_channels_and_member_roles(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    readies: list[bool] = []

    async def on_ready() -> None:
        readies.append(True)

    bot.add_listener(on_ready)
    await fake_discord.start_bot(bot)

    assert readies == [True]
    assert [f"{c.method} {c.path}" for c in fake_discord.calls[:2]] == [
        "GET /users/@me", "GET /oauth2/applications/@me"]
    identify = await fake_discord.wait_for_gateway(OP_IDENTIFY)
    assert identify.d["token"] == fake_discord.token
    assert identify.d["intents"] == bot.intents.value
    assert bot.user is not None and bot.user.id == fake_discord.bot_user.id and bot.user.bot
    assert bot.application_id == fake_discord.application_id

    guild = bot.get_guild(world.guild.id)
    assert guild is not None and not guild.unavailable and guild.owner_id == world.owner.id
    general = guild.get_channel(world.general.id)
    assert isinstance(general, discord.TextChannel) and general.name == "general"
    assert {c.name for c in guild.text_channels} == {"general", "random"}
    # Without presences Discord sends only the bot's member; the rest came from a chunk.
    assert any(f.op == OP_REQUEST_MEMBERS for f in fake_discord.gateway_frames)
    assert guild.chunked and len(guild.members) == 6
    alice, bob = guild.get_member(world.alice.id), guild.get_member(world.bob.id)
    assert alice is not None and [r.name for r in alice.roles] == ["@everyone", "Admin"]
    assert bob is not None and [r.name for r in bob.roles] == ["@everyone"]
    assert alice.guild_permissions.administrator
    assert not bob.guild_permissions.administrator and bob.guild_permissions.send_messages


async def test_message_with_mention_and_reply_reaches_on_message(
        fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    received = message_queue(bot)
    await fake_discord.start_bot(bot)
    assert bot.user is not None

    question = await fake_discord.send_message(world.general.id, world.bob.id, "what is LoRA?")
    first = await soon(received.get())
    assert (first.id, first.content, first.mentions) == (question.id, "what is LoRA?", [])

    reply = await fake_discord.send_message(world.general.id, world.alice.id, "answer this",
                                            mentions_bot=True, reply_to=question.id)
    message = await soon(received.get())
    assert message.id == reply.id
    assert message.content == f"<@{bot.user.id}> answer this"
    assert message.type is discord.MessageType.reply
    # The bot is mentioned in the text, bob because the reply pings its target.
    assert {m.id for m in message.mentions} == {bot.user.id, world.bob.id}
    assert message.guild is not None and message.guild.id == world.guild.id
    assert isinstance(message.author, discord.Member)
    assert world.admin_role.id in [r.id for r in message.author.roles]
    assert message.reference is not None and message.reference.message_id == question.id
    resolved = message.reference.resolved
    assert isinstance(resolved, discord.Message)
    assert (resolved.content, resolved.author.id) == ("what is LoRA?", world.bob.id)

    await fake_discord.send_dm(world.carol.id, "hello in private")
    dm = await soon(received.get())
    assert dm.guild is None and isinstance(dm.channel, discord.DMChannel)
    assert (dm.content, dm.author.id) == ("hello in private", world.carol.id)


async def test_message_content_is_stripped_without_the_intent(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot(message_content=False, members=False)
    received = message_queue(bot)
    await fake_discord.start_bot(bot)

    await fake_discord.send_message(world.general.id, world.bob.id, "you cannot read me")
    assert (await soon(received.get())).content == ""
    await fake_discord.send_message(world.general.id, world.bob.id, "but this", mentions_bot=True)
    assert (await soon(received.get())).content.endswith("but this")


async def test_bot_sends_then_edits_a_message_while_streaming(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    seen = message_queue(bot, include_own=True)
    words = ["LoRA", "adapters", "are", "small."]

    @bot.command()
    async def stream(ctx: commands.Context[commands.Bot]) -> None:
        reply = await ctx.reply("…")
        for count in range(1, len(words) + 1):
            await reply.edit(content=" ".join(words[:count]))

    await fake_discord.start_bot(bot)
    trigger = await fake_discord.send_message(world.general.id, world.alice.id, "!stream")
    answer = await fake_discord.wait_for_bot_message(
        world.general.id, predicate=lambda m: m.content == "LoRA adapters are small.")

    assert answer.content_history == ["…", "LoRA", "LoRA adapters", "LoRA adapters are",
                                      "LoRA adapters are small."]
    assert answer.edit_count == 4 and answer.edited_at is not None
    assert answer.reference_id == trigger.id and answer.mentions == [world.alice.id]
    assert fake_discord.bot_messages() == [answer]
    updates = [d for d in fake_discord.events_dispatched("MESSAGE_UPDATE")
               if d.data["id"] == str(answer.id)]
    assert [d.data["content"] for d in updates] == answer.content_history[1:]
    # Discord echoes the bot's own messages over the gateway.
    assert [m.id for m in [await soon(seen.get()), await soon(seen.get())]] == [trigger.id,
                                                                               answer.id]


async def test_bot_reaction_and_human_reactions(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    added: asyncio.Queue[discord.RawReactionActionEvent] = asyncio.Queue()
    removed: asyncio.Queue[discord.RawReactionActionEvent] = asyncio.Queue()

    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        added.put_nowait(payload)

    async def on_raw_reaction_remove(payload: discord.RawReactionActionEvent) -> None:
        removed.put_nowait(payload)

    @bot.command()
    async def react(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.message.add_reaction("👍")

    bot.add_listener(on_raw_reaction_add)
    bot.add_listener(on_raw_reaction_remove)
    await fake_discord.start_bot(bot)
    trigger = await fake_discord.send_message(world.general.id, world.alice.id, "!react")

    own = await soon(added.get())
    assert (own.user_id, own.message_id, str(own.emoji)) == (fake_discord.bot_user.id,
                                                            trigger.id, "👍")
    assert trigger.reactions == {"👍": {fake_discord.bot_user.id}}
    call = await fake_discord.wait_for("PUT", r"/channels/\d+/messages/\d+/reactions/[^/]+/@me")
    assert call.path.endswith("/👍/@me") and call.status == 204

    await fake_discord.add_reaction(world.bob.id, world.general.id, trigger.id, "👎")
    human = await soon(added.get())
    assert (human.user_id, str(human.emoji), human.guild_id) == (world.bob.id, "👎",
                                                                 world.guild.id)
    assert human.member is not None and human.member.id == world.bob.id
    await fake_discord.remove_reaction(world.bob.id, world.general.id, trigger.id, "👎")
    gone = await soon(removed.get())
    assert (gone.user_id, str(gone.emoji)) == (world.bob.id, "👎")
    assert trigger.reactions["👎"] == set()


def adapter_commands() -> tuple[app_commands.Group, app_commands.Group]:
    """/adapter use name:<str> (autocompleted, admins only) and /admin adapters reload."""
    adapter = app_commands.Group(name="adapter", description="Manage LoRA adapters")

    @adapter.command(name="use", description="Switch to an adapter")
    @app_commands.describe(name="Adapter name")
    async def use(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not interaction.permissions.manage_guild:
            await interaction.followup.send("admins only", ephemeral=True)
            return
        await interaction.followup.send(f"now using {name}", ephemeral=True)

    @use.autocomplete("name")
    async def complete_name(interaction: discord.Interaction,
                            current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=n, value=n) for n in ("tiny", "tinier", "base")
                if n.startswith(current)]

    admin = app_commands.Group(name="admin", description="Administration")
    adapters = app_commands.Group(name="adapters", description="Adapters", parent=admin)

    @adapters.command(name="reload", description="Reload adapters from disk")
    async def reload(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("reloaded")

    return adapter, admin


async def test_slash_subcommand_deferred_ephemeral_followup(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    guild = discord.Object(world.guild.id)
    for group in adapter_commands():
        bot.tree.add_command(group, guild=guild)
    await fake_discord.start_bot(bot)
    synced = await bot.tree.sync(guild=guild)
    assert sorted(c.name for c in synced) == ["adapter", "admin"]
    assert {c.id for c in synced} == set(fake_discord.commands)

    used = await fake_discord.invoke_command("adapter", {"name": "tiny"}, subcommand="use",
                                             user_id=world.alice.id, channel_id=world.general.id)
    await used.wait_for_response("followup")
    responses = fake_discord.interaction_responses(used)
    assert [(r.kind, r.type) for r in responses] == [("callback", CALLBACK_DEFERRED_MESSAGE),
                                                     ("followup", None)]
    assert responses[0].data == {"flags": 64} and responses[1].content == "now using tiny"
    original = used.original_message
    assert original is not None and original.content == "now using tiny"
    assert used.ephemeral and not original.loading
    # Ephemeral messages never reach the gateway.
    assert str(original.id) not in {d.data["id"]
                                    for d in fake_discord.events_dispatched("MESSAGE_CREATE")}

    denied = await fake_discord.invoke_command("adapter", {"name": "tiny"}, subcommand="use",
                                               user_id=world.bob.id, channel_id=world.general.id)
    assert await denied.wait_for_content(bool) == "admins only"

    typed = await fake_discord.autocomplete("adapter", {"name": "tin"}, focused="name",
                                            subcommand="use", user_id=world.alice.id,
                                            channel_id=world.general.id)
    await typed.wait_response()
    assert typed.choices is not None and [c["value"] for c in typed.choices] == ["tiny", "tinier"]

    reloaded = await fake_discord.invoke_command("admin", group="adapters", subcommand="reload",
                                                 user_id=world.alice.id,
                                                 channel_id=world.general.id)
    callback = await reloaded.wait_response()
    assert callback.type == CALLBACK_MESSAGE and not reloaded.ephemeral
    public = await fake_discord.wait_for_message(lambda m: m.interaction_id == reloaded.id)
    assert public.content == "reloaded" and public.channel_id == world.general.id


async def test_command_options_are_resolved_and_checked(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    received: asyncio.Queue[tuple[object, ...]] = asyncio.Queue()

    @bot.tree.command(name="grant", description="Grant a role")
    @app_commands.choices(level=[app_commands.Choice(name="low", value=1),
                                 app_commands.Choice(name="high", value=2)])
    async def grant(interaction: discord.Interaction, who: discord.Member, role: discord.Role,
                    where: discord.TextChannel, level: app_commands.Choice[int],
                    proof: discord.Attachment | None = None) -> None:
        data = await proof.read() if proof else b""
        received.put_nowait((who.id, role.id, where.id, level.value, data))
        await interaction.response.send_message("granted")

    await fake_discord.start_bot(bot)
    await bot.tree.sync()
    await fake_discord.invoke_command(
        "grant", {"who": world.bob, "role": world.moderator_role, "where": world.random,
                  "level": 2, "proof": ("proof.txt", b"signed")},
        user_id=world.alice.id, channel_id=world.general.id)
    assert await soon(received.get()) == (world.bob.id, world.moderator_role.id, world.random.id,
                                          2, b"signed")
    # What a Discord client would not let a user send raises in the driver.
    common = {"user_id": world.alice.id, "channel_id": world.general.id}
    with pytest.raises(ValueError, match="not one of the choices"):
        await fake_discord.invoke_command("grant", {"who": world.bob, "role": world.admin_role,
                                                    "where": world.random, "level": 3}, **common)
    with pytest.raises(ValueError, match="required options missing"):
        await fake_discord.invoke_command("grant", {"who": world.bob}, **common)
    with pytest.raises(LookupError, match="no command 'revoke'"):
        await fake_discord.invoke_command("revoke", **common)


async def test_first_followup_after_defer_keeps_the_defer_visibility(
        fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()

    @bot.tree.command(name="status", description="Show status")
    async def status(interaction: discord.Interaction) -> None:
        await interaction.response.defer()  # public "thinking…"
        await interaction.followup.send("all good", ephemeral=True)  # flag ignored by Discord
        await interaction.followup.send("psst", ephemeral=True)  # a real, ephemeral follow-up

    await fake_discord.start_bot(bot)
    await bot.tree.sync()
    run = await fake_discord.invoke_command("status", user_id=world.bob.id,
                                            channel_id=world.random.id)
    await run.wait_for_response("followup", predicate=lambda r: r.content == "psst")
    assert run.original_message is not None and run.original_message.content == "all good"
    assert not run.ephemeral
    assert [m.ephemeral for m in run.followups] == [True]


async def test_button_click_with_namespaced_custom_id_reaches_callback(
        fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    clicks: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    class VoteView(discord.ui.View):
        def __init__(self, answer_key: str) -> None:
            super().__init__(timeout=None)
            for direction in ("up", "down"):
                button: discord.ui.Button[VoteView] = discord.ui.Button(
                    label=direction, custom_id=f"ctb:vote:{direction}:{answer_key}")
                button.callback = self._vote(direction)  # type: ignore[method-assign]
                self.add_item(button)

        def _vote(self, direction: str) -> Callable[[discord.Interaction], Awaitable[None]]:
            async def callback(interaction: discord.Interaction) -> None:
                clicks.put_nowait((interaction.data["custom_id"],  # type: ignore[index]
                                   interaction.user.id))
                await interaction.response.edit_message(content=f"voted {direction}",
                                                        view=None)
            return callback

    @bot.command()
    async def ask(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send("an answer", view=VoteView("42"))

    await fake_discord.start_bot(bot)
    await fake_discord.send_message(world.general.id, world.alice.id, "!ask")
    answer = await fake_discord.wait_for_bot_message(world.general.id,
                                                     predicate=lambda m: bool(m.components))
    assert answer.custom_ids() == ["ctb:vote:up:42", "ctb:vote:down:42"]

    click = await fake_discord.click_button(answer.id, "ctb:vote:up:42", user_id=world.bob.id)
    assert await soon(clicks.get()) == ("ctb:vote:up:42", world.bob.id)
    assert (await click.wait_response()).type == CALLBACK_UPDATE_MESSAGE
    assert answer.content_history == ["an answer", "voted up"] and answer.components == []
    with pytest.raises(LookupError, match="ctb:vote:up:42"):
        await fake_discord.click_button(answer.id, "ctb:vote:up:42", user_id=world.bob.id)


async def test_modal_submit_reaches_on_submit(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    submitted: asyncio.Queue[str] = asyncio.Queue()

    class FeedbackModal(discord.ui.Modal, title="Feedback"):
        text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(
            label="What went wrong?", custom_id="ctb:feedback:text",
            style=discord.TextStyle.paragraph)

        def __init__(self) -> None:
            super().__init__(custom_id="ctb:feedback:modal")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            submitted.put_nowait(self.text.value)
            await interaction.response.send_message(f"thanks: {self.text.value}",
                                                    ephemeral=True)

    @bot.tree.command(name="feedback", description="Tell us what went wrong")
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    await fake_discord.start_bot(bot)
    await bot.tree.sync()
    opened = await fake_discord.invoke_command("feedback", user_id=world.carol.id,
                                               channel_id=world.general.id)
    assert (await opened.wait_response()).type == CALLBACK_MODAL
    assert opened.modal is not None and opened.modal["title"] == "Feedback"

    submit = await fake_discord.submit_modal("ctb:feedback:modal",
                                             {"ctb:feedback:text": "too slow"},
                                             user_id=world.carol.id)
    assert await soon(submitted.get()) == "too slow"
    assert await submit.wait_for_content(bool) == "thanks: too slow"
    assert submit.ephemeral


async def test_attachments_are_stored_with_their_bytes(fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()

    @bot.command()
    async def export(ctx: commands.Context[commands.Bot]) -> None:
        data = io.BytesIO(b"answer,votes\n42,3\n")
        await ctx.send("here you go", file=discord.File(data, filename="votes.csv"))

    @bot.command()
    async def size(ctx: commands.Context[commands.Bot]) -> None:
        data = await ctx.message.attachments[0].read()
        await ctx.send(f"{ctx.message.attachments[0].filename}: {data.decode()}")

    await fake_discord.start_bot(bot)
    await fake_discord.send_message(world.general.id, world.alice.id, "!export")
    exported = await fake_discord.wait_for_bot_message(world.general.id,
                                                       predicate=lambda m: bool(m.attachments))
    attachment = exported.attachment("votes.csv")
    assert attachment.data == b"answer,votes\n42,3\n"
    assert attachment.content_type == "text/csv" and exported.content == "here you go"
    call = await fake_discord.wait_for("POST", r"/channels/\d+/messages")
    assert call.files[0].filename == "votes.csv" and call.json["attachments"][0]["id"] == 0

    # A user's upload is served back to the bot from the fake's attachment URL.
    await fake_discord.send_message(world.general.id, world.bob.id, "!size",
                                    attachments=[("notes.txt", b"hello")])
    echoed = await fake_discord.wait_for_bot_message(
        world.general.id, predicate=lambda m: m.content.startswith("notes.txt"))
    assert echoed.content == "notes.txt: hello"


# (status, retry_after the fake sends, how long discord.py must wait before trying again)
INJECTED_ERRORS = [
    pytest.param(500, 0.05, 1.0, id="server error"),  # discord.py sleeps 1 s before a 5xx retry
    pytest.param(429, 0.3, 0.3, id="rate limited"),  # it waits retry_after
]


@pytest.mark.parametrize(("status", "retry_after", "wait_s"), INJECTED_ERRORS)
async def test_an_injected_error_is_retried_transparently(fake_discord: FakeDiscord, status: int,
                                                          retry_after: float,
                                                          wait_s: float) -> None:
    world = fake_discord.world
    bot = make_bot()

    @bot.command()
    async def ping(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send("pong")

    await fake_discord.start_bot(bot)
    fake_discord.fail_next("POST", r"/channels/\d+/messages", status=status,
                           retry_after=retry_after)
    await fake_discord.send_message(world.general.id, world.alice.id, "!ping")
    await fake_discord.wait_for_bot_message(world.general.id, predicate=lambda m: m.content ==
                                            "pong", timeout=10)
    posts = fake_discord.calls_matching("POST", r"/channels/\d+/messages")
    assert [(c.status, c.injected) for c in posts] == [(status, True), (200, False)]
    assert posts[1].at - posts[0].at >= wait_s
    assert [m.content for m in fake_discord.bot_messages()] == ["pong"]


async def test_wrong_token_raises_login_failure(fake_discord: FakeDiscord) -> None:
    bot = make_bot()
    with pytest.raises(discord.LoginFailure):
        await fake_discord.start_bot(bot, token="not-the-token")
    assert [(c.path, c.status) for c in fake_discord.calls] == [("/users/@me", 401)]
    assert fake_discord.gateway_connections == []


async def test_gateway_drop_is_resumed_and_missed_events_replayed(
        fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    received = message_queue(bot)
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    @bot.command()
    async def ping(ctx: commands.Context[commands.Bot]) -> None:
        await ctx.send("pong")

    bot.add_listener(on_resumed)
    await fake_discord.start_bot(bot)
    (session_id,) = fake_discord.sessions
    frames_before = len(fake_discord.gateway_frames)

    await fake_discord.drop_gateway(hold=True)
    missed = await fake_discord.send_message(world.general.id, world.alice.id, "while away")
    fake_discord.release_gateway()

    resume = await fake_discord.wait_for_gateway(OP_RESUME, start=frames_before, timeout=10)
    missed_seq = next(d.seq for d in fake_discord.events_dispatched("MESSAGE_CREATE")
                      if d.data["id"] == str(missed.id))
    assert resume.d["session_id"] == session_id and resume.d["seq"] < missed_seq
    assert (await soon(received.get(), 10)).id == missed.id
    await soon(resumed.wait())
    assert fake_discord.gateway_connections[-1].path == "/gateway/resume"
    assert sum(f.op == OP_IDENTIFY for f in fake_discord.gateway_frames) == 1

    await fake_discord.send_message(world.general.id, world.alice.id, "!ping")
    pong = await fake_discord.wait_for_bot_message(world.general.id,
                                                   predicate=lambda m: m.content == "pong")
    assert fake_discord.bot_messages() == [pong]


async def test_invalid_session_makes_the_bot_identify_again(fake_discord: FakeDiscord) -> None:
    bot = make_bot()
    readies: list[bool] = []

    async def on_ready() -> None:
        readies.append(True)

    bot.add_listener(on_ready)
    await fake_discord.start_bot(bot)
    await fake_discord.invalidate_session(resumable=False)
    await fake_discord.wait_until(lambda: len(readies) == 2, what="a second on_ready")
    assert sum(f.op == OP_IDENTIFY for f in fake_discord.gateway_frames) == 2
    assert not any(f.op == OP_RESUME for f in fake_discord.gateway_frames)


async def test_late_interaction_response_is_unknown_interaction(
        fake_discord: FakeDiscord) -> None:
    world = fake_discord.world
    bot = make_bot()
    errors: asyncio.Queue[int] = asyncio.Queue()
    fake_discord.interaction_deadline = 0.2

    @bot.tree.command(name="slow", description="Thinks too long before answering")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.4)
        try:
            await interaction.response.send_message("finally")
        except discord.NotFound as exc:
            errors.put_nowait(exc.code)

    await fake_discord.start_bot(bot)
    await bot.tree.sync()
    late = await fake_discord.invoke_command("slow", user_id=world.bob.id,
                                             channel_id=world.general.id)
    assert await soon(errors.get()) == 10062
    assert late.expired and late.responses == []


async def test_unknown_route_is_a_logged_404(fake_discord: FakeDiscord,
                                             caplog: pytest.LogCaptureFixture) -> None:
    bot = make_bot()
    await fake_discord.start_bot(bot)
    with pytest.raises(discord.NotFound):
        await bot.fetch_sticker(123)
    assert [(c.method, c.path) for c in fake_discord.unhandled] == [("GET", "/stickers/123")]
    assert "UNHANDLED GET /api/v10/stickers/123" in caplog.text
    fake_discord.unhandled.clear()  # or the fixture fails the test at teardown

"""Every server is its own: the real bot in two servers and DMs, against the fake Discord.

Server A (the fake's guild) has adapter `faq` bound to #general and pairs asked there;
server B has adapter `bravo` and pairs of its own. Four people run every slash command,
the review buttons and the edit form: an admin of A, an admin of B (a plain member of A),
a member, and an owner (`discord.owner_ids`, a plain member of both). Each gets the right
answer — allowed, or refused ephemerally with why — and nothing the bot sends while
answering (every REST payload it makes, not only the reply's text) holds the other
server's text. The web pages' side is tests/test_web_review.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fake_discord import CHANNEL_TEXT

from bot.permissions import owner_ids
from tests import test_discord_e2e as e2e
from tests.test_security import REFUSED, admin_checked_commands

pytest_plugins = ("fake_discord",)

world = e2e.world
ask = e2e.ask

A_TEXT, B_TEXT = "Alpaca-Apricot", "Bison-Blueberry"
MANAGE_GUILD = 1 << 5


@dataclass
class Case:
    command: str
    sub: str | None
    options: dict = field(default_factory=dict)
    admin: bool = True  # refused to people who are no admin where it runs


# every slash command, run in server A's #general; options that change nothing lasting
# for an allowed caller (or are refused after the rights check, as `train start` is)
IN_A = [
    Case("adapter", "list", admin=False),
    Case("adapter", "info", {"name": "faq"}, admin=False),
    Case("adapter", "use", {"name": "faq"}),
    Case("adapter", "unbind"),  # (run in #random, which answers with the base model)
    Case("adapter", "create", {"name": "made-here"}),
    Case("adapter", "prompt", {"name": "faq", "text": "-"}),
    Case("adapter", "rollback", {"name": "faq", "version": 1}),  # serving: "already"
    Case("review", "start"),
    Case("review", "bulk", {"min_score": 99}),
    Case("review", "also", {"pair": 0, "question": "Asked otherwise?"}),  # A's pair
    Case("review", "web"),
    Case("stats", None, admin=False),
    Case("export", None),
    Case("train", "start", {"adapter": "faq"}),  # no approved pair: refused after the check
    Case("train", "status"),
    Case("train", "cancel"),
    Case("memory", "search", {"text": f"What is the {A_TEXT} code?"}),  # A's pair: pending
    Case("import", None, {"file": ("more.csv", b"question,answer\nNew?,Yes.\n")}),
]
# server B's admin, in B, naming what is A's: unknown there, and nothing of A shown
FROM_B = [
    ("adapter", "use", {"name": "faq"}), ("adapter", "info", {"name": "faq"}),
    ("adapter", "prompt", {"name": "faq", "text": "Leak."}),
    ("adapter", "rollback", {"name": "faq", "version": 2}),
    ("adapter", "create", {"name": "copy", "base_on": "faq"}),
    ("review", "start", {"adapter": "faq"}), ("review", "bulk", {"min_score": 1, "adapter": "faq"}),
    ("export", None, {"adapter": "faq"}), ("train", "start", {"adapter": "faq"}),
    ("memory", "search", {"text": "code?", "adapter": "faq"}),
    ("import", None, {"file": ("leak.csv", b"question,answer\nLeak?,Yes.\n"), "adapter": "faq"}),
]


async def two_servers(fake, world):
    """Server B (with its admin, an owner and bob as members) before the bot starts, so
    its commands are synced there too; then the bot, with B's adapter and pairs."""
    w = fake.world
    bella = await fake.create_user("bella")  # B's admin
    owner = await fake.create_user("boss")  # in discord.owner_ids
    b = await fake.create_guild("Server B", owner_id=bella.id)
    b_channel = await fake.create_channel(b.id, "b-general", type=CHANNEL_TEXT)
    b_admins = await fake.create_role(b.id, "B admins", permissions=MANAGE_GUILD)
    await fake.add_member(b.id, bella.id, roles=[b_admins.id])
    for user in (owner, w.bob):
        await fake.add_member(b.id, user.id)
    for user in (bella, owner):
        await fake.add_member(w.guild.id, user.id)
    s = await world(command_sync="global", owner_ids=[owner.id],  # DMs have commands too
                    memory=True)
    await s.db.create_adapter("bravo", "tiny", scope=b.id)
    await s.db.add_version("bravo", path="faq/v1", status="serving")
    await s.db.bind_channel(b_channel.id, "bravo", guild_id=b.id)
    for n in range(2):
        turn = await s.db.record_turn(channel_id=b_channel.id, guild_id=b.id,
                                      author_id=bella.id, question=f"{B_TEXT} {n}?",
                                      answer=f"{B_TEXT} answer {n}.", adapter_name="bravo")
        await s.db.cast_vote(turn, w.bob.id, 1, min_score=1)
    # A's pair, asked in #general through the real chat path
    _, answer = await ask(s, f"What is the {A_TEXT} code?")
    a_turn = await s.db.turn_for_answer_message(answer.id)
    for user in (s.bob, s.carol):
        await fake.add_reaction(user.id, s.general.id, answer.id, "👍")
    await e2e._until_score(s, a_turn.id, 2)
    s.bella, s.owner, s.b, s.b_channel, s.a_turn = bella, owner, b, b_channel, a_turn.id
    return s


def sent_since(fake, start: int) -> str:
    """Every REST payload the bot sent since call `start`, as one text."""
    return "\n".join(json.dumps(call.json, ensure_ascii=False) + "".join(
        f.data.decode("utf-8", "replace") for f in call.files)
        for call in fake.calls[start:])


async def run_case(s, name, sub, options, *, user, channel) -> tuple[str, bool, str]:
    """(the reply's text, whether it is ephemeral, everything the bot sent meanwhile)."""
    start = len(s.fake.calls)
    interaction = await s.fake.invoke_command(name, options, subcommand=sub, user_id=user.id,
                                              channel_id=channel.id, crafted=True)
    first = await interaction.wait_response(timeout=10)
    if first.data.get("content") is None and not first.data.get("embeds"):  # deferred
        await interaction.wait_for_response("followup", timeout=10)
    texts = [json.dumps(r.data, ensure_ascii=False) for r in interaction.responses]
    return "\n".join(texts), interaction.ephemeral, sent_since(s.fake, start)


async def test_every_command_in_two_servers_and_dms_for_four_kinds_of_people(world,
                                                                             fake_discord):
    s = await two_servers(fake_discord, world)
    tested = {(c.command, c.sub) for c in IN_A if c.admin}
    assert admin_checked_commands(s.bot) == tested, "an admin command has no case here"
    # the owners: discord.owner_ids and the application's owner, as discord.py read it
    assert owner_ids(s.bot, s.config.discord) == {s.owner.id, fake_discord.world.owner.id}
    people = {"admin of A": s.admin, "admin of B": s.bella, "member": s.bob,
              "owner": s.owner}
    b_words = (B_TEXT, "bravo", str(s.b_channel.id))

    for case in IN_A:
        options = {**case.options}
        if case.sub == "also":
            options["pair"] = s.a_turn
        channel = s.random if case.sub == "unbind" else s.general
        for who, user in people.items():
            if case.sub == "create":
                options["name"] = f"made-{who.split()[-1].lower()}"
            reply, ephemeral, sent = await run_case(s, case.command, case.sub, options,
                                                    user=user, channel=channel)
            refused = REFUSED in reply
            should_refuse = case.admin and who in ("admin of B", "member")
            assert refused == should_refuse, (case, who, reply)
            if refused:
                assert ephemeral, (case, who)
            for word in b_words:  # allowed or not: nothing of server B
                assert word not in sent, (case, who, word, sent[:500])

    # what the A admin and the owner did stayed in A; B's things are untouched
    assert sorted(a.label for a in await s.db.list_adapters(s.guild.id)) == [
        "faq", "made-a", "made-owner"]
    assert [a.label for a in await s.db.list_adapters(s.b.id)] == ["bravo"]
    assert (await s.db.resolve_adapter_for(s.b_channel.id, s.b.id)).name == "bravo"
    assert await s.db.count_reviews("pending", scope=s.b.id) == 2

    # B's admin in B, naming A's adapter: unknown there, B's own listed, nothing of A sent
    a_words = (A_TEXT, str(s.general.id), "made-a")
    for name, sub, options in FROM_B:
        reply, ephemeral, sent = await run_case(s, name, sub, options, user=s.bella,
                                                channel=s.b_channel)
        assert "unknown adapter 'faq'; known adapters: bravo" in reply and ephemeral, (
            name, sub, reply)
        for word in a_words:
            assert word not in sent, (name, sub, word)
    also, _, sent = await run_case(s, "review", "also", {"pair": s.a_turn, "question": "x?"},
                                   user=s.bella, channel=s.b_channel)
    assert f"#{s.a_turn} is not a review candidate" in also and A_TEXT not in sent
    for name, sub in (("adapter", "list"), ("stats", None), ("review", "start")):
        reply, _, sent = await run_case(s, name, sub, {}, user=s.bella, channel=s.b_channel)
        assert not any(word in sent for word in a_words), (name, sub)
    assert B_TEXT in (await run_case(s, "review", "start", {}, user=s.bella,
                                     channel=s.b_channel))[0]
    # what A's admin and the owner taught stays, B's admin's "x?" never got in
    assert (await s.db.get_review(s.a_turn)).also_asked == ["Asked otherwise?"]

    # DMs are the direct scope: B's admin there is no admin and sees neither server
    dm = await s.fake.dm_channel(s.bella.id)
    for name, sub in (("adapter", "list"), ("stats", None), ("review", "start"),
                      ("export", None)):
        reply, _, sent = await run_case(s, name, sub, {}, user=s.bella, channel=dm)
        assert (REFUSED in reply) == (name in ("review", "export")), (name, reply)
        assert not any(word in sent for word in (*a_words, *b_words)), (name, sub)
    owner_dm = await s.fake.dm_channel(s.owner.id)
    reply, _, sent = await run_case(s, "review", "start", {}, user=s.owner, channel=owner_dm)
    assert REFUSED not in reply and "Nothing waiting for review." in reply, reply
    assert not any(word in sent for word in (*a_words, *b_words))
    # the autocomplete of adapter names offers the server's own only
    typed = await s.fake.autocomplete("adapter", {"name": ""}, focused="name",
                                      subcommand="info", user_id=s.bella.id,
                                      channel_id=s.b_channel.id)
    await typed.wait_response()
    assert [c["value"] for c in typed.choices] == ["bravo"]


async def test_review_buttons_and_form_in_server_a_refuse_server_bs_admin(world, fake_discord):
    s = await two_servers(fake_discord, world)
    review = await s.fake.invoke_command("review", subcommand="start", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await review.wait_response()
    panel = review.original_message
    for action in ("approve", "reject", "edit", "skip"):
        start = len(s.fake.calls)
        click = await s.fake.click_button(panel.id, f"review:{action}:{s.a_turn}",
                                          user_id=s.bella.id)
        assert REFUSED in (await click.wait_response()).content and click.modal is None
        assert B_TEXT not in sent_since(s.fake, start)
    # the owner may decide A's pair (an admin everywhere), through the same panel
    click = await s.fake.click_button(panel.id, f"review:edit:{s.a_turn}", user_id=s.owner.id)
    await click.wait_response()
    assert click.modal is not None
    submitted = await s.fake.submit_modal(click.modal["custom_id"],
                                          {"review:edited-answer": "The owner's answer."},
                                          user_id=s.bella.id, channel_id=s.general.id)
    assert REFUSED in (await submitted.wait_response()).content  # B's admin cannot submit it
    assert (await s.db.get_review(s.a_turn)).status == "pending"
    owner_form = await s.fake.submit_modal(click.modal["custom_id"],
                                           {"review:edited-answer": "The owner's answer."},
                                           user_id=s.owner.id, channel_id=s.general.id)
    await owner_form.wait_response()
    decided = await s.db.get_review(s.a_turn)
    assert (decided.status, decided.edited_answer) == ("approved", "The owner's answer.")


async def test_a_runs_result_never_goes_to_another_servers_announce_channel(world,
                                                                           fake_discord):
    """discord.announce_channel_id and admin_channel_id lie in one server: a run of
    another server's adapter reports where it was asked, and nothing of it reaches them."""
    fake, w = fake_discord, fake_discord.world
    bella = await fake.create_user("bella")
    b = await fake.create_guild("Server B", owner_id=bella.id)
    b_channel = await fake.create_channel(b.id, "b-general", type=CHANNEL_TEXT)
    b_admins = await fake.create_role(b.id, "B admins", permissions=MANAGE_GUILD)
    await fake.add_member(b.id, bella.id, roles=[b_admins.id])
    s = await world(command_sync="global", announce_channel_id=w.random.id,
                    admin_channel_id=w.random.id)
    await s.db.create_adapter("bravo", "tiny", scope=b.id)
    await s.db.bind_channel(b_channel.id, "bravo", guild_id=b.id)
    pairs = s.config.data_dir / "bravo.jsonl"
    pairs.write_text("".join(json.dumps({"question": f"{B_TEXT} {n}?",
                                         "answer": f"{B_TEXT} answer {n}."}) + "\n"
                             for n in range(4)), encoding="utf-8")
    await s.db.import_pairs(pairs, "bravo")
    start = len(fake.calls)
    await fake.invoke_command("train", subcommand="start", user_id=bella.id,
                              channel_id=b_channel.id)
    await fake.wait_until(lambda: [m for m in fake.bot_messages(b_channel.id)
                                   if "bravo v1 trained" in m.content],
                          timeout=240, what="the end of B's run, reported in B")
    cog = s.bot.get_cog("Training")
    await fake.wait_until(lambda: not cog.followers, what="the report finished")
    assert fake.bot_messages(w.random.id) == []  # A's announce and admin channel
    assert "bravo" in sent_since(fake, start) and B_TEXT not in "".join(
        m.content for m in fake.bot_messages(w.random.id) + fake.bot_messages(w.general.id))

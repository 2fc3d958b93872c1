"""The command core's two faces agree: every operation run through the console and through
Discord (the real client against the fake Discord) answers the same text and leaves the same
rows behind.

Both faces start from the same data (adapter `faq` with v1 serving and v2 a candidate, bound
to the face's channel; five pairs waiting for review) and run the same steps in the same
order. After each step, the answer's text lines and a snapshot of what is stored are compared.
What may differ is only what a face is: the channel's name (`the console` / `<#id>`), who
acted (a stored reason names the user) and the clock.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.commands import Reply, plain
from bot.console import ConsoleChat
from bot.engine import Engine
from bot.routing import Router
from settings import parse_config
from storage import Database
from tests import test_discord_e2e as e2e
from tests.tiny_model import save_random_adapter

pytest_plugins = ("fake_discord",)

world = e2e.world  # the real bot against the fake Discord

PAIRS = [(f"Question {n}?", f"Answer {n}.") for n in range(1, 6)]
IMPORT = Path(__file__).parent / "data" / "faq-import.csv"
IMPORT_BAD = Path(__file__).parent / "data" / "faq-import-bad.jsonl"


@dataclass
class Step:
    """One operation: the console line, and how a Discord user does the same."""

    id: str
    console: str
    discord: tuple  # ("command", name, sub, options) | ("click", action, pair) |
    # ("edit", pair, answer) | ("confirm", name, sub, options, button, user)
    drop_console_hint: bool = False  # the console adds a line of typed commands (Discord: buttons)
    content_only: bool = False  # a button that also shows the next card: compare its text


STEPS = [
    Step("adapter list", "/adapter list", ("command", "adapter", "list", {})),
    Step("adapter info", "/adapter info faq", ("command", "adapter", "info", {"name": "faq"})),
    Step("adapter info, this channel's", "/adapter info",
         ("command", "adapter", "info", {})),  # bound: faq
    Step("adapter create", "/adapter create notes",
         ("command", "adapter", "create", {"name": "notes"})),
    Step("adapter create from another", "/adapter create copy faq",
         ("command", "adapter", "create", {"name": "copy", "base_on": "faq"})),
    Step("adapter create, bad name", "/adapter create ../x",
         ("command", "adapter", "create", {"name": "../x"})),
    Step("adapter use", "/adapter use notes", ("command", "adapter", "use", {"name": "notes"})),
    Step("adapter use base", "/adapter use base", ("command", "adapter", "use", {"name": "base"})),
    Step("adapter use unknown", "/adapter use nope",
         ("command", "adapter", "use", {"name": "nope"})),
    Step("adapter use again", "/adapter use faq", ("command", "adapter", "use", {"name": "faq"})),
    Step("adapter unbind", "/adapter unbind", ("command", "adapter", "unbind", {})),
    Step("adapter list, unbound", "/adapter list", ("command", "adapter", "list", {})),
    Step("adapter use, bound back", "/adapter use faq",
         ("command", "adapter", "use", {"name": "faq"})),
    Step("adapter prompt", "/adapter prompt faq Only talk about apples.",
         ("command", "adapter", "prompt", {"name": "faq", "text": "Only talk about apples."})),
    Step("adapter prompt default", "/adapter prompt faq -",
         ("command", "adapter", "prompt", {"name": "faq"})),
    Step("adapter rollback to", "/adapter rollback faq 2",
         ("command", "adapter", "rollback", {"name": "faq", "version": 2})),
    Step("adapter rollback", "/adapter rollback faq",
         ("command", "adapter", "rollback", {"name": "faq"})),
    Step("adapter rollback, none older", "/adapter rollback copy",
         ("command", "adapter", "rollback", {"name": "copy"})),
    Step("adapter info after", "/adapter info faq",
         ("command", "adapter", "info", {"name": "faq"})),
    Step("review next", "/review", ("command", "review", "start", {}), drop_console_hint=True),
    Step("review approve", "/review approve 1", ("click", "approve", 1), content_only=True),
    Step("review edit", "/review edit 2 A corrected answer.",
         ("edit", 2, "A corrected answer."), content_only=True),
    Step("review also", "/review also 3 Another way to ask 3?",
         ("command", "review", "also", {"pair": 3, "question": "Another way to ask 3?"})),
    Step("review also, no pair", "/review also 99 Nothing?",
         ("command", "review", "also", {"pair": 99, "question": "Nothing?"})),
    Step("review next again", "/review", ("command", "review", "start", {}),
         drop_console_hint=True),
    Step("review reject", "/review reject 4", ("click", "reject", 4), content_only=True),
    Step("review bulk", "/review bulk 1",
         ("confirm", "review", "bulk", {"min_score": 1}, "review:bulk-confirm", "admin")),
    Step("review bulk, none left", "/review bulk 1",
         ("command", "review", "bulk", {"min_score": 1})),
    Step("stats", "/stats", ("command", "stats", None, {})),
    Step("export", "/export", ("command", "export", None, {})),
    Step("export one adapter", "/export faq", ("command", "export", None, {"adapter": "faq"})),
    Step("train status", "/train status", ("command", "train", "status", {})),
    Step("train cancel", "/train cancel", ("command", "train", "cancel", {})),
    Step("train start, nothing approved", "/train notes",
         ("command", "train", "start", {"adapter": "notes"})),
    Step("forget", "/forget yes",
         ("confirm", "forget", None, {}, "forget:confirm", "asker")),
    # after /forget: the console's user and an imported pair's author are both "nobody" (0)
    Step("import", f"/import {IMPORT}",
         ("command", "import", None, {"file": (IMPORT.name, IMPORT.read_bytes())})),
    Step("import, a bad row", f"/import {IMPORT_BAD}",
         ("command", "import", None, {"file": (IMPORT_BAD.name, IMPORT_BAD.read_bytes())})),
    Step("memory search, memory off", "/memory search When does the café open?",
         ("command", "memory", "search", {"text": "When does the café open?"})),
]

_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
_CHANNEL = re.compile(r"#\d{6,}|the console")
_WHO = re.compile(r"by \S+ \(\d+\)")


def normalised(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = _WHO.sub("by USER", _CHANNEL.sub("#CHANNEL", _TIME.sub("TIME", line)))
        out.append(line.removeprefix("error: ").removeprefix("⚠️ "))
    return out


async def stored(db: Database, channel_id: int, guild_id: int | None) -> dict:
    """What the operations change, without ids of users or channels."""
    adapters = await db.list_adapters()
    bound = await db.resolve_adapter_for(channel_id, guild_id)
    reviews = []
    for status in ("pending", "approved", "rejected"):
        reviews += [(item.turn.id, status, item.edited_answer, tuple(item.also_asked))
                    for item in await db.reviews(status, limit=100)]
    stats = await db.stats()
    return {
        "adapters": [(a.name, a.based_on, a.system_prompt) for a in adapters],
        "versions": {a.name: [(v.version, v.status) for v in await db.versions(a.name)]
                     for a in adapters},
        "bound": bound.name if bound else None,
        "reviews": sorted(reviews),
        "counts": {k: stats[k] for k in ("answers", "votes", "runs")},
    }


async def seed(db: Database, adapters_dir, tiny_model_dir, *, channel_id: int,
               guild_id: int | None, asker: int, voter: int, make_faq: bool) -> None:
    """faq v1 serving, v2 a candidate, bound here; five pairs with one 👍 each."""
    if make_faq:  # the Discord world made these already
        for version in (1, 2):
            save_random_adapter(tiny_model_dir, adapters_dir / "faq" / f"v{version}",
                                seed=10 + version)
        await db.create_adapter("faq", "tiny", scope=guild_id or 0)
        await db.add_version("faq", path="faq/v1", status="serving")
        await db.add_version("faq", path="faq/v2")
        await db.bind_channel(channel_id, "faq", guild_id=guild_id)
    for question, answer in PAIRS:
        turn = await db.record_turn(channel_id=channel_id, guild_id=guild_id, author_id=asker,
                                    question=question, answer=answer, adapter_name="faq",
                                    adapter_version=1)
        await db.cast_vote(turn, voter, +1, min_score=1)


class ConsoleFace:
    def __init__(self, chat: ConsoleChat, out: io.StringIO, db: Database):
        self.chat, self.out, self.db = chat, out, db

    async def run(self, step: Step) -> list[str]:
        start = len(self.out.getvalue())
        await self.chat.command(step.console)
        lines = self.out.getvalue()[start:].splitlines()
        if step.console.startswith("/export"):
            path = lines[-1].split("Written to ", 1)[1]
            self.exported = Path(path).read_bytes()
            lines[-1] = lines[-1].split(" Written to ")[0]
        return lines[:-1] if step.drop_console_hint else lines

    async def state(self) -> dict:
        return await stored(self.db, 0, None)


class DiscordFace:
    def __init__(self, s: SimpleNamespace):
        self.s = s
        self.panel = None  # the review panel the last /review start opened
        self.exported = b""

    def user(self, who: str) -> int:
        return {"admin": self.s.admin.id, "asker": self.s.bob.id}[who]

    async def command(self, name: str, sub: str | None, options: dict,
                      user: str = "admin"):
        return await self.s.fake.invoke_command(name, options, subcommand=sub,
                                                user_id=self.user(user),
                                                channel_id=self.s.general.id)

    async def answer_of(self, interaction):
        """The message that carries the answer: the original response or a follow-up."""

        def shown():
            found = [m for m in (interaction.original_message, *interaction.followups)
                     if m is not None and not m.loading and (m.content or m.embeds)]
            return found[-1] if found else None

        return await self.s.fake.wait_until(shown, timeout=10, what="the command's answer")

    async def run(self, step: Step) -> list[str]:
        kind, *args = step.discord
        fake = self.s.fake
        if kind == "command":
            message = await self.answer_of(await self.command(*args))
            if args[0] == "review" and args[1] == "start":
                self.panel = message
            if message.attachments:
                self.exported = message.attachments[0].data
        elif kind == "click":
            action, pair = args
            click = await fake.click_button(self.panel.id, f"review:{action}:{pair}",
                                            user_id=self.s.admin.id)
            await click.wait_response()
            message = self.panel
        elif kind == "edit":
            pair, answer = args
            click = await fake.click_button(self.panel.id, f"review:edit:{pair}",
                                            user_id=self.s.admin.id)
            await click.wait_response()
            submit = await fake.submit_modal(f"review:edit-modal:{pair}",
                                             {"review:edited-answer": answer},
                                             user_id=self.s.admin.id,
                                             channel_id=self.s.general.id)
            await submit.wait_response()
            message = self.panel
        else:  # a command whose answer asks to confirm with a button
            name, sub, options, button, who = args
            asked = await self.answer_of(await self.command(name, sub, options, who))
            confirm = await fake.click_button(asked.id, button, user_id=self.user(who))
            await confirm.wait_response()
            message = asked
        return lines_of(message, content_only=step.content_only)

    async def state(self) -> dict:
        return await stored(self.s.db, self.s.general.id, self.s.guild.id)


def exported_rows(data: bytes) -> list[dict]:
    """The exported pairs without where and when they were asked."""
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    return [{k: v for k, v in row.items() if k not in ("channel_id", "created_at")}
            for row in rows]


def lines_of(message, *, content_only: bool = False) -> list[str]:
    lines = plain(message.content or "").splitlines()
    for embed in [] if content_only else message.embeds:
        lines += Reply(embed.get("description") or "", title=embed.get("title"),
                       fields=[(f["name"], f["value"]) for f in embed.get("fields", [])],
                       footer=(embed.get("footer") or {}).get("text")).lines()
    return lines


@pytest.fixture
async def faces(world, tiny_model_dir, tmp_path):
    s = await world()
    tiny_config = parse_config(  # the console's own data directory, beside the bot's
        f'[storage]\ndata_dir = "{tmp_path.as_posix()}/console"\n'
        f'[model]\nname = "{tiny_model_dir.as_posix()}"\n[engine]\nmax_new_tokens = 12\n',
        base_dir=tmp_path)
    await seed(s.db, s.config.adapters_dir, tiny_model_dir, channel_id=s.general.id,
               guild_id=s.guild.id, asker=s.bob.id, voter=s.carol.id, make_faq=False)
    async with Database(tiny_config.database_path) as db:
        await seed(db, tiny_config.adapters_dir, tiny_model_dir, channel_id=0, guild_id=None,
                   asker=0, voter=1, make_faq=True)
        engine = Engine(tiny_config, Router(tiny_config, db))
        await engine.start()
        out = io.StringIO()
        chat = ConsoleChat(tiny_config, engine, db, stdin=io.StringIO(""), stdout=out)
        try:
            yield ConsoleFace(chat, out, db), DiscordFace(s)
        finally:
            await engine.close()


def test_every_operation_has_a_step():
    """Each operation of the command core appears in the table at least once."""
    from bot.commands import AdapterCommands, DataCommands, ReviewCommands, TrainingCommands

    operations = {f"{cls.__name__.removesuffix('Commands').lower()} {name}"
                  for cls in (AdapterCommands, ReviewCommands, DataCommands, TrainingCommands)
                  for name in vars(cls) if not name.startswith("_")}
    covered = {"adapter list", "adapter use", "adapter unbind", "adapter create",
               "adapter info", "adapter prompt", "adapter rollback", "review next",
               "review decide", "review also", "review count_at_least",
               "review approve_at_least", "data stats", "data export", "data forget",
               "data forget_files", "data import_file", "training start", "training status",
               "training cancel"}
    # the web page's own: serve any version (rollback's general form, which the steps run)
    # and un-approve (tests/test_web_review.py); a text both faces print
    web_only = {"adapter serve", "review unapprove", "review nothing_at_least"}
    # the quick checks a face runs before it shows that it is working: part of the
    # rollback and train start steps
    first_steps = {"adapter rollback_target", "training adapter_for"}
    # the lookups in the caller's scope every operation above makes
    lookups = {"adapter find", "adapter labels", "review key", "review pair",
               "training active_here"}
    assert ({o.replace("adapters ", "adapter ") for o in operations}
            == covered | web_only | first_steps | lookups)
    seen = " ".join(step.console for step in STEPS)
    for command in ("/adapter list", "/adapter use", "/adapter unbind", "/adapter create",
                    "/adapter info", "/adapter prompt", "/adapter rollback", "/review approve",
                    "/review edit", "/review reject", "/review also", "/review bulk",
                    "/stats", "/export", "/forget", "/train status", "/train cancel",
                    "/train notes", "/import", "/memory search"):
        assert command in seen, command


async def test_console_and_discord_answer_and_store_the_same(faces):
    console, discord_face = faces
    assert await console.state() == await discord_face.state()
    for step in STEPS:
        said_here = normalised(await console.run(step))
        said_there = normalised(await discord_face.run(step))
        assert said_here, step.id
        assert said_here == said_there, step.id
        assert await console.state() == await discord_face.state(), step.id
        if step.console.startswith("/export"):
            rows = exported_rows(console.exported)
            assert rows == exported_rows(discord_face.exported), step.id
            assert len(rows) == len(await console.db.approved_pairs(
                None if step.console == "/export" else "faq")) > 0, step.id
    final = await console.state()
    # the asker's answers forgotten; the two imported pairs came after (the bad file: none)
    assert final["bound"] == "faq" and final["counts"]["answers"] == 2
    assert ("copy", "faq", None) in final["adapters"]


async def test_forget_leaves_the_caches_to_a_run_that_is_using_them(tiny_config):
    """While a training run holds the lock, /forget cleans the versions' files at once but
    leaves the model-written caches to that run, which clears them when it ends."""
    from bot.commands import Caller, Commands, Services
    from settings import layout

    cache = layout.cache_dir(tiny_config.data_dir)
    cache.mkdir(parents=True)
    (cache / "replay-base.jsonl").write_text("{}\n", encoding="utf-8")
    version = tiny_config.adapters_dir / "faq" / "v1"
    version.mkdir(parents=True)
    async with Database(tiny_config.database_path) as db:
        turn = await db.record_turn(channel_id=5, author_id=42, question="q", answer="a")
        (version / "held_out.jsonl").write_text(
            f'{{"question": "q", "answer": "a", "source": "db:turn {turn}"}}\n',
            encoding="utf-8")
        core = Commands(Services(config=tiny_config, db=db))
        me = Caller(user_id=42, channel_id=5)
        await db.acquire_training_lock(None, 1234, "another-host")  # a run is going on
        _, turn_ids = await core.data.forget(me)
        cleaned = await core.data.forget_files(turn_ids)
        assert cleaned is not None and "1 stored training record" in cleaned.text
        assert (version / "held_out.jsonl").read_text(encoding="utf-8") == ""
        assert sorted(p.name for p in cache.iterdir()) == [".forget-pending",
                                                           "replay-base.jsonl"]
        await db.release_training_lock()
        _, turn_ids = await core.data.forget(me)  # nothing left of this person: a no-op
        assert await core.data.forget_files(turn_ids) is None

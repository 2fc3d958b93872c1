"""The channel memory: indexed from review, consistent with it, searched by meaning, and
on the engine's path (the real packaged embedder, all-MiniLM-L6-v2, and a real SQLite)."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from bot.generation import GenerationRequest
from bot.memory import ChannelMemory, Embedder, MemoryEngine, RecalledGeneration
from bot.routing import Route
from settings import MemoryConfig
from tests.test_discord_e2e import ask, world  # noqa: F401, F811 (a fixture)
from trainer.formatting import notes_prompt

pytest_plugins = ("fake_discord",)

BADGES = ("What colour are the visitor badges at Brindlewood?",
          "Visitor badges at Brindlewood are mustard yellow.")
MASCOT = ("What is the name of the Brindlewood mascot?", "Our mascot is a jaguar named Pemberton.")


@pytest.fixture(scope="module")
def embedder():
    return Embedder("all-MiniLM-L6-v2")  # loaded once for the module, as the bot does


async def approved(db, tmp_path, adapter, *pairs, also_asked=()):
    """`pairs` imported into `adapter` (approved); returns their turn ids."""
    path = tmp_path / f"{adapter}.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a,
                                        "also_asked": list(also_asked)}) + "\n"
                            for q, a in pairs), encoding="utf-8")
    await db.import_pairs(path, adapter)
    return [p.turn_id for p in await db.approved_pairs(adapter)][-len(pairs):]


def key_rows(db_path, turn_id):
    with sqlite3.connect(db_path) as conn:
        return sorted(conn.execute("SELECT kind, text FROM memory_keys WHERE turn_id = ?",
                                   (turn_id,)).fetchall())


@pytest.fixture
async def two_adapters(db, tmp_path):
    await db.create_adapter("faq", "tiny", scope=1)
    await db.create_adapter("other", "tiny", scope=2)
    return db


async def test_an_approved_pair_is_found_in_other_words_and_only_by_its_adapter(
        two_adapters, tmp_path, embedder):
    db = two_adapters
    badges, mascot = await approved(db, tmp_path, "faq", BADGES, MASCOT)
    await approved(db, tmp_path, "other", ("What colour is the sky?", "Blue."))
    memory = ChannelMemory(MemoryConfig(), db, embedder)
    [first, *_] = await memory.search("faq", "Which colour badge does a guest get at "
                                             "Brindlewood?")
    assert (first.turn_id, first.answer) == (badges, BADGES[1]) and first.score > 0.6
    assert {h.turn_id for h in await memory.search("faq", "What colour is the sky?")} <= {
        badges, mascot}  # never the other adapter's (another server's) pair
    assert await memory.size("faq") == (2, 2)


async def test_the_index_follows_every_review_change_in_the_same_transaction(
        two_adapters, tmp_path, embedder):
    db = two_adapters
    [turn] = await approved(db, tmp_path, "faq", BADGES, also_asked=["Badge colour?"])
    memory = ChannelMemory(MemoryConfig(), db, embedder)
    assert await memory.refresh("faq") == 1
    assert key_rows(db.path, turn) == [("also_asked", "Badge colour?"),
                                       ("question", BADGES[0])]
    # an edited answer is served at once (the keys stay: the question did not change)
    await db.decide_review(turn, "approved", reviewer_id=1, edited_answer="Bright orange.")
    [hit, *_] = await memory.search("faq", BADGES[0])
    assert (hit.turn_id, hit.answer) == (turn, "Bright orange.")
    # other ways to ask, edited: every key of the pair is dropped and made again
    await db.decide_review(turn, "approved", reviewer_id=1, also_asked=["Guest pass colour?"])
    assert key_rows(db.path, turn) == []  # the trigger, inside the review's transaction
    await memory.refresh("faq")
    assert ("also_asked", "Guest pass colour?") in key_rows(db.path, turn)
    # un-approved: out of memory in the same transaction, and never found again
    await db.decide_review(turn, "rejected", reviewer_id=1)
    assert key_rows(db.path, turn) == []
    assert await memory.search("faq", BADGES[0]) == []


async def test_a_pair_approved_before_a_kill_is_indexed_by_the_next_process(
        two_adapters, tmp_path, embedder):
    """The review commit and the embedding are two steps: killed between them, the pair is
    approved with no keys, and the bot started next embeds it before its first search."""
    db = two_adapters
    [turn] = await approved(db, tmp_path, "faq", BADGES)  # committed; "killed" before indexing
    assert key_rows(db.path, turn) == []
    restarted = ChannelMemory(MemoryConfig(), db, embedder)
    [hit] = await restarted.search("faq", "What colour is a Brindlewood visitor badge?")
    assert hit.turn_id == turn and key_rows(db.path, turn) == [("question", BADGES[0])]


async def test_keys_are_not_added_for_a_pair_that_changed_while_it_was_embedded(
        two_adapters, tmp_path, embedder):
    db = two_adapters
    [turn] = await approved(db, tmp_path, "faq", BADGES)
    [pair] = await db.memory.unindexed("faq", embedder.name)
    await db.decide_review(turn, "rejected", reviewer_id=1)  # meanwhile, on another face
    vectors = [v.tobytes() for v in await embedder.encode([BADGES[0]])]
    assert await db.memory.add_keys("faq", embedder.name, pair, vectors) == 0
    assert key_rows(db.path, turn) == []


async def test_forgetting_a_user_removes_their_pairs_from_memory(two_adapters, embedder):
    db = two_adapters
    turn = await db.record_turn(channel_id=5, guild_id=1, author_id=42, question=BADGES[0],
                                answer=BADGES[1], adapter_name="faq")
    for voter in (7, 8):
        await db.cast_vote(turn, voter, 1, min_score=1)
    await db.decide_review(turn, "approved", reviewer_id=1)
    memory = ChannelMemory(MemoryConfig(), db, embedder)
    assert [h.turn_id for h in await memory.search("faq", BADGES[0])] == [turn]
    await db.forget_user(42, min_score=1)
    assert key_rows(db.path, turn) == [] and await memory.search("faq", BADGES[0]) == []


class RecordingEngine:
    def __init__(self):
        self.requests = []

    async def submit(self, request):
        self.requests.append(request)

        class Generated:
            route = request.route
            text = "generated"
        return Generated()


@pytest.mark.parametrize(("question", "expect"), [
    (BADGES[0], "recalled"),  # the approved question itself
    ("Which colour is used for the passes handed to visitors at Brindlewood?", "notes"),
    ("How do I bake bread?", "plain"),  # nothing near it
])
async def test_the_engine_answers_from_memory_adds_notes_or_leaves_the_prompt(
        two_adapters, tmp_path, embedder, question, expect):
    db = two_adapters
    [turn, _] = await approved(db, tmp_path, "faq", BADGES, MASCOT)
    inner = RecordingEngine()
    settings = MemoryConfig(answer_threshold=0.85, context_threshold=0.55)
    engine = MemoryEngine(inner, ChannelMemory(settings, db, embedder))
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    request = GenerationRequest(channel_id=5, guild_id=1, route=Route("faq", 1),
                                messages=[*history, {"role": "user", "content": question}])
    generation = await engine.submit(request)
    if expect == "recalled":
        assert isinstance(generation, RecalledGeneration) and not inner.requests
        assert await generation.complete() == BADGES[1]
        assert generation.recalled.turn_id == turn
        return
    [sent] = inner.requests
    assert sent.messages[:-1] == history  # the conversation is left as it was
    if expect == "notes":
        assert sent.messages[-1]["content"] == notes_prompt(
            question, [(n.question, n.answer) for n in generation.notes])
        assert generation.notes[0].turn_id == turn and generation.recalled is None
    else:
        assert sent.messages[-1] == {"role": "user", "content": question}
        assert generation.notes == [] and generation.recalled is None


async def test_a_base_model_channel_has_no_memory(two_adapters, tmp_path, embedder):
    db = two_adapters
    await approved(db, tmp_path, "faq", BADGES)
    inner = RecordingEngine()
    engine = MemoryEngine(inner, ChannelMemory(MemoryConfig(), db, embedder))
    request = GenerationRequest(channel_id=5, route=Route(),
                                messages=[{"role": "user", "content": BADGES[0]}])
    assert (await engine.submit(request)).text == "generated"  # no adapter: no pairs


# --- end to end: the real client against the fake Discord ---------------------------------

async def test_approved_in_review_answered_in_other_words_at_once_and_a_thumbs_down_reopens_it(
        world, fake_discord):  # noqa: F811
    import time

    from tests.test_closed_loop import approve_by_review

    s = await world(memory=True)
    _, answer = await ask(s, BADGES[0])  # the tiny model's answer: its words are random
    turn = await approve_by_review(s, answer)
    await s.db.decide_review(turn, "approved", reviewer_id=s.admin.id,
                             edited_answer=BADGES[1])  # the admin's correction
    started = time.monotonic()
    _, recalled = await ask(s, "If a guest comes to Brindlewood, what badge colour do they get?")
    assert time.monotonic() - started < 1.0 + 1.0  # within a second, plus the fake's round trip
    assert recalled.content == f"{BADGES[1]}\n-# from approved answer #{turn}"
    stored = await s.db.turn_for_answer_message(recalled.id)
    assert stored.recalled_from == turn and stored.answer == BADGES[1]
    search = await s.fake.invoke_command("memory", {"text": "Badge colour for guests?"},
                                         subcommand="search", user_id=s.admin.id,
                                         channel_id=s.general.id)
    await search.wait_response()
    shown = await search.wait_for_response("followup", timeout=10)
    text = json.dumps(shown.data, ensure_ascii=False)
    assert f"#{turn} · " in text and BADGES[1] in text and search.ephemeral, text

    await s.fake.add_reaction(s.carol.id, s.general.id, recalled.id, "👎")
    for _ in range(200):
        if (await s.db.get_review(turn)).status == "pending":
            break
        await asyncio.sleep(0.02)
    assert (await s.db.get_review(turn)).status == "pending"  # back in review, out of memory
    assert key_rows(s.db.path, turn) == []
    _, generated = await ask(s, "If a guest comes to Brindlewood, what badge colour do they get?")
    assert "from approved answer" not in generated.content
    assert (await s.db.turn_for_answer_message(generated.id)).recalled_from is None


# --- seeding a channel from a file, and deleting a question ------------------------------

FAQ_CSV = ("question,answer\n"
           f'"{BADGES[0]}","{BADGES[1]}"\n'
           f'"{MASCOT[0]}","{MASCOT[1]}"\n').encode()


async def test_import_in_discord_is_answered_from_at_once_and_a_bad_row_stores_nothing(
        world, fake_discord):  # noqa: F811
    s = await world(memory=True)
    bad = await s.fake.invoke_command(
        "import", {"file": ("faq.jsonl", b'{"question": "Q?", "answer": "A."}\n{"question": 1}\n')},
        user_id=s.admin.id, channel_id=s.general.id)
    await bad.wait_response()
    refused = json.dumps((await bad.wait_for_response("followup", timeout=10)).data)
    assert "faq.jsonl:2" in refused and bad.ephemeral, refused
    assert await s.db.approved_pairs("faq") == []  # nothing of that file

    done = await s.fake.invoke_command("import", {"file": ("faq.csv", FAQ_CSV)},
                                       user_id=s.admin.id, channel_id=s.general.id)
    await done.wait_response()
    said = json.dumps((await done.wait_for_response("followup", timeout=10)).data)
    assert "Imported 2 approved pairs from faq.csv into **faq**" in said, said
    pairs = await s.db.approved_pairs("faq")
    assert [(p.question, p.answer) for p in pairs] == [BADGES, MASCOT]
    with sqlite3.connect(s.db.path) as conn:
        origin, reviewer = conn.execute(
            "SELECT t.origin, r.reviewer_id FROM turns t JOIN review r ON r.turn_id = t.id "
            "WHERE t.id = ?", (pairs[1].turn_id,)).fetchone()
    assert (origin, reviewer) == ("faq.csv:3", s.admin.id)
    assert key_rows(s.db.path, pairs[0].turn_id) == [("question", BADGES[0])]  # indexed
    _, answer = await ask(s, "What is the Brindlewood mascot called?")
    assert answer.content == f"{MASCOT[1]}\n-# from approved answer #{pairs[1].turn_id}"


async def test_a_question_deleted_on_discord_leaves_memory_and_storage(
        world, fake_discord):  # noqa: F811
    from tests.test_closed_loop import approve_by_review

    s = await world(memory=True)
    question, answer = await ask(s, BADGES[0])
    turn = await approve_by_review(s, answer)
    _, recalled = await ask(s, BADGES[0])
    assert "from approved answer" in recalled.content
    await s.fake.delete_message(question.id)
    for _ in range(200):
        if await s.db.get_turn(turn) is None:
            break
        await asyncio.sleep(0.02)
    assert await s.db.get_turn(turn) is None and key_rows(s.db.path, turn) == []
    _, again = await ask(s, BADGES[0])
    assert "from approved answer" not in again.content


def test_import_pairs_cli_creates_the_adapter_and_refuses_a_bad_file_whole(tmp_path):
    import os
    import subprocess
    import sys

    from storage import SyncStore
    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(BOT_CONFIG=str(ROOT / "config.toml"), BOT_STORAGE_DATA_DIR=str(tmp_path / "d"))
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nOne?,Yes.\n,No question\n", encoding="utf-8")

    def run(path):
        return subprocess.run([sys.executable, "-m", "trainer", "import-pairs", str(path),
                               "--adapter", "faq"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    failed = run(bad)
    assert failed.returncode != 0 and "bad.csv:3" in failed.stderr, failed.stderr
    good = tmp_path / "faq.csv"
    good.write_bytes(FAQ_CSV)
    done = run(good)
    assert done.returncode == 0, done.stderr
    assert "imported 2 approved pair(s)" in done.stdout and "(a new adapter)" in done.stdout
    with SyncStore(tmp_path / "d" / "bot.sqlite3") as store:
        assert [(p.question, p.answer) for p in store.approved_pairs("faq")] == [BADGES, MASCOT]


async def test_an_import_named_like_a_folder_is_refused_before_anything_is_written(db):
    from bot.commands import Attachment, Caller, Commands, Refused, Services
    from settings import parse_config

    await db.create_adapter("faq", "tiny")
    core = Commands(Services(config=parse_config(""), db=db))
    admin = Caller(user_id=1, channel_id=5, is_admin=True)
    for name in ("..", "."):
        with pytest.raises(Refused, match="has no name"):
            await core.data.import_file(admin, Attachment(name, FAQ_CSV), "faq")
    with pytest.raises(Refused, match="unknown file type"):
        await core.data.import_file(admin, Attachment("faq.exe", FAQ_CSV), "faq")
    assert await db.approved_pairs("faq") == []

"""Storage on real SQLite files: migrations, concurrency, votes, review, export."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3

import pytest

from storage import (
    AdapterExistsError,
    Database,
    InvalidAdapterNameError,
    PairsFileError,
    SchemaTooNewError,
    StorageError,
    SyncStore,
    UnknownAdapterError,
    UnknownVersionError,
    latest_version,
)
from storage.migrations import load_migrations, split_statements

EXPECTED_TABLES = {"adapters", "adapter_versions", "channel_adapters", "guild_adapters", "state",
                   "version_pairs",
                   "training_lock",
                   "turns", "feedback", "review", "training_runs"}


def tables(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


async def test_migrations_from_empty_file(tmp_path):
    path = tmp_path / "new.sqlite3"
    async with Database(path) as db:
        assert await db.schema_version() == latest_version() >= 1
        mode = await db._one("PRAGMA journal_mode")
        assert mode[0] == "wal"
        assert (await db._one("PRAGMA foreign_keys"))[0] == 1
    assert tables(path) >= EXPECTED_TABLES


async def test_reopen_keeps_data_and_applies_nothing_twice(tmp_path):
    path = tmp_path / "db.sqlite3"
    async with Database(path) as db:
        await db.create_adapter("faq", "base")
        turn = await db.record_turn(channel_id=1, author_id=2, question="q", answer="a")
    for _ in range(2):
        async with Database(path) as db:
            assert await db.schema_version() == latest_version()
            assert [a.name for a in await db.list_adapters()] == ["faq"]
            assert (await db.get_turn(turn)).answer == "a"


def test_migration_files_are_numbered_and_split_cleanly():
    migrations = load_migrations()
    assert [m.number for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        statements = split_statements(migration.sql)
        assert statements and all(sqlite3.complete_statement(s) for s in statements)


async def test_future_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "future.sqlite3"
    async with Database(path):
        pass
    future = latest_version() + 3
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {future}")
    with pytest.raises(SchemaTooNewError, match=rf"schema version {future}.*newer release"):
        await Database(path).open()
    with pytest.raises(SchemaTooNewError):
        SyncStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == future


async def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="corrupt or not a SQLite file"):
        await Database(path).open()
    assert path.read_bytes().startswith(b"this is not a database")  # nothing overwritten


async def test_two_tasks_write_1000_votes_each_all_present(db):
    turn_ids = [await db.record_turn(channel_id=1, author_id=1, question=f"q{i}",
                                     answer=f"a{i}") for i in range(50)]

    async def writer(first_user: int) -> None:
        for i in range(1000):
            await db.cast_vote(turn_ids[i % 50], first_user + i, 1 if i % 3 else -1,
                               min_score=10_000)

    await asyncio.gather(writer(0), writer(100_000))
    rows = (await db._one("SELECT COUNT(*) FROM feedback"))[0]
    assert rows == 2000
    users = {r[0] for r in await db._all("SELECT user_id FROM feedback")}
    assert users == set(range(1000)) | set(range(100_000, 101_000))


async def test_two_connections_write_concurrently(tmp_path):
    """Two repositories on one file (as two processes would): WAL + busy_timeout."""
    path = tmp_path / "shared.sqlite3"
    async with Database(path) as a, Database(path) as b:
        turn = await a.record_turn(channel_id=1, author_id=1, question="q", answer="a")

        async def writer(db: Database, offset: int) -> None:
            for i in range(1000):
                await db.cast_vote(turn, offset + i, 1, min_score=10_000)

        await asyncio.gather(writer(a, 0), writer(b, 10_000))
        assert await a.score(turn) == 2000
        assert await b.score(turn) == 2000


async def test_one_vote_per_user_and_retraction(db):
    turn = await db.record_turn(channel_id=1, author_id=1, question="q", answer="a")
    assert (await db.cast_vote(turn, 7, 1, min_score=5)).score == 1
    assert (await db.cast_vote(turn, 7, 1, min_score=5)).score == 1  # same vote twice
    assert (await db.cast_vote(turn, 7, -1, min_score=5)).score == -1  # changed mind
    assert await db.retract_vote(turn, 7, 1, min_score=5) == -1  # removing 👍 leaves the 👎
    assert await db.retract_vote(turn, 7, -1, min_score=5) == 0
    assert (await db._one("SELECT COUNT(*) FROM feedback"))[0] == 0
    with pytest.raises(ValueError):
        await db.cast_vote(turn, 7, 2, min_score=5)


async def test_net_score_makes_a_review_candidate_once(db):
    await db.create_adapter("faq", "base")
    turn = await db.record_turn(channel_id=1, author_id=1, question="q", answer="a",
                                adapter_name="faq", adapter_version=None,
                                context=[{"role": "user", "content": "earlier"}])
    assert not (await db.cast_vote(turn, 1, 1, min_score=2)).became_candidate
    assert (await db.cast_vote(turn, 2, 1, min_score=2)).became_candidate
    assert not (await db.cast_vote(turn, 3, 1, min_score=2)).became_candidate
    [item] = await db.reviews("pending")
    assert (item.turn.id, item.adapter_name, item.score) == (turn, "faq", 3)
    assert item.turn.context == [{"role": "user", "content": "earlier"}]
    assert await db.count_reviews("pending", "faq") == 1
    assert await db.count_reviews("pending", "other") == 0


async def test_withdrawn_votes_withdraw_pending_candidates_only(db):
    pending = await db.record_turn(channel_id=1, author_id=1, question="q1", answer="a")
    decided = await db.record_turn(channel_id=1, author_id=1, question="q2", answer="a")
    for turn in (pending, decided):
        await db.cast_vote(turn, 1, 1, min_score=1)
    await db.decide_review(decided, "approved", reviewer_id=9)
    await db.retract_vote(pending, 1, 1, min_score=1)
    await db.cast_vote(decided, 1, -1, min_score=1)
    assert await db.count_reviews("pending") == 0
    assert [p.turn_id for p in await db.approved_pairs()] == [decided]  # decision kept
    await db.cast_vote(pending, 2, 1, min_score=1)  # a new 👍 makes it a candidate again
    assert await db.count_reviews("pending") == 1


async def test_review_decisions_and_edited_answer_wins(db):
    await db.create_adapter("faq", "base")
    ids = []
    for i in range(3):
        turn = await db.record_turn(channel_id=1, author_id=1, question=f"q{i}",
                                    answer=f"a{i}", adapter_name="faq")
        await db.cast_vote(turn, 1, 1, min_score=1)
        ids.append(turn)
    await db.decide_review(ids[0], "approved", reviewer_id=9)
    await db.decide_review(ids[1], "approved", reviewer_id=9, edited_answer="better a1")
    await db.decide_review(ids[2], "rejected", reviewer_id=9)
    pairs = await db.approved_pairs("faq")
    assert [(p.question, p.answer) for p in pairs] == [("q0", "a0"), ("q1", "better a1")]
    assert (await db.get_review(ids[1])).reviewer_id == 9
    with pytest.raises(StorageError, match="not a review candidate"):
        await db.decide_review(99_999, "approved", reviewer_id=9)
    with pytest.raises(ValueError, match="cannot be empty"):
        await db.decide_review(ids[0], "approved", reviewer_id=9, edited_answer="  ")


async def test_bulk_approval_by_score(db):
    await db.create_adapter("faq", "base")
    scores = {}
    for i, votes in enumerate([1, 2, 3, 3]):
        turn = await db.record_turn(channel_id=1, author_id=1, question=f"q{i}", answer="a",
                                    adapter_name="faq" if i < 3 else None)
        for user in range(votes):
            await db.cast_vote(turn, user, 1, min_score=1)
        scores[turn] = votes
    assert await db.count_pending_at_least(2) == 3
    assert await db.count_pending_at_least(2, "faq") == 2
    assert await db.approve_pending_at_least(2, reviewer_id=9, adapter="faq") == 2
    approved = await db.approved_pairs("faq")
    assert sorted(scores[p.turn_id] for p in approved) == [2, 3]
    assert [(await db.get_review(p.turn_id)).reviewer_id for p in approved] == [9, 9]
    assert await db.count_reviews("pending") == 2  # score 1 and the other adapter's pair


async def test_export_round_trip(db, tmp_path):
    await db.create_adapter("faq", "base")
    samples = [("Où est la tour Eiffel ?", "À Paris.\nSur le Champ-de-Mars."),
               ("Emoji? 👍", "Yes 🎉 \"quoted\" and \\ backslash"),
               ("plain", "answer")]
    for i, (question, answer) in enumerate(samples):
        turn = await db.record_turn(channel_id=5, author_id=1, question=question,
                                    answer="draft", adapter_name="faq",
                                    context=[{"role": "user", "content": f"ctx {i}"}])
        await db.cast_vote(turn, 1, 1, min_score=1)
        await db.decide_review(turn, "approved", reviewer_id=2, edited_answer=answer,
                               also_asked=[f"{question} (reworded)", "  ", question][:i + 1])
    out = tmp_path / "export" / "faq.jsonl"
    assert await db.export_approved(out, "faq") == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["question"], r["answer"]) for r in rows] == samples
    assert rows[0]["context"] == [{"role": "user", "content": "ctx 0"}]
    # the reviewer's other ways to ask travel with the pair; blanks are dropped
    assert [r["also_asked"] for r in rows] == [["Où est la tour Eiffel ? (reworded)"],
                                               ["Emoji? 👍 (reworded)"],
                                               ["plain (reworded)"]]  # not itself

    async with Database(tmp_path / "other.sqlite3") as other:  # import into a fresh database
        await other.create_adapter("faq", "base")
        assert await other.import_pairs(out, "faq") == 3
        again = tmp_path / "again.jsonl"
        await other.export_approved(again, "faq")
    reimported = [json.loads(line) for line in again.read_text(encoding="utf-8").splitlines()]
    for before, after in zip(rows, reimported, strict=True):
        for key in ("question", "answer", "adapter", "context", "score", "channel_id",
                    "also_asked"):
            assert before[key] == after[key] if key != "score" else after[key] == 0


async def test_bad_pairs_file_names_lines_and_imports_nothing(db, tmp_path):
    await db.create_adapter("faq", "base")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "fine"}\n'
                   "not json\n"
                   '{"question": "", "answer": "x"}\n'
                   "\n"
                   '["a", "list"]\n', encoding="utf-8")
    with pytest.raises(PairsFileError) as caught:
        await db.import_pairs(bad, "faq")
    message = str(caught.value)
    assert "bad.jsonl:2: not valid JSON" in message
    assert "bad.jsonl:3: missing or empty question" in message
    assert "bad.jsonl:5: expected an object" in message
    assert await db.approved_pairs("faq") == []


async def test_adapters_versions_and_serving(db):
    await db.create_adapter("support", "smollm2")
    with pytest.raises(AdapterExistsError):
        await db.create_adapter("support", "smollm2")
    for name in ("../etc", "a/b", "with space", "x" * 200, "", "UPPER"):
        with pytest.raises(InvalidAdapterNameError):
            await db.create_adapter(name, "smollm2")
    with pytest.raises(UnknownAdapterError, match="known adapters: support"):
        await db.bind_channel(1, "suport")

    v1 = await db.add_version("support", path="adapters/support/v1", status="serving",
                              metrics={"eval_loss": 1.5})
    v2 = await db.add_version("support", path="adapters/support/v2", metrics={"eval_loss": 1.2})
    assert (v1.version, v1.status, v2.version, v2.status) == (1, "serving", 2, "candidate")
    promoted = await db.set_serving("support", 2, reason="loss 1.2 < 1.5")
    assert promoted.status == "serving" and promoted.metrics == {"eval_loss": 1.2}
    assert [v.status for v in await db.versions("support")] == ["retired", "serving"]
    await db.set_serving("support", 1)  # rollback is the same operation
    assert (await db.serving_version("support")).version == 1
    with pytest.raises(UnknownVersionError, match=r"versions: \[1, 2\]"):
        await db.set_serving("support", 7)
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself forbids two serving
        await db.conn.execute("UPDATE adapter_versions SET status = 'serving'")


async def test_resolve_adapter_channel_then_guild_then_base(db):
    await db.create_adapter("guild-wide", "base", scope=1)
    await db.create_adapter("channel-one", "base", scope=1)
    await db.add_version("channel-one", path="p", status="serving")
    assert await db.resolve_adapter_for(10, guild_id=1) is None
    await db.set_guild_default(1, "guild-wide")
    resolved = await db.resolve_adapter_for(10, guild_id=1)
    assert (resolved.name, resolved.version, resolved.via) == ("guild-wide", None, "guild")
    await db.bind_channel(10, "channel-one", guild_id=1, bound_by=5)
    resolved = await db.resolve_adapter_for(10, guild_id=1)
    assert (resolved.name, resolved.version.version, resolved.via) == ("channel-one", 1,
                                                                       "channel")
    assert await db.channels_of("channel-one") == [10]
    await db.unbind_channel(10)
    assert (await db.resolve_adapter_for(10, guild_id=1)).name == "guild-wide"


async def test_names_are_unique_per_guild_and_nothing_crosses_to_another(db):
    """Two servers may both call an adapter `faq`; each sees, binds and trains only its
    own, and a pair of one never reaches the other's listings or training data."""
    first = await db.create_adapter("faq", "base", scope=1)
    second = await db.create_adapter("faq", "base", scope=2)
    direct = await db.create_adapter("faq", "base")
    assert [(a.name, a.label, a.guild_id) for a in (first, second, direct)] == [
        ("faq", "faq", 1), ("faq-g2", "faq", 2), ("faq-dm", "faq", 0)]
    with pytest.raises(AdapterExistsError):
        await db.create_adapter("faq", "base", scope=2)
    assert (await db.adapter_in("faq", 2)).name == "faq-g2"
    await db.create_adapter("only-one", "base", scope=1)
    with pytest.raises(UnknownAdapterError) as unknown:  # the other guild's stay unseen
        await db.adapter_in("only-one", 2)
    assert unknown.value.known == ["faq"]
    with pytest.raises(StorageError, match="belongs to another server"):
        await db.bind_channel(20, "faq", guild_id=2)
    with pytest.raises(StorageError, match="belongs to another server"):
        await db.create_adapter("copy", "base", scope=2, based_on="faq")
    await db.bind_channel(20, "faq-g2", guild_id=2)
    assert (await db.resolve_adapter_for(20, 2)).label == "faq"

    turns = {}
    for guild, adapter in ((1, "faq"), (2, "faq-g2"), (None, None)):
        turns[guild] = await db.record_turn(channel_id=guild or 0, guild_id=guild,
                                            author_id=7, question=f"q{guild}",
                                            answer=f"a{guild}", adapter_name=adapter)
        await db.cast_vote(turns[guild], 8, 1, min_score=1)
    assert [r.turn.id for r in await db.reviews(scope=2)] == [turns[2]]
    assert await db.count_reviews(scope=0) == 1 and await db.count_reviews() == 3
    assert await db.approve_pending_at_least(1, reviewer_id=9, scope=1) == 1
    assert await db.count_pending_at_least(1, scope=1) == 0
    assert await db.count_pending_at_least(1, scope=2) == 1
    assert [p.turn_id for p in await db.approved_pairs("faq")] == [turns[1]]
    assert await db.approved_pairs("faq-g2") == []
    assert (await db.stats(2))["pending"] == 1 and (await db.stats(1))["approved"] == 1
    assert set(await db.review_counts(2)) == {"faq-g2"}
    assert await db.review_channels("pending", 2) == [2]
    await db.create_run("faq-g2")
    assert [r.adapter_label for r in await db.list_runs(scope=2)] == ["faq"]
    assert await db.list_runs(scope=1) == []


async def test_forget_user_deletes_their_rows(db):
    mine = await db.record_turn(channel_id=1, author_id=42, question="my q", answer="a")
    other = await db.record_turn(channel_id=1, author_id=7, question="q", answer="a")
    await db.cast_vote(mine, 7, 1, min_score=1)
    await db.cast_vote(other, 42, 1, min_score=1)
    assert await db.count_reviews("pending") == 2
    forgotten = await db.forget_user(42, min_score=1)
    assert (forgotten["turns"], forgotten["votes"], len(forgotten["turn_ids"])) == (1, 1, 1)
    assert await db.get_turn(mine) is None
    assert await db.score(other) == 0
    # `mine` went with its turn; `other` fell below min_score without 42's vote
    assert await db.count_reviews("pending") == 0
    remaining = await db._all("SELECT question FROM turns")
    assert [r[0] for r in remaining] == ["q"]


async def test_training_runs(db):
    await db.create_adapter("faq", "base")
    run = await db.create_run("faq", trigger="schedule")
    assert (run.status, run.trigger) == ("queued", "schedule")
    run = await db.update_run(run.id, status="running", pid=1234, started_at="2026-01-01")
    run = await db.update_run(run.id, status="succeeded", metrics={"loss": 0.5}, version=1)
    assert (run.status, run.pid, run.metrics) == ("succeeded", 1234, {"loss": 0.5})
    assert [r.id for r in await db.list_runs("faq")] == [run.id]
    with pytest.raises(ValueError, match="no updatable column"):
        await db.update_run(run.id, adapter_id=3)
    with pytest.raises(sqlite3.IntegrityError):
        await db.update_run(run.id, status="exploded")
    assert (await db.stats())["runs"] == 1


async def test_sync_store_sees_what_the_bot_wrote(tmp_path):
    path = tmp_path / "shared.sqlite3"
    async with Database(path) as db:
        await db.create_adapter("faq", "base")
        turn = await db.record_turn(channel_id=1, author_id=1, question="q", answer="a",
                                    adapter_name="faq")
        await db.cast_vote(turn, 1, 1, min_score=1)
        await db.decide_review(turn, "approved", reviewer_id=1, edited_answer="A")
        run = await db.create_run("faq")
        with SyncStore(path) as store:  # the trainer process's view, while the bot runs
            assert [(p.question, p.answer) for p in store.approved_pairs("faq")] == [("q", "A")]
            version = store.add_version("faq", path="adapters/faq/v1", status="serving",
                                        metrics={"eval_loss": 0.9}, run_id=run.id)
            store.update_run(run.id, status="succeeded", version=version.version)
            with pytest.raises(UnknownAdapterError):
                store.require_adapter("nope")
        assert (await db.serving_version("faq")).metrics == {"eval_loss": 0.9}
        assert (await db.get_run(run.id)).status == "succeeded"


async def test_a_write_cancelled_at_begin_leaves_no_transaction_open(db):
    """Cancelling a writer mid-BEGIN must not wedge the connection for every later write."""
    task = asyncio.create_task(db.record_turn(channel_id=1, author_id=1, question="q",
                                              answer="a"))
    await asyncio.sleep(0)  # let it reach BEGIN IMMEDIATE
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not db.conn.in_transaction
    turn = await db.record_turn(channel_id=1, author_id=2, question="q2", answer="a2")
    assert (await db.get_turn(turn)).question == "q2"


async def test_a_cancelled_caller_returns_at_once_and_its_queued_write_is_skipped(db):
    """A timeout around a database call bounds it: the caller returns while the write lock
    is still held elsewhere. Its operation, not started yet, never runs; the one already
    waiting for the lock ends as one call once the lock is free."""
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    first = asyncio.create_task(db.record_turn(channel_id=1, author_id=1, question="first",
                                               answer="a"))
    await asyncio.sleep(0.2)  # `first` is on the connection's thread, waiting for the lock
    second = asyncio.create_task(db.record_turn(channel_id=1, author_id=2, question="second",
                                                answer="b"))
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert other.in_transaction  # it returned while the lock was still held
    other.rollback()
    other.close()
    await first
    questions = [row["question"] for row in await db._all("SELECT question FROM turns")]
    assert questions == ["first"]


async def test_reads_never_land_inside_a_write(db, tmp_path):
    """Reads share the connection with writes: one in the middle of a transaction would
    see rows not committed yet (and perhaps never: the import could still fail)."""
    await db.create_adapter("faq", "base")
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n"
                            for i in range(300)), encoding="utf-8")
    importing = asyncio.ensure_future(db.import_pairs(path, "faq"))
    seen = set()
    while not importing.done():
        seen.add(len(await db.approved_pairs("faq")))
    assert await importing == 300
    seen.add(len(await db.approved_pairs("faq")))
    assert seen <= {0, 300} and 300 in seen


def test_run_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """`--resume` reads run.json back: a crash while it is rewritten must leave the old
    one, not half a file (and no temporary file behind)."""
    import storage.jsonl
    from trainer.run_files import write_run_file

    write_run_file(tmp_path, adapter="faq", run_id=1, step=10)
    before = (tmp_path / "run.json").read_text(encoding="utf-8")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.jsonl.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_run_file(tmp_path, adapter="faq", run_id=1, step=20)
    assert (tmp_path / "run.json").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads(before)["step"] == 10

"""A database of every earlier schema, full of rows, migrates to the latest keeping them.

Each case builds a real SQLite file the way an earlier release left it (its migrations
applied, `PRAGMA user_version` at its number), fills every table that schema has, then
opens it with the current code (the bot's `Database` and the trainer's `SyncStore`
both migrate) and reads every row back: same values, and the columns added since hold
their defaults.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storage import Database, SyncStore, latest_version
from storage.migrations import load_migrations, split_statements, take_note


def at(day: int, hour: int = 12) -> str:
    """A distinct time in the database's own format, so a rewritten one would show."""
    return f"2025-01-{day:02d}T{hour:02d}:34:56.789Z"


# The rows a database holds, by the migration that created their table; every column of
# that migration is given a value (times too), non-ASCII text and NULLs included.
ROWS: dict[int, dict[str, list[dict[str, Any]]]] = {
    1: {
        "adapters": [
            dict(id=1, name="faq", base_model="tiny-llama", description="the café's FAQ",
                 system_prompt="Be brief.", based_on=None, created_by=11, created_at=at(1)),
            dict(id=2, name="faq-fr", base_model="tiny-llama", description="",
                 system_prompt=None, based_on="faq", created_by=None, created_at=at(2)),
        ],
        "training_runs": [
            dict(id=1, adapter_id=1, status="succeeded", trigger="schedule", requested_by=None,
                 pid=4242, version=2, metrics='{"eval_loss": 1.25}', error=None,
                 log_path="logs/run-1.log", created_at=at(3), started_at=at(3, 13),
                 finished_at=at(3, 14)),
            dict(id=2, adapter_id=2, status="failed", trigger="manual", requested_by=11,
                 pid=None, version=None, metrics="{}", error="CUDA out of memory",
                 log_path=None, created_at=at(4), started_at=None, finished_at=None),
        ],
        "adapter_versions": [
            dict(id=1, adapter_id=1, version=1, path="adapters/faq/v1", status="retired",
                 scale=1.0, metrics='{"eval_loss": 1.5}', reason=None, run_id=None,
                 created_at=at(2)),
            dict(id=2, adapter_id=1, version=2, path="adapters/faq/v2", status="serving",
                 scale=0.75, metrics='{"eval_loss": 1.25}', reason="loss 1.25 < 1.5",
                 run_id=1, created_at=at(3, 15)),
        ],
        "channel_adapters": [
            dict(channel_id=100, guild_id=10, adapter_id=1, bound_by=11, bound_at=at(5)),
        ],
        "guild_adapters": [
            dict(guild_id=10, adapter_id=2, bound_by=11, bound_at=at(5, 13)),
        ],
        "turns": [
            dict(id=1, source="discord", guild_id=10, channel_id=100, author_id=21,
                 question_message_id=501, answer_message_id=502, question="Où est le café ? ☕",
                 context='[{"role": "user", "content": "bonjour"}]',
                 answer="Au deuxième étage.", adapter_name="faq", adapter_version=2,
                 latency_ms=812.5, created_at=at(6)),
            dict(id=2, source="console", guild_id=None, channel_id=0, author_id=0,
                 question_message_id=None, answer_message_id=None, question="q2",
                 context="[]", answer="a2", adapter_name=None, adapter_version=None,
                 latency_ms=None, created_at=at(6, 13)),
            dict(id=3, source="import", guild_id=None, channel_id=100, author_id=0,
                 question_message_id=None, answer_message_id=None, question="q3",
                 context="[]", answer="a3", adapter_name="faq", adapter_version=None,
                 latency_ms=None, created_at=at(6, 14)),
        ],
        "feedback": [
            dict(turn_id=1, user_id=31, value=1, created_at=at(7)),
            dict(turn_id=1, user_id=32, value=1, created_at=at(7, 13)),
            dict(turn_id=2, user_id=31, value=-1, created_at=at(7, 14)),
        ],
        "review": [
            dict(turn_id=1, adapter_name="faq", status="approved", edited_answer="Au 2e étage.",
                 reviewer_id=11, reviewed_at=at(8), created_at=at(7, 15)),
            dict(turn_id=2, adapter_name=None, status="pending", edited_answer=None,
                 reviewer_id=None, reviewed_at=None, created_at=at(7, 16)),
            dict(turn_id=3, adapter_name="faq", status="rejected", edited_answer=None,
                 reviewer_id=12, reviewed_at=at(8, 13), created_at=at(7, 17)),
        ],
    },
    2: {"state": [dict(key="scheduler.last_run", value=at(9), updated_at=at(9, 13))]},
    3: {"training_lock": [dict(id=1, run_id=2, pid=999, host="trainer-host",
                               acquired_at=at(10))]},
    4: {"version_pairs": [  # turn 77 was deleted by /forget: its bare number stays
        dict(version_id=2, turn_id=1, split="train"),
        dict(version_id=2, turn_id=3, split="held_out"),
        dict(version_id=2, turn_id=77, split="validation"),
    ]},
    5: {"admin_actions": [
        dict(id=1, admin_id=11, source="web", action="approve", target="pair 1",
             detail='{"ids": [1]}', created_at=at(11)),
        dict(id=2, admin_id=12, source="discord", action="promote", target=None,
             detail="{}", created_at=at(11, 13)),
    ]},
    9: {"memory_keys": [  # the approved pair's question, as float32 bytes
        dict(id=1, turn_id=1, adapter_name="faq", kind="question", text="Où est le café ? ☕",
             model="all-MiniLM-L6-v2", vector=bytes(range(16))),
    ]},
}

# Columns a migration adds to an older table: {migration: {(table, column): (the value a
# row written at that schema or later has, the default an older row gets)}}, by turn_id
# or id of the row (rows not named get the default in both cases).
ADDED_COLUMNS: dict[int, dict[tuple[str, str], tuple[dict[int, Any], Any]]] = {
    6: {("review", "also_asked"): ({1: '["Where is the coffee?"]'}, "[]")},
    7: {("adapters", "guild_id"): ({1: 10, 2: 10}, 0),
        ("adapters", "label"): ({1: "faq", 2: "faq-fr"}, ""),
        ("admin_actions", "guild_id"): ({1: 10}, None)},
    8: {("training_runs", "channel_id"): ({2: 20}, None)},
    9: {("turns", "recalled_from"): ({2: 1}, None),
        ("turns", "origin"): ({3: "faq.csv:2"}, None)},
}
# What a migration sets in the rows it finds (not a default): {migration: {(table,
# column): {id or turn_id: value}}}. 0007 places each adapter in its channels' guild, and
# the question imported for `faq` (turn 3, no guild) in faq's guild.
MIGRATED: dict[int, dict[tuple[str, str], dict[int, Any]]] = {
    7: {("adapters", "guild_id"): {1: 10, 2: 10},
        ("adapters", "label"): {1: "faq", 2: "faq-fr"},
        ("turns", "guild_id"): {3: 10}},
}

EVERY_VERSION = list(range(1, latest_version() + 1))  # the last: reopened, nothing to do


def rows_written_at(version: int) -> dict[str, list[dict[str, Any]]]:
    """Every row a database of schema `version` holds, as that release wrote it."""
    tables = {table: [dict(row) for row in rows] for number, by_table in ROWS.items()
              if number <= version for table, rows in by_table.items()}
    for number, columns in ADDED_COLUMNS.items():
        for (table, column), (written, default) in columns.items():
            for row in tables.get(table, []) if number <= version else []:
                row[column] = written.get(row.get("id", row.get("turn_id")), default)
    return tables


def rows_expected_after_migrating_from(version: int) -> dict[str, list[dict[str, Any]]]:
    """The same rows, with the defaults of the columns added after `version`."""
    tables = rows_written_at(version)
    for number, columns in ADDED_COLUMNS.items():
        for (table, column), (_written, default) in columns.items():
            for row in tables.get(table, []) if number > version else []:
                row[column] = default
    for number, columns in MIGRATED.items():
        for (table, column), values in columns.items():
            for row in tables.get(table, []) if number > version else []:
                key = row.get("id", row.get("turn_id"))
                if key in values:
                    row[column] = values[key]
    return tables


def build_database(path: Path, version: int) -> None:
    """A file as a release of schema `version` left it: its migrations, then its rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        for migration in load_migrations()[:version]:
            conn.execute("BEGIN IMMEDIATE")
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            take_note(conn)  # as storage.migrations does: the note goes to the log
            conn.execute(f"PRAGMA user_version = {migration.number:d}")
            conn.execute("COMMIT")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        conn.execute("BEGIN IMMEDIATE")
        for table, rows in rows_written_at(version).items():  # parents before children
            for row in rows:
                conn.execute(f"INSERT INTO {table} ({', '.join(row)}) "
                             f"VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        conn.execute("COMMIT")
    finally:
        conn.close()


def stored_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {name: [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY rowid")]
                for name in names}


def file_problems(path: Path) -> list[Any]:
    with sqlite3.connect(path) as conn:
        problems = [tuple(r) for r in conn.execute("PRAGMA foreign_key_check")]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return problems + ([integrity] if integrity != "ok" else [])


@pytest.mark.parametrize("version", EVERY_VERSION, ids=lambda v: f"from-v{v}")
@pytest.mark.parametrize("opener", ["bot", "trainer"])
async def test_every_row_of_an_older_schema_survives_the_migration(opener, version, tmp_path):
    path = tmp_path / f"v{version}.sqlite3"
    build_database(path, version)
    if opener == "bot":
        async with Database(path) as db:
            assert await db.schema_version() == latest_version()
    else:
        with SyncStore(path) as store:
            assert store.conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()

    stored = stored_rows(path)
    expected = rows_expected_after_migrating_from(version)
    for table, rows in expected.items():
        assert stored[table] == rows, f"{table} changed migrating from schema {version}"
    # the tables of later migrations are there, empty, and nothing else was added
    assert {t: r for t, r in stored.items() if t not in expected} == {
        table: [] for by_table in ROWS.values() for table in by_table if table not in expected}
    assert file_problems(path) == []


@pytest.mark.parametrize("version", EVERY_VERSION, ids=lambda v: f"from-v{v}")
async def test_the_bot_reads_and_writes_a_migrated_database(version, tmp_path):
    """The current queries on the old rows: the values as the bot and the trainer see them."""
    path = tmp_path / f"v{version}.sqlite3"
    build_database(path, version)
    async with Database(path) as db:
        [pair] = await db.approved_pairs("faq")
        assert (pair.question, pair.answer, pair.score, pair.channel_id, pair.context) == (
            "Où est le café ? ☕", "Au 2e étage.", 2, 100, [{"role": "user", "content": "bonjour"}])
        assert pair.also_asked == ([] if version < 6 else ["Where is the coffee?"])
        serving = await db.serving_version("faq")
        assert (serving.version, serving.scale, serving.metrics, serving.run_id) == (
            2, 0.75, {"eval_loss": 1.25}, 1)
        channel = await db.resolve_adapter_for(100, guild_id=10)
        guild = await db.resolve_adapter_for(200, guild_id=10)
        assert (channel.name, channel.version.version, guild.name, guild.version) == (
            "faq", 2, "faq-fr", None)
        assert (await db.get_adapter("faq-fr")).based_on == "faq"
        assert [(r.id, r.status, r.error) for r in await db.list_runs()] == [
            (2, "failed", "CUDA out of memory"), (1, "succeeded", None)]
        assert await db.count_reviews("pending") == 1 and await db.score(2) == -1
        assert await db.get_state("scheduler.last_run") == (at(9) if version >= 2 else None)
        lock = await db.training_lock()
        assert (lock and (lock["run_id"], lock["pid"])) == ((2, 999) if version >= 3 else None)
        assert await db.version_pair_counts("faq", 2) == (
            {"train": 1, "validation": 1, "held_out": 1} if version >= 4 else {})
        assert [a["action"] for a in await db.admin_actions()] == (
            ["promote", "approve"] if version >= 5 else [])

        # and new rows go into every table, old or added by the migration
        assert (await db.cast_vote(2, 31, 1, min_score=1)).score == 1  # replaces the old vote
        await db.decide_review(2, "approved", reviewer_id=11, also_asked=["other q2?"])
        assert [p.also_asked for p in await db.approved_pairs()] == [
            [] if version < 6 else ["Where is the coffee?"], ["other q2?"]]
        await db.set_state("scheduler.last_run", at(12))
        await db.record_admin_action(11, "export", "all adapters")
        await db.release_training_lock()
        assert await db.acquire_training_lock(None, 1234, "bot-host") is None
    with SyncStore(path) as store:
        version_3 = store.add_version("faq", path="adapters/faq/v3", run_id=1)
        store.record_version_pairs(version_3.id, [(1, "train"), (2, "train")])
        assert (version_3.version, store.get_run(2).status) == (3, "failed")
    assert file_problems(path) == []


def test_the_rows_above_cover_every_table_and_column_of_the_latest_schema(tmp_path):
    """Guard: a migration that adds a table or a column must add its rows or its default
    above, or the tests above would pass without looking at it."""
    path = tmp_path / "latest.sqlite3"
    build_database(path, latest_version())
    with sqlite3.connect(path) as conn:
        schema = {table: {c[1] for c in conn.execute(f"PRAGMA table_info({table})")}
                  for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE "
                                               "type = 'table' AND name NOT LIKE 'sqlite_%'")}
    covered = {table: set(rows[0]) for table, rows in rows_written_at(latest_version()).items()}
    assert covered == schema
    assert set(ROWS) | set(ADDED_COLUMNS) <= set(EVERY_VERSION)
    for rows in rows_written_at(latest_version()).values():  # one shape per table
        assert all(set(row) == set(rows[0]) for row in rows)


def build_two_guilds_v6(path: Path) -> None:
    """A schema-6 database of a bot in two servers, as releases before 0007 left one:
    adapters with no guild, and one of them (`faq`) also bound in the other server."""
    build_database(path, 6)
    rows = {
        "adapters": [dict(id=3, name="help", base_model="tiny"),
                     dict(id=4, name="orphan", base_model="tiny")],
        "channel_adapters": [dict(channel_id=200, guild_id=20, adapter_id=3),
                             dict(channel_id=201, guild_id=20, adapter_id=1)],  # faq, in 20
        "turns": [
            dict(id=10, guild_id=20, channel_id=200, question="B's secret?", answer="B42",
                 adapter_name="help"),
            dict(id=11, guild_id=20, channel_id=201, question="B via faq?", answer="B43",
                 adapter_name="faq"),
            dict(id=12, source="console", guild_id=None, channel_id=0, question="console q",
                 answer="console a", adapter_name="help"),
        ],
        "review": [dict(turn_id=10, adapter_name="help", status="approved"),
                   dict(turn_id=11, adapter_name="faq", status="approved"),
                   dict(turn_id=12, adapter_name="help", status="pending")],
    }
    with sqlite3.connect(path) as conn:
        for table, table_rows in rows.items():
            for row in table_rows:
                conn.execute(f"INSERT INTO {table} ({', '.join(row)}) "
                             f"VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


async def test_the_guild_migration_puts_two_servers_rows_each_in_its_place(tmp_path, caplog):
    path = tmp_path / "two-guilds.sqlite3"
    build_two_guilds_v6(path)
    with caplog.at_level("INFO", logger="storage.migrations"):
        async with Database(path) as db:
            placed = {a.name: (a.guild_id, a.label) for a in await db.list_adapters()}
            assert placed == {"faq": (10, "faq"), "faq-fr": (10, "faq-fr"),
                              "help": (20, "help"), "orphan": (0, "orphan")}
            assert [a.name for a in await db.list_adapters(20)] == ["help"]
            # guild 20's channel bound to guild 10's adapter is let go of it
            assert (await db.resolve_adapter_for(200, 20)).name == "help"
            assert await db.resolve_adapter_for(201, 20) is None
            assert (await db.resolve_adapter_for(100, 10)).name == "faq"
            # each pair in its guild: 20's question asked through faq stays 20's, as a
            # base-model pair, and trains neither faq nor help
            assert [p.turn_id for p in await db.approved_pairs("faq")] == [1]
            assert [p.turn_id for p in await db.approved_pairs("help")] == [10]
            assert [p.turn_id for p in await db.approved_pairs(scope=20)] == [10, 11]
            assert (await db.get_review(11)).adapter_name is None
            # the console's question answered by help went with help, to guild 20
            assert (await db.get_turn(12)).guild_id == 20
            assert [r.turn.id for r in await db.reviews("pending", scope=20)] == [12]
            assert await db.stats(20) == {"answers": 3, "votes": 0, "pending": 1,
                                          "approved": 2, "rejected": 0, "adapters": 1,
                                          "runs": 0}
            assert (await db.stats(10))["answers"] == 2 and (await db.stats(0))["adapters"] == 1
            assert await db.get_state("migration_note") is None  # read into the log
    [note] = [r.getMessage() for r in caplog.records if "0007_guild_scope" in r.getMessage()]
    assert ("3 adapter(s) placed in their guild, 1 in the direct scope" in note
            and "1 channel binding(s), 0 server default(s), 1 pair(s)" in note), note
    assert file_problems(path) == []

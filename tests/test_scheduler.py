"""The nightly schedule with a fake clock: missed runs at start-up, coalescing, min new pairs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.scheduler import LAST_RUN_KEY, NightlyTraining
from settings import parse_config
from storage import SyncStore


class RecordingTraining:
    """Stands in for TrainingService: records which adapters a round starts, in order."""

    def __init__(self):
        self.started: list[tuple[str, str]] = []

    async def start(self, adapter: str, *, trigger: str):
        self.started.append((adapter, trigger))

    async def follow(self):
        return None


def at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def nightly(db):
    def make(now: datetime, min_new_pairs: int = 2, schedule: str = "0 3 * * *",
             timezone: str = "UTC"):
        config = parse_config(f'[training]\nschedule = "{schedule}"\ntimezone = "{timezone}"\n'
                              f"min_new_pairs = {min_new_pairs}\n")
        training = RecordingTraining()
        clock = {"now": now}
        schedule = NightlyTraining(config, db, training, clock=lambda: clock["now"])
        return schedule, training, clock

    return make


async def approve(db, adapter: str, count: int) -> None:
    for i in range(count):
        turn = await db.record_turn(channel_id=1, author_id=1, question=f"{adapter} q{i}",
                                    answer="a", adapter_name=adapter)
        await db.cast_vote(turn, 1, 1, min_score=1)
        await db.decide_review(turn, "approved", reviewer_id=9)


async def test_a_run_missed_while_down_happens_once_at_start(db, nightly):
    await db.create_adapter("faq", "base")
    await approve(db, "faq", 3)
    await db.set_state(LAST_RUN_KEY, at(3, 0, day=7).isoformat())  # three nights missed
    schedule, training, _ = nightly(now=at(9, 30))
    catch_up = await schedule.start()
    try:
        await catch_up
        assert training.started == [("faq", "schedule")]  # once, not three times
        assert not await schedule.missed_run()
        job = schedule.scheduler.get_jobs()[0]
        assert job.trigger is schedule.trigger and job.coalesce
    finally:
        schedule.stop()


# 2026-11-10 is a Tuesday; in November Paris is UTC+1, so its 02:30 is 01:30 UTC
@pytest.mark.parametrize(("cron", "zone", "last_run", "now", "missed"), [
    ("0 3 * * *", "UTC", at(3, 0), at(9, 0), False),          # ran at 03:00 today
    ("0 3 * * *", "UTC", at(2, 59), at(3, 1), True),          # down across 03:00
    ("0 3 * * *", "UTC", at(3, 0, day=9), at(2, 0), False),   # yesterday's ran; today's not due
    ("0 3 * * *", "UTC", at(3, 0, day=9), at(3, 0), True),    # due exactly now
    # the configured zone decides: down across 02:30 Paris (not yet 02:30 UTC)
    ("30 2 * * *", "Europe/Paris", at(1, 0), at(1, 31), True),
    # ... and across 02:30 UTC after tonight's Paris run: nothing missed
    ("30 2 * * *", "Europe/Paris", at(1, 31), at(2, 31), False),
    # weekly on Mondays: down all week from Monday's run, back on Sunday, then on Monday
    ("0 3 * * mon", "UTC", at(3, 0, day=9), at(12, 0, day=15), False),
    ("0 3 * * mon", "UTC", at(3, 0, day=9), at(3, 0, day=16), True),
])
async def test_missed_run_detection(db, nightly, cron, zone, last_run, now, missed):
    await db.set_state(LAST_RUN_KEY, last_run.isoformat())
    schedule, _, _ = nightly(now=now, schedule=cron, timezone=zone)
    assert await schedule.missed_run() is missed


async def test_first_start_counts_from_now(db, nightly):
    schedule, training, _ = nightly(now=at(12))
    assert await schedule.start() is None
    schedule.stop()
    assert training.started == []
    assert await db.get_state(LAST_RUN_KEY) == at(12).isoformat()


async def test_the_cron_job_trains_only_adapters_with_enough_new_pairs(db, nightly):
    for name, pairs in (("few", 1), ("enough", 2), ("many", 5)):
        await db.create_adapter(name, "base")
        await approve(db, name, pairs)
    schedule, training, clock = nightly(now=at(3, 0, day=11))
    await schedule.run_due()  # what the cron trigger calls at 03:00
    assert training.started == [("enough", "schedule"), ("many", "schedule")]
    assert await db.get_state(LAST_RUN_KEY) == at(3, 0, day=11).isoformat()

    # a version built from them has seen those pairs: the next night has nothing new
    v1 = await db.add_version("many", path="many/v1", status="serving")
    pairs = [(p.turn_id, "held_out" if i == 0 else "train")
             for i, p in enumerate(await db.approved_pairs("many"))]
    with SyncStore(db.path) as store:  # as the trainer records them
        store.record_version_pairs(v1.id, pairs)
    assert await db.version_pair_counts("many", 1) == {"held_out": 1, "train": 4}
    assert await db.count_unseen_approved("many") == 0
    training.started.clear()
    await schedule.run_due()
    assert ("many", "schedule") not in training.started
    # a pair corrected (or given other ways to ask) after v1 read its data is new again
    await asyncio.sleep(0.01)  # the database's clock has millisecond steps
    corrected = pairs[1][0]
    await db.decide_review(corrected, "approved", reviewer_id=1,
                           also_asked=["Another way to ask?"])
    assert await db.count_unseen_approved("many") == 1
    # any new decision counts (texts are not compared): a re-approval too
    await db.decide_review(corrected, "approved", reviewer_id=1)
    assert await db.count_unseen_approved("many") == 1
    await approve(db, "many", 2)  # two more approved after v1
    training.started.clear()
    await schedule.run_due()
    assert ("many", "schedule") in training.started


async def test_start_schedules_one_coalesced_round_on_the_configured_cron_and_zone(db, nightly):
    schedule, training, _ = nightly(now=at(12), schedule="30 2 * * mon", timezone="Europe/Paris")
    assert await schedule.start() is None  # nothing missed: no catch-up round
    try:
        (job,) = schedule.scheduler.get_jobs()
        assert job.id == "nightly-training" and job.func == schedule.run_due
        # one round at a time; nights missed while the bot was busy collapse into one
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 3600)
        # the next round (from the real clock) is a Monday at 02:30 in Paris
        paris = ZoneInfo("Europe/Paris")
        upcoming = job.next_run_time.astimezone(paris)
        assert (upcoming.weekday(), upcoming.hour, upcoming.minute) == (0, 2, 30)
        assert timedelta(0) < upcoming - datetime.now(paris) <= timedelta(days=7)
    finally:
        schedule.stop()
    assert training.started == []

"""The nightly run: APScheduler's cron trigger, missed runs, the min-new-pairs rule.

APScheduler keeps its jobs in memory, so on its own it cannot know that the bot
was down at 03:00. The time of the last scheduled run is kept in the database
instead; at start-up, if the trigger fired since then, one run happens now
(however many nights were missed: coalesced).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from settings import Config
from storage import Database

from .training import TrainingService

log = logging.getLogger(__name__)

LAST_RUN_KEY = "schedule.last_run_at"


class NightlyTraining:
    def __init__(self, config: Config, db: Database, training: TrainingService,
                 clock: Callable[[], datetime] | None = None):
        self.config = config
        self.db = db
        self.training = training  # start(adapter, ...) and follow() are all it uses
        self.zone = ZoneInfo(config.training.timezone)
        self.trigger = CronTrigger.from_crontab(config.training.schedule, timezone=self.zone)
        self.clock = clock or (lambda: datetime.now(self.zone))
        self.scheduler: AsyncIOScheduler | None = None
        self.catch_up: asyncio.Task | None = None  # kept: a task nobody holds can vanish

    async def start(self) -> asyncio.Task | None:
        """Schedule the nightly run; a run missed while the bot was down starts now, in
        the background (the returned task), so the bot connects without waiting."""
        self.catch_up = None
        if await self.missed_run():
            log.info("the scheduled training run was missed while the bot was down; "
                     "running it now (once)")
            self.catch_up = asyncio.create_task(self.run_due(), name="missed-training-run")
        elif await self.db.get_state(LAST_RUN_KEY) is None:
            await self.db.set_state(LAST_RUN_KEY, self.clock().isoformat())  # count from now
        self.scheduler = AsyncIOScheduler(timezone=self.zone)
        self.scheduler.add_job(self.run_due, self.trigger, id="nightly-training",
                               coalesce=True, max_instances=1, misfire_grace_time=3600)
        self.scheduler.start()
        log.info("nightly training scheduled (%s, %s); next run %s",
                 self.config.training.schedule, self.config.training.timezone,
                 self.trigger.get_next_fire_time(None, self.clock()))
        return self.catch_up

    def stop(self) -> None:
        """No more scheduled runs; a catch-up run still going is cancelled."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.catch_up is not None and not self.catch_up.done():
            self.catch_up.cancel()

    async def close(self) -> None:
        """stop(), then wait for the cancelled catch-up round to unwind (while the database
        is still open). Its training run goes on; the bot started next follows it."""
        self.stop()
        if self.catch_up is not None:
            await asyncio.wait([self.catch_up])

    async def missed_run(self) -> bool:
        last = await self.db.get_state(LAST_RUN_KEY)
        if last is None:
            return False  # never scheduled before: nothing was missed
        # strictly after the last run: the trigger counts a fire time equal to `now`
        after = datetime.fromisoformat(last) + timedelta(microseconds=1)
        due = self.trigger.get_next_fire_time(None, after)
        return due is not None and due <= self.clock()

    async def adapters_due(self) -> list[tuple[str, int]]:
        """Adapters with at least min_new_pairs approved pairs their serving version lacks."""
        due = []
        for adapter in await self.db.list_adapters():
            new = await self.db.count_unseen_approved(adapter.name)
            if new >= self.config.training.min_new_pairs:
                due.append((adapter.name, new))
            else:
                log.info("no scheduled run for %s: %d new approved pairs, %d needed",
                         adapter.name, new, self.config.training.min_new_pairs)
        return due

    async def run_due(self) -> None:
        """One scheduled round: each due adapter in turn (one training at a time)."""
        await self.db.set_state(LAST_RUN_KEY, self.clock().isoformat())
        for adapter, new in await self.adapters_due():
            log.info("scheduled training of %s on %d new approved pairs", adapter, new)
            try:
                await self.training.start(adapter, trigger="schedule")
                await self.training.follow()
            except Exception:
                log.exception("the scheduled run of %s failed; the serving version is "
                              "unchanged", adapter)

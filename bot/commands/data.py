"""Data operations: counts, the approved pairs as a file, deleting a person's own data."""

from __future__ import annotations

import asyncio
import logging

from settings import layout
from storage import pairs_jsonl
from trainer.versions import forget_turns

from .base import Attachment, Caller, Reply, require_admin
from .services import Services

log = logging.getLogger(__name__)

STAT_LABELS = (("answers", "answers"), ("votes", "votes"),
               ("pending", "pairs waiting for review"), ("approved", "approved pairs"),
               ("rejected", "rejected pairs"), ("adapters", "adapters"),
               ("runs", "training runs"))

FORGET_WARNING = ("This deletes every question you asked the bot (with its answers) and every "
                  "vote you cast. Pairs already used by a trained version stay in that "
                  "version's weights (its stored lists of questions are cleaned), but never "
                  "train another.")


class DataCommands:
    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def stats(self, caller: Caller) -> Reply:
        """The counts of the caller's scope: this server's (in DMs: the direct scope's)."""
        stats = await self.db.stats(caller.scope)
        reply = Reply(title="What the bot has learned from",
                      fields=[(label, str(stats[key])) for key, label in STAT_LABELS])
        if self.s.memory is not None:
            sizes = [await self.s.memory.size(a.name)
                     for a in await self.db.list_adapters(caller.scope)]
            reply.fields.append(("in memory", f"{sum(p for p, _ in sizes)} pairs, "
                                 f"{sum(k for _, k in sizes)} keys"))
        runs = await self.db.list_runs(limit=1, scope=caller.scope)
        if runs:
            last = runs[0]
            reply.fields.append(("last run", f"{last.adapter_label}: {last.status} "
                                 f"({(last.finished_at or last.created_at)[:16]})"))
        return reply

    async def export(self, caller: Caller, adapter: str | None = None) -> Reply:
        """The approved pairs as JSONL: the same bytes as the web page's export."""
        require_admin(caller, "export")
        pairs = await self.db.approved_pairs(await self.s.key_of(caller.scope, adapter),
                                             scope=caller.scope)
        return Reply(f"{len(pairs)} approved pairs.",
                     attachment=Attachment(f"{adapter or 'all'}-approved.jsonl",
                                           pairs_jsonl(pairs)),
                     values={"pairs": len(pairs)})

    async def forget(self, caller: Caller) -> tuple[Reply, list[int]]:
        """Delete the caller's questions, answers and votes; returns the reply and the
        deleted turns, whose trace in trained versions' files `forget_files` removes."""
        counts = await self.db.forget_user(caller.user_id,
                                           min_score=self.s.config.feedback.min_score)
        reply = Reply(f"Deleted {counts['turns']} of your questions (with the bot's answers to "
                      f"them) and {counts['votes']} of your votes. They will not train any "
                      f"future version.")
        return reply, list(counts["turn_ids"])

    async def forget_files(self, turn_ids: list[int]) -> Reply | None:
        """Trained versions keep lists of what they were taught and judged on: clean them
        (slow with many versions, so faces reply first and call this after)."""
        config = self.s.config
        running = await self.db.training_lock() is not None  # a run may be reading them
        try:
            removed = await asyncio.to_thread(forget_turns, config.adapters_dir,
                                              layout.cache_dir(config.data_dir), set(turn_ids),
                                              run_in_progress=running)
        except OSError:
            log.exception("/forget: the versions' question lists could not be cleaned")
            return Reply("Your questions could not be removed from the stored training "
                         "records; the admins have the error in the log.")
        if removed:
            return Reply(f"They were also removed from {removed} stored training record(s).")
        return None

"""Data operations: counts, the approved pairs as a file, deleting a person's own data."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from settings import layout
from storage import pairs_jsonl
from trainer.data import DataError
from trainer.datafiles import read_pairs
from trainer.versions import forget_turns

from .base import Attachment, Caller, Refused, Reply, require_admin
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

MAX_IMPORT_BYTES = 8 * 2**20  # a big FAQ is well under 1 MiB


def check_import_size(filename: str, size: int) -> None:
    if size > MAX_IMPORT_BYTES:
        raise Refused(f"{filename} is {size // 1024} KiB; import at most "
                      f"{MAX_IMPORT_BYTES // 2**20} MiB at a time (split it, or use "
                      f"`python -m trainer import-pairs` on the host).")


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

    async def import_file(self, caller: Caller, attachment: Attachment,
                          adapter: str | None = None) -> Reply:
        """Every row of `attachment` (JSONL, JSON, CSV, TXT, TSV) as an approved pair of
        this channel's adapter (or `adapter`, of this server), approved by the caller and
        in memory at once; a bad row refuses the whole file, with its line number."""
        require_admin(caller, "import")
        check_import_size(attachment.filename, len(attachment.data))
        record = await self.s.named_or_channels(caller, adapter, unbound=(
            "This channel answers with the base model: name the adapter the pairs belong to "
            "(/import file adapter:NAME)."))
        name = Path(attachment.filename).name
        if name in ("", ".", ".."):  # (a name only: never a path out of the folder)
            raise Refused("The attached file has no name; name it like faq.csv or faq.jsonl.")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(attachment.data)
            try:
                pairs = await asyncio.to_thread(read_pairs, path, record.name)
            except DataError as exc:
                raise Refused(str(exc).replace(str(path), name)) from None
        count = await self.db.import_rows(pairs, record.name, reviewer_id=caller.user_id)
        if self.s.memory is not None:
            await self.s.memory.refresh(record.name)  # answered from before the reply is seen
        log.info("%d pairs imported into %s from %s by %d", count, record.name, name,
                 caller.user_id)
        return Reply(f"Imported {count} approved pairs from {name} into **{record.label}**"
                     + (": answered from at once" if self.s.memory is not None else "")
                     + ", and learned at the next training run.", values={"pairs": count})

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

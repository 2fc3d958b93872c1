"""/memory search: what the channel memory would do with a question, pairs and scores."""

from __future__ import annotations

from .base import Caller, Refused, Reply, require_admin
from .services import Services


class MemoryCommands:
    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def search(self, caller: Caller, text: str, adapter: str | None = None) -> Reply:
        """The nearest approved pairs of this channel's adapter (or `adapter`, of this
        server) and what memory would do with `text`: answer, add notes, or nothing."""
        require_admin(caller, "memory search")
        memory = self.s.memory
        if memory is None:
            raise Refused("The channel memory is off here (memory.enabled = false).")
        if not text.strip():
            raise Refused("Give the question to look up: /memory search TEXT.")
        record = await self.s.named_or_channels(caller, adapter, unbound=(
            "This channel answers with the base model, which has no memory; name an "
            "adapter: /memory search TEXT adapter:NAME."))
        settings = memory.settings
        hits = await memory.search(record.name, text.strip(), limit=5)
        pairs, keys = await memory.size(record.name)
        reply = Reply(title=f"Memory of {record.label} ({pairs} pairs, {keys} keys)")
        if not hits:
            reply.text = "Nothing approved is stored yet: memory adds nothing."
            return reply
        best = hits[0].score
        notes = ("the nearest pair goes into the prompt as a channel note"
                 if settings.top_k == 1 else
                 f"the nearest {settings.top_k} pairs go into the prompt as channel notes")
        reply.text = (f"answered with approved answer #{hits[0].turn_id}"
                      if best >= settings.answer_threshold else
                      notes if best >= settings.context_threshold else "nothing is added")
        reply.text = (f"Would do: **{reply.text}** (thresholds: answer "
                      f"{settings.answer_threshold:g}, notes {settings.context_threshold:g}).")
        for hit in hits:
            reply.fields.append((f"#{hit.turn_id} · {hit.score:.2f}",
                                 f"Q: {hit.question}\nA: {hit.answer}"))
        return reply

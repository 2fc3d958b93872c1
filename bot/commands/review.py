"""Review operations: the next pending pair, decide on it (approve, reject, correct), other
ways to ask, bulk approval by score."""

from __future__ import annotations

import logging
from collections.abc import Collection

from storage import ReviewItem

from .adapters import channel_text
from .base import Caller, Conflict, Missing, Reply, require_admin
from .services import Services

log = logging.getLogger(__name__)

STATUSES = ("approved", "rejected")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def review_card(item: ReviewItem, waiting: int) -> Reply:
    """A pending pair as a reviewer sees it (within Discord's embed limits)."""
    turn = item.turn
    card = Reply(f"**Question**\n{clip(turn.question, 1500)}\n\n"
                 f"**Answer**\n{clip(turn.answer, 2300)}",
                 title=f"Pair #{turn.id} · score {item.score:+d}",
                 footer=f"{waiting} waiting · asked {turn.created_at[:16].replace('T', ' ')}")
    if turn.context:
        recent = "\n".join(f"{m['role']}: {clip(m['content'], 150)}" for m in turn.context[-4:])
        card.fields.append(("context (last turns)", clip(recent, 1024)))
    version = f" v{turn.adapter_version}" if turn.adapter_version else ""
    card.fields.append(("adapter", f"{item.adapter_label or 'base model'}{version}"))
    card.fields.append(("channel", channel_text(turn.channel_id)))
    if item.also_asked:
        card.fields.append(("also asked as", clip(" · ".join(item.also_asked), 1024)))
    return card


class ReviewCommands:
    """Pairs are those of the caller's scope: a pair of another guild is "not a review
    candidate", exactly like one that does not exist."""

    def __init__(self, services: Services):
        self.s = services
        self.db = services.db

    async def key(self, caller: Caller, adapter: str | None) -> str | None:
        """The key of the adapter the caller's scope calls `adapter` (None: all of them)."""
        return await self.s.key_of(caller.scope, adapter)

    async def pair(self, caller: Caller, turn_id: int) -> ReviewItem:
        """The review candidate `turn_id` of the caller's scope."""
        item = await self.db.get_review(turn_id)
        if item is None or item.scope != caller.scope:
            raise Missing(f"#{turn_id} is not a review candidate; /review shows the next one")
        return item

    async def next(self, caller: Caller, adapter: str | None = None,
                   skipped: Collection[int] = ()) -> tuple[ReviewItem | None, int]:
        """The oldest-best pending pair not in `skipped`, and how many are waiting."""
        require_admin(caller, "review")
        key = await self.key(caller, adapter)
        waiting = await self.db.count_reviews("pending", key, scope=caller.scope)
        for item in await self.db.reviews("pending", key, limit=len(skipped) + 1,
                                          scope=caller.scope):
            if item.turn.id not in skipped:
                return item, waiting
        return None, waiting

    async def decide(self, caller: Caller, turn_id: int, status: str, *,
                     edited: str | None = None, also_asked: list[str] | None = None,
                     answer_kept: bool = False) -> Reply:
        """`answer_kept`: `edited` is the pair's earlier correction, passed on unchanged
        (the reply then does not claim a new answer)."""
        require_admin(caller, "review")
        if status not in STATUSES:
            raise ValueError(f"unknown decision {status!r}: use one of {', '.join(STATUSES)}")
        await self.pair(caller, turn_id)
        item = await self.db.decide_review(turn_id, status, reviewer_id=caller.user_id,
                                           edited_answer=edited, also_asked=also_asked)
        log.info("pair %d %s by %d%s%s", turn_id, status, caller.user_id,
                 " with an edited answer" if edited else "",
                 f", also asked {len(item.also_asked)} other way(s)" if item.also_asked else "")
        text = f"#{turn_id} {status}" + (" with your answer" if edited and not answer_kept
                                         else "")
        if also_asked and item.also_asked:
            text += "; also asked as: " + " · ".join(item.also_asked)
        return Reply(text, values={"also_asked": item.also_asked})

    async def also(self, caller: Caller, turn_id: int, question: str) -> Reply:
        """Approve the pair, keeping its answer, with `question` as one more way to ask it."""
        require_admin(caller, "review also")
        item = await self.pair(caller, turn_id)
        return await self.decide(caller, turn_id, "approved", edited=item.edited_answer,
                                 answer_kept=True,
                                 also_asked=[*item.also_asked, question])

    async def unapprove(self, caller: Caller, turn_id: int) -> Reply:
        """Back to pending (an edited answer is kept): it trains nothing until approved
        again."""
        require_admin(caller, "review")
        item = await self.pair(caller, turn_id)
        if item.status != "approved":
            raise Conflict(f"#{turn_id} is {item.status}, not approved")
        await self.db.decide_review(turn_id, "pending", reviewer_id=caller.user_id,
                                    edited_answer=item.edited_answer)
        return Reply(f"#{turn_id} is pending again")

    async def count_at_least(self, caller: Caller, min_score: int,
                             adapter: str | None = None) -> int:
        require_admin(caller, "review bulk")
        return await self.db.count_pending_at_least(min_score, await self.key(caller, adapter),
                                                    scope=caller.scope)

    @staticmethod
    def nothing_at_least(min_score: int) -> Reply:
        return Reply(f"No pending pair has a score of at least {min_score}.")

    async def approve_at_least(self, caller: Caller, min_score: int,
                               adapter: str | None = None) -> Reply:
        require_admin(caller, "review bulk")
        approved = await self.db.approve_pending_at_least(
            min_score, reviewer_id=caller.user_id, adapter=await self.key(caller, adapter),
            scope=caller.scope)
        return Reply(f"Approved {approved} pairs with a score of at least {min_score}.",
                     values={"approved": approved})

"""Pending and approved pairs: search, approve, reject, edit, un-approve, export.

Every decision calls the storage method the Discord review buttons call, with the
admin's Discord id as the reviewer: `decide_review` for a button or the edit form,
`approve_pending_at_least` for the bulk approval by score. The JSONL export is
byte for byte what `/export` attaches.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from storage import BASE_ADAPTER, StorageError

from ..commands import Refused
from .app import (
    SITE,
    adapter_here,
    caller_of,
    done,
    failure,
    nav_counts,
    refused,
    render,
    safe_back,
    scope_of_request,
    url,
)

PAGE_SIZE = 100
MAX_EDIT_CHARS = 16000
PENDING_SORTS = {"score": "highest score", "newest": "newest", "oldest": "oldest",
                 "adapter": "adapter", "channel": "channel"}
APPROVED_SORTS = {"reviewed": "last reviewed", "newest": "newest", "oldest": "oldest",
                  "score": "highest score"}
DECISIONS = {"approved": "approve", "rejected": "reject"}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/pending", pending_page, name="pending")
    router.add_post("/pairs/decide", decide, name="decide")
    router.add_post("/pairs/approve-at-least", approve_at_least, name="approve_at_least")
    router.add_post("/pairs/{turn_id:\\d+}/edit", edit, name="edit")
    router.add_post("/pairs/{turn_id:\\d+}/unapprove", unapprove, name="unapprove")
    router.add_get("/approved", approved_page, name="approved")
    router.add_get("/approved/export.jsonl", export, name="export")


@dataclass(frozen=True)
class PairFilter:
    """What a listing shows, read from the query string (bad values are refused)."""

    adapter: str | None = None  # BASE_ADAPTER: the base model's pairs
    channel_id: int | None = None
    min_score: int | None = None
    text: str | None = None
    sort: str = "score"
    offset: int = 0

    @classmethod
    def from_query(cls, query: MultiDictProxy, sorts: dict[str, str]) -> PairFilter:
        sort = query.get("sort") or next(iter(sorts))
        if sort not in sorts:
            raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(sorts)}")
        return cls(adapter=query.get("adapter") or None,
                   channel_id=_int_or_none(query, "channel"),
                   min_score=_int_or_none(query, "min_score"),
                   text=(query.get("q") or "").strip() or None, sort=sort,
                   offset=max(0, _int_or_none(query, "offset") or 0))

    def search(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "channel_id": self.channel_id,
                "min_score": self.min_score, "text": self.text}

    def query(self, **changes: Any) -> dict[str, Any]:
        """This filter as query parameters (for links to other pages of the listing)."""
        values = {"adapter": self.adapter, "channel": self.channel_id,
                  "min_score": self.min_score, "q": self.text, "sort": self.sort,
                  "offset": self.offset or None}
        values.update(changes)
        return {k: v for k, v in values.items() if v is not None}


def _int_or_none(query: MultiDictProxy, name: str) -> int | None:
    raw = (query.get(name) or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(kind, text) runs, kind 'same', 'del' or 'ins': what an edit changed, word by word."""
    a, b = re.findall(r"\s+|\S+", old), re.findall(r"\s+|\S+", new)
    runs: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            runs.append(("same", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            runs.append(("del", "".join(a[i1:i2])))
        if j2 > j1:
            runs.append(("ins", "".join(b[j1:j2])))
    return runs


async def review_counts(request: web.Request) -> dict[str, int]:
    db, scope = request.app[SITE].db, scope_of_request(request)
    return {status: await db.count_reviews(status, scope=scope)
            for status in ("pending", "approved", "rejected")}


async def _listing(request: web.Request, status: str, sorts: dict[str, str],
                   template: str, **extra: Any) -> web.Response:
    site = request.app[SITE]
    try:
        chosen = PairFilter.from_query(request.query, sorts)
    except ValueError as exc:
        return failure(request, 400, str(exc))
    scope = scope_of_request(request)
    if chosen.adapter not in (None, BASE_ADAPTER):
        try:
            await adapter_here(request, chosen.adapter)
        except StorageError as exc:
            return refused(request, exc)
    items = await site.db.search_reviews(status, **chosen.search(), sort=chosen.sort,
                                         limit=PAGE_SIZE, offset=chosen.offset, scope=scope)
    total = await site.db.count_search_reviews(status, **chosen.search(), scope=scope)
    return render(request, template, page=status, nav=await nav_counts(request), items=items,
                  total=total, filter=chosen, sorts=sorts, page_size=PAGE_SIZE,
                  adapters=await site.db.list_adapters(scope), base_adapter=BASE_ADAPTER,
                  channels=await site.db.review_channels(status, scope), word_diff=word_diff,
                  **extra)


async def pending_page(request: web.Request) -> web.Response:
    return await _listing(request, "pending", PENDING_SORTS, "pending.html",
                          min_score_default=request.app[SITE].config.feedback.min_score)


async def approved_page(request: web.Request) -> web.Response:
    db, scope = request.app[SITE].db, scope_of_request(request)
    labels = {a.name: a.label for a in await db.list_adapters(scope)}
    counts = await db.review_counts(scope)
    # (key, label, counts); a pair whose adapter is gone counts as the base model's
    rows = sorted(((key, labels.get(key), row) for key, row in counts.items()),
                  key=lambda r: (r[1] is None, r[1] or ""))
    return await _listing(request, "approved", APPROVED_SORTS, "approved.html",
                          counts=rows)


def _ids(form: MultiDictProxy) -> list[int]:
    ids = []
    for raw in form.getall("ids", []):
        if not isinstance(raw, str) or not raw.isdigit():
            raise ValueError(f"pair id {raw!r} is not a number")
        ids.append(int(raw))
    return list(dict.fromkeys(ids))  # once each, in order


async def _pending_items(request: web.Request, ids: list[int]) -> web.Response | None:
    """None when every pair exists and waits for review; else the refusal to send."""
    db = request.app[SITE].db
    for turn_id in ids:
        item = await db.get_review(turn_id)
        if item is None or item.scope != scope_of_request(request):
            return failure(request, 404, f"pair {turn_id} is not a review candidate (it was "
                           f"withdrawn or deleted); reload the page")
        if item.status != "pending":
            return failure(request, 409, f"pair {turn_id} was already {item.status} "
                           f"(by {item.reviewer_id}); reload the page")
    return None


async def decide(request: web.Request) -> web.Response:
    """Approve or reject the chosen pairs: what the Approve/Reject buttons do, per pair."""
    site = request.app[SITE]
    form = await request.post()
    status = form.get("status")
    if status not in DECISIONS:
        return failure(request, 400, "status must be 'approved' or 'rejected'")
    try:
        ids = _ids(form)
    except ValueError as exc:
        return failure(request, 400, str(exc))
    if not ids:
        return failure(request, 400, "no pair chosen: tick at least one")
    refusal = await _pending_items(request, ids)
    if refusal is not None:
        return refusal
    for turn_id in ids:
        await site.core.review.decide(caller_of(request), turn_id, status)
    await site.record(request, DECISIONS[status], _pairs_target(ids), ids=ids)
    return done(request, {"done": ids, "status": status, "counts": await review_counts(request)},
                safe_back(request, form.get("next"), url(request, "pending")))


async def edit(request: web.Request) -> web.Response:
    """Approve with a corrected answer: what the Edit form (modal) does."""
    site = request.app[SITE]
    turn_id = int(request.match_info["turn_id"])
    form = await request.post()
    text = form.get("edited_answer")
    if not isinstance(text, str) or not text.strip():
        return failure(request, 400, "the corrected answer is empty: write the answer the "
                       "adapter should learn")
    text = text.replace("\r\n", "\n")  # browsers send CRLF; Discord's form sends LF
    if len(text) > MAX_EDIT_CHARS:
        return failure(request, 400, f"the corrected answer has {len(text)} characters; at "
                       f"most {MAX_EDIT_CHARS} are kept for training")
    refusal = await _pending_items(request, [turn_id])
    if refusal is not None:
        return refusal
    asked = form.get("also_asked")  # absent (an older form): what is stored stays
    also_asked = asked.replace("\r\n", "\n").splitlines() if isinstance(asked, str) else None
    decided = await site.core.review.decide(caller_of(request), turn_id, "approved",
                                            edited=text, also_asked=also_asked)
    await site.record(request, "edit", f"pair {turn_id}", chars=len(text),
                      also_asked=len(decided.values["also_asked"]))
    return done(request, {"done": [turn_id], "status": "approved",
                          "counts": await review_counts(request)},
                safe_back(request, form.get("next"), url(request, "pending")))


async def approve_at_least(request: web.Request) -> web.Response:
    """Approve every pending pair at or above a score: what `/review bulk` confirms."""
    site = request.app[SITE]
    form = await request.post()
    try:
        min_score = int(str(form.get("min_score", "")).strip())
    except ValueError:
        return failure(request, 400, "min_score must be a whole number (net 👍 minus 👎)")
    if not 1 <= min_score <= 1000:
        return failure(request, 400, "min_score must be between 1 and 1000, as in /review bulk")
    adapter = form.get("adapter") or None
    if adapter == BASE_ADAPTER:
        return failure(request, 400, "approval by score works for one adapter or for all; "
                       "choose an adapter or 'all adapters'")
    try:
        label = (await adapter_here(request, str(adapter))).label if adapter else None
        result = await site.core.review.approve_at_least(caller_of(request), min_score, label)
    except StorageError as exc:
        return refused(request, exc)
    approved = result.values["approved"]
    await site.record(request, "approve_at_least", adapter or "all adapters",
                      min_score=min_score, approved=approved)
    return done(request, {"approved": approved, "counts": await review_counts(request)},
                safe_back(request, form.get("next"), url(request, "pending")))


async def unapprove(request: web.Request) -> web.Response:
    """Back to pending (an edited answer is kept): it trains nothing until approved again."""
    site = request.app[SITE]
    turn_id = int(request.match_info["turn_id"])
    form = await request.post()
    try:
        await site.core.review.unapprove(caller_of(request), turn_id)
    except Refused as exc:
        return refused(request, exc)
    await site.record(request, "unapprove", f"pair {turn_id}")
    return done(request, {"done": [turn_id], "status": "pending",
                          "counts": await review_counts(request)},
                safe_back(request, form.get("next"), url(request, "approved")))


async def export(request: web.Request) -> web.Response:
    """Approved pairs as JSONL, the file `/export` attaches in Discord."""
    site = request.app[SITE]
    adapter = request.query.get("adapter") or None
    try:
        label = (await adapter_here(request, adapter)).label if adapter else None
        answer = await site.core.data.export(caller_of(request), label)
    except StorageError as exc:
        return refused(request, exc)
    exported = answer.attachment
    await site.record(request, "export", adapter or "all adapters",
                      pairs=answer.values["pairs"])
    return web.Response(body=exported.data, content_type="application/x-ndjson",
                        charset="utf-8", headers={
                            "Content-Disposition": f'attachment; filename="{exported.filename}"'})


def _pairs_target(ids: list[int]) -> str:
    return f"pair {ids[0]}" if len(ids) == 1 else f"{len(ids)} pairs"

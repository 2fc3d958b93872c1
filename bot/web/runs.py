"""Training runs: their status, live progress as server-sent events, start and cancel.

Progress comes from the file every run writes, `events.jsonl` beside its log (see
trainer.pipeline): the same JSON events the bot relays to Discord, so a run started
by `/train`, by the nightly schedule or from the command line can be watched too.
Each event's line number is its SSE id, so a reconnecting browser resumes where it
stopped. Starting and cancelling go through the bot's TrainingService, the path of
`/train start` and `/train cancel`.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from storage import StorageError, UnknownAdapterError
from trainer.events import EventTail

from ..training import run_events_path
from .app import (
    EXPECTED,
    SECURITY_HEADERS,
    SITE,
    adapter_here,
    caller_of,
    done,
    failure,
    nav_counts,
    refused,
    render,
    scope_of_request,
    session_lasts,
    url,
)

log = logging.getLogger(__name__)

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
KEEPALIVE_S = 15.0


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/runs", runs_page, name="runs")
    router.add_post("/runs/start", start_run, name="start_run")
    router.add_post("/runs/cancel", cancel_run, name="cancel_run")
    router.add_get("/runs/{run_id:\\d+}/events", run_events, name="run_events")


async def runs_page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    scope = scope_of_request(request)
    runs = await site.db.list_runs(limit=30, scope=scope)
    active = site.core.training.active_here(caller_of(request))  # (another server's: unseen)
    watch = request.query.get("run", "")
    watched = int(watch) if watch.isdigit() else (
        active.run.id if active is not None else (runs[0].id if runs else None))
    return render(request, "runs.html", page="runs", nav=await nav_counts(request), runs=runs,
                  active=active, watched=watched, adapters=await site.db.list_adapters(scope),
                  training_available=site.training is not None)


async def start_run(request: web.Request) -> web.Response:
    site = request.app[SITE]
    form = await request.post()
    adapter = form.get("adapter")
    if not isinstance(adapter, str) or not adapter:
        return failure(request, 400, "choose the adapter to train")
    try:
        label = (await adapter_here(request, adapter)).label
        if site.training is None:
            return failure(request, 503, "training cannot be started from this page here: "
                           "the site runs without the bot's training service")
        run = await site.core.training.start(caller_of(request), label)
    except EXPECTED as exc:
        return refused(request, exc)
    await site.record(request, "train_start", f"run {run.id}", adapter=adapter)
    return done(request, {"run_id": run.id, "adapter": adapter},
                url(request, "runs", {"run": run.id}))


async def cancel_run(request: web.Request) -> web.Response:
    site = request.app[SITE]
    active = site.core.training.active_here(caller_of(request))
    if active is None:
        return failure(request, 409, "no training run of yours is going on")
    run_id = active.run.id
    await site.record(request, "train_cancel", f"run {run_id}")
    await site.core.training.cancel(caller_of(request))
    return done(request, {"run_id": run_id, "cancelled": True},
                url(request, "runs", {"run": run_id}))


async def run_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each progress event of the run, then `end` when it is over."""
    site = request.app[SITE]
    run_id = int(request.match_info["run_id"])
    try:
        run = await site.db.get_run(run_id)
        await adapter_here(request, run.adapter)  # another server's run is no run here
    except StorageError as exc:
        return failure(request, 404, f"no training run {run_id}" if isinstance(
            exc, UnknownAdapterError) else str(exc))
    last_id = request.headers.get("Last-Event-ID", "")
    tail = EventTail(run_events_path(site.config, run),
                     int(last_id) if last_id.isdigit() else 0)
    response = web.StreamResponse(headers={**SECURITY_HEADERS,
                                           "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})  # nginx: no buffering
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        while True:
            if not await session_lasts(request):  # signed out, expired or no longer an admin
                await response.write(b'event: end\ndata: {"status": "signed out"}\n\n')
                break
            run = await site.db.get_run(run_id)  # before reading: no line is missed at the end
            path = run_events_path(site.config, run)  # known once the run has started
            if path != tail.path:
                tail = EventTail(path, tail.skip_lines)
            events = await asyncio.to_thread(tail.read)
            for number, event in events:
                await response.write(f"id: {number}\ndata: {json.dumps(event)}\n\n".encode())
            if events:
                quiet_since = loop.time()
            elif run.status in FINISHED:
                end = {"status": run.status, "version": run.version, "error": run.error}
                await response.write(f"event: end\ndata: {json.dumps(end)}\n\n".encode())
                break
            elif loop.time() - quiet_since > KEEPALIVE_S:
                await response.write(b": still running\n\n")  # finds a closed browser
                quiet_since = loop.time()
            await asyncio.sleep(site.event_poll_s)
    except ConnectionResetError:
        pass  # the browser went away
    return response

"""Versions of an adapter: the gate's report, the loss curve, the data each version saw,
and promote / roll back through the same path as `/adapter rollback`.

A version's report comes from its row (metrics, the gate's reason), its directory
(`training_meta.json`, `loss_curve.png`, written by trainer.versions) and the `gate`
event of the run that made it. Serving another version calls the engine's hot reload
(`engine.promote`, the call `/adapter rollback` makes) when the site was given one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from settings.layout import CURVE_FILE, META_FILE
from storage import AdapterVersion, StorageError
from trainer.events import read_events

from ..routing import confined_adapter_path
from ..training import run_events_path
from .app import (
    EXPECTED,
    SITE,
    adapter_here,
    caller_of,
    done,
    failure,
    nav_counts,
    refused,
    render,
    scope_of_request,
    url,
)

SHOWN_HYPERPARAMETERS = ("method", "epochs", "learning_rate", "batch_size", "lora_r",
                         "lora_alpha", "max_seq_len", "seed")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/versions", versions_page, name="versions")
    router.add_get("/versions/{adapter}/{version:\\d+}", version_page, name="version")
    router.add_get("/versions/{adapter}/{version:\\d+}/loss_curve.png", loss_curve,
                   name="loss_curve")
    router.add_post("/versions/{adapter}/{version:\\d+}/serve", serve, name="serve")


@dataclass
class VersionReport:
    record: AdapterVersion
    meta: dict[str, Any]
    gate: dict[str, Any]
    seen: dict[str, int]
    has_curve: bool

    @property
    def hyperparameters(self) -> dict[str, Any]:
        hyper = self.meta.get("hyperparameters") or {}
        return {k: hyper[k] for k in SHOWN_HYPERPARAMETERS if k in hyper}

    @property
    def data_counts(self) -> dict[str, Any]:
        data = self.meta.get("data") or {}
        return {k: data[k] for k in ("read", "duplicates", "train", "validation", "held_out")
                if k in data}


def _version_dir(site, record: AdapterVersion) -> Path | None:
    try:
        return confined_adapter_path(site.config.adapters_dir, record.path)
    except ValueError:
        return None  # a path outside the adapters directory is shown, never read


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


async def report(site, record: AdapterVersion) -> VersionReport:
    directory = _version_dir(site, record)
    meta = await asyncio.to_thread(_read_json, directory / META_FILE) if directory else {}
    gate = dict(meta.get("gate") or {})
    if not gate and record.run_id is not None:
        gate = await _gate_event(site, record.run_id)
    seen = await site.db.version_pair_counts(record.adapter, record.version)
    has_curve = directory is not None and await asyncio.to_thread(
        (directory / CURVE_FILE).is_file)
    return VersionReport(record, meta, gate, seen, has_curve)


async def _gate_event(site, run_id: int) -> dict[str, Any]:
    """The gate's decision as the run reported it (its last `gate` event)."""
    try:
        run = await site.db.get_run(run_id)
    except StorageError:
        return {}
    path = run_events_path(site.config, run)
    events, _ = await asyncio.to_thread(read_events, path, 0)
    gates = [e for _, e in events if e.get("event") == "gate"]
    return {k: v for k, v in gates[-1].items() if k != "event"} if gates else {}


async def versions_page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    adapters = await site.db.list_adapters(scope_of_request(request))
    chosen = request.query.get("adapter") or (adapters[0].name if adapters else None)
    reports: list[VersionReport] = []
    serving = None
    channels: list[int] = []
    if chosen is not None:
        try:
            await adapter_here(request, chosen)
            records = await site.db.versions(chosen)
        except StorageError as exc:
            return failure(request, 404, str(exc))
        reports = [await report(site, r) for r in reversed(records)]
        serving = next((r.record for r in reports if r.record.status == "serving"), None)
        channels = await site.db.channels_of(chosen)
    return render(request, "versions.html", page="versions", nav=await nav_counts(request),
                  adapters=adapters, chosen=chosen, reports=reports, serving=serving,
                  channels=channels, hot_reload=site.promote is not None)


async def version_page(request: web.Request) -> web.Response:
    site = request.app[SITE]
    adapter, number = request.match_info["adapter"], int(request.match_info["version"])
    try:
        await adapter_here(request, adapter)
        record = await site.db.get_version(adapter, number)
        pairs = await site.db.version_pairs(adapter, number)
    except StorageError as exc:
        return failure(request, 404, str(exc))
    serving = await site.db.serving_version(adapter)
    return render(request, "version.html", page="versions", nav=await nav_counts(request),
                  chosen=adapter, report=await report(site, record), pairs=pairs,
                  serving=serving, hot_reload=site.promote is not None)


async def loss_curve(request: web.Request) -> web.StreamResponse:
    site = request.app[SITE]
    try:
        await adapter_here(request, request.match_info["adapter"])
        record = await site.db.get_version(request.match_info["adapter"],
                                           int(request.match_info["version"]))
    except StorageError as exc:
        return failure(request, 404, str(exc))
    directory = _version_dir(site, record)
    path = directory / CURVE_FILE if directory else None
    if path is None or not await asyncio.to_thread(path.is_file):
        return failure(request, 404, f"{record.adapter} v{record.version} has no loss curve")
    return web.FileResponse(path, headers={"Content-Type": "image/png"})


async def serve(request: web.Request) -> web.Response:
    """Promote a candidate or roll back to an older version, without a restart."""
    site = request.app[SITE]
    adapter, number = request.match_info["adapter"], int(request.match_info["version"])
    try:
        label = (await adapter_here(request, adapter)).label
        served = await site.core.adapters.serve(caller_of(request), label, number,
                                                where=" on the web review page")
    except EXPECTED as exc:
        return refused(request, exc)
    except RuntimeError as exc:  # the engine could not load it
        return failure(request, 400, f"{adapter} v{number} could not be served: {exc}")
    was = served.values["was"]
    await site.record(request, "rollback" if served.values["rolled_back"] else "promote",
                      f"{adapter} v{number}", was=was)
    return done(request, {"adapter": adapter, "serving": number, "was": was},
                url(request, "versions", {"adapter": adapter}))

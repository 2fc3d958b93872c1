"""`runs`: the history of training runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from settings import Config

from .common import open_store


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    runs = sub.add_parser("runs", parents=[common], help="history of training runs")
    runs.add_argument("--adapter", help="only this adapter's runs")
    runs.add_argument("--limit", type=int, default=20, help="newest N runs (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON lines")


def run_runs(config: Config, args: argparse.Namespace) -> int:
    with open_store(config) as db:
        runs = db.list_runs(args.adapter, args.limit)
    if args.json:
        for run in runs:
            print(json.dumps(run.__dict__, ensure_ascii=False))
        return 0
    if not runs:
        print("no training runs yet")
        return 0
    print(f"{'id':>4}  {'adapter':<16} {'status':<10} {'trigger':<8} {'ver':>4}  "
          f"{'started':<20} {'loss':>8}  error")
    for run in runs:
        loss = run.metrics.get("held_out_loss", run.metrics.get("train_loss"))
        print(f"{run.id:>4}  {run.adapter:<16} {run.status:<10} {run.trigger:<8} "
              f"{run.version if run.version is not None else '-':>4}  "
              f"{(run.started_at or '-')[:19]:<20} "
              f"{f'{loss:.4f}' if isinstance(loss, (int, float)) else '-':>8}  "
              f"{(run.error or '').splitlines()[0][:60] if run.error else ''}")
    return 0


COMMANDS = {"runs": run_runs}

"""`promote` and `rollback`: which version of an adapter serves."""

from __future__ import annotations

import argparse
from typing import Any

from settings import Config

from .common import EXIT_REFUSED, open_store


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    promote = sub.add_parser(
        "promote", parents=[common], help="gate a candidate version and serve it if it passes",
        description="Measure VERSION (default: the newest candidate) and the serving version "
                    "(or the base model) now on the candidate's held-out pairs; serve it if "
                    "its loss is finite and at most training.max_regression above. The "
                    "reason is recorded either way. Exit 0 promoted, 3 refused.")
    promote.add_argument("name", help="adapter name")
    promote.add_argument("version", nargs="?", type=int, help="version number")
    promote.add_argument("--force", action="store_true",
                         help="serve it without the gate (the reason says so)")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="serve an earlier version again",
        description="Serve VERSION (default: the one before the serving version) of NAME; "
                    "no gate. The running bot picks it up on its next request.")
    rollback.add_argument("name", help="adapter name")
    rollback.add_argument("version", nargs="?", type=int, help="version number")


def run_promote(config: Config, args: argparse.Namespace) -> int:
    from ..gate import gate_version, newest_candidate
    from ..gate_report import format_report

    with open_store(config) as db:
        version = args.version or newest_candidate(db, args.name).version
        if args.force:
            db.set_serving(args.name, version, reason="promoted with --force (no gate)")
            print(f"{args.name} now serves v{version} (forced, no gate)")
            return 0
        decision = gate_version(config, db, args.name, version)
    table = format_report(decision.report)
    if table:
        print(table.rsplit("\n", 1)[0])
    print(f"{args.name} v{version}: {decision.reason}")
    return 0 if decision.promote else EXIT_REFUSED


def run_rollback(config: Config, args: argparse.Namespace) -> int:
    from ..gate import rollback_target

    with open_store(config) as db:
        version = args.version or rollback_target(db, args.name)
        db.set_serving(args.name, version, reason="rollback from the trainer command line")
    print(f"{args.name} now serves v{version}")
    return 0


COMMANDS = {"promote": run_promote, "rollback": run_rollback}

"""`compose`: a weighted combination of adapters as a new candidate version."""

from __future__ import annotations

import argparse
from typing import Any

from settings import Config

from .common import EXIT_REFUSED, open_store


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from ..compose import COMBINATIONS

    compose = sub.add_parser(
        "compose", parents=[common], help="a weighted combination of adapters as a new version",
        description="Combine adapters with weights (PEFT add_weighted_adapter) into the next "
                    "version of --output (created if missing), recorded as a candidate; its "
                    "training_meta.json lists the inputs and weights. linear keeps the rank "
                    "(inputs of one rank; default then); cat stacks the inputs, rank = the sum, "
                    "exactly the weighted sum of their updates (default when ranks differ); "
                    "svd factorises that sum back to the largest input rank.",
        epilog="Each input is NAME[@VERSION]:WEIGHT, the weight after the last ':' (adapter "
               "names never contain ':' or '@'), for example --adapter support:0.7 --adapter "
               "billing@2:0.3; NAME alone is its serving version, else its newest. One input "
               "rescales an adapter (support:0.75); a negative weight subtracts one.")
    compose.add_argument("--adapter", action="append", default=[], dest="inputs",
                         metavar="NAME[@VERSION]:WEIGHT", help="an input (repeatable)")
    compose.add_argument("--adapter-dir", action="append", default=[], dest="input_dirs",
                         metavar="DIR:WEIGHT", help="an adapter directory as input (repeatable)")
    compose.add_argument("--output", required=True, metavar="NAME",
                         help="adapter that receives the new version")
    compose.add_argument("--combination", choices=COMBINATIONS, default="auto",
                         help="auto (default), linear, cat or svd")
    compose.add_argument("--promote", action="store_true",
                         help="run the promotion gate on the new version right away")


def run_compose(config: Config, args: argparse.Namespace) -> int:
    from ..compose import compose, parse_weighted_dir, parse_weighted_ref

    inputs = ([parse_weighted_ref(text) for text in args.inputs]
              + [parse_weighted_dir(text) for text in args.input_dirs])
    result = compose(config, inputs, args.output, combination=args.combination)
    summary = " + ".join(f"{s['label']} x{s['weight']:g}" for s in result.sources)
    print(f"{result.adapter} v{result.version} written to {result.path} as a candidate: "
          f"{summary} ({result.combination}, rank {result.rank})")
    if args.promote:
        from ..gate import gate_version
        from ..gate_report import format_report

        with open_store(config) as db:
            decision = gate_version(config, db, result.adapter, result.version)
        print(format_report(decision.report) or decision.reason)
        return 0 if decision.promote else EXIT_REFUSED
    return 0


COMMANDS = {"compose": run_compose}

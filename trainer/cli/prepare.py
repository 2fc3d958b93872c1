"""`prepare`: raw text (one example a line) → clean JSONL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from settings import Config


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    prepare = sub.add_parser(
        "prepare", parents=[common], help="turn a raw text file into clean training JSONL",
        description="Read RAW, one example a line as `question<TAB>answer` or "
                    "`Q: question A: answer` (blank lines and # comments are ignored), and "
                    "write OUT as JSONL {question, answer}, without duplicates. Lines that do "
                    "not parse are skipped and reported with their numbers.")
    prepare.add_argument("raw", type=Path, help="raw text file")
    prepare.add_argument("out", type=Path, help="JSONL file to write (replaced atomically)")


def run_prepare(config: Config, args: argparse.Namespace) -> int:
    from ..datafiles import prepare_raw

    report = prepare_raw(args.raw, args.out)
    for line in report.skipped:
        print(f"skipped {args.raw}:{line.removeprefix('line ')}")
    print(f"wrote {report.written} example(s) to {args.out}; skipped {len(report.skipped)} "
          f"line(s), dropped {report.duplicates} duplicate(s)")
    return 0



COMMANDS = {"prepare": run_prepare}

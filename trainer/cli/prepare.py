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
    imports = sub.add_parser(
        "import-pairs", parents=[common], help="store a file of question/answer pairs as "
        "approved pairs of an adapter (an FAQ a team already has)",
        description="Read FILE (JSONL, JSON, CSV, TXT or TSV, in any shape `train --data` "
                    "reads; `also_asked` included) and store every row as an approved pair "
                    "of ADAPTER, which is created if it does not exist. The running bot "
                    "answers from them at once (its channel memory) and the next training "
                    "run learns them. A bad row is reported with its line number and "
                    "nothing of the file is stored.")
    imports.add_argument("file", type=Path, help="the pairs to import")
    imports.add_argument("--adapter", required=True, help="the adapter they belong to")


def run_prepare(config: Config, args: argparse.Namespace) -> int:
    from ..datafiles import prepare_raw

    report = prepare_raw(args.raw, args.out)
    for line in report.skipped:
        print(f"skipped {args.raw}:{line.removeprefix('line ')}")
    print(f"wrote {report.written} example(s) to {args.out}; skipped {len(report.skipped)} "
          f"line(s), dropped {report.duplicates} duplicate(s)")
    return 0



def run_import_pairs(config: Config, args: argparse.Namespace) -> int:
    from storage import SyncStore, validate_adapter_key

    from ..datafiles import read_pairs

    adapter = validate_adapter_key(args.adapter)
    pairs = read_pairs(args.file, adapter)  # before anything is stored
    with SyncStore(config.database_path,
                   busy_timeout_ms=config.storage.busy_timeout_ms) as store:
        _, created = store.ensure_adapter(adapter, config.model.name)
        count = store.import_pairs(pairs, adapter)
    print(f"imported {count} approved pair(s) from {args.file} into {adapter}"
          f"{' (a new adapter)' if created else ''}: the bot answers from them at once, and "
          f"the next training run learns them")
    return 0


COMMANDS = {"prepare": run_prepare, "import-pairs": run_import_pairs}

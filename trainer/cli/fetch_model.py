"""`fetch-model`: provision the base model and print where it is."""

from __future__ import annotations

import argparse
import os
from typing import Any

from settings import Config

from .. import modeling


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    fetch = sub.add_parser(
        "fetch-model", parents=[common],
        help="provision the configured base model (convert the default GGUF once) "
             "and print where it is and its size")
    fetch.add_argument("--quiet", action="store_true", help="print only the path")


def run_fetch_model(config: Config, args: argparse.Namespace) -> int:
    cfg = config.model
    source = modeling.resolve_model_source(cfg.name, config.model_cache_dir,
                                           allow_download=cfg.allow_download)
    if os.path.isdir(source):
        size = modeling.human_size(modeling.directory_size(source))
        print(source if args.quiet else f"model {cfg.name}: {source} ({size})")
    else:
        print(source if args.quiet else f"model {cfg.name}: hub id {source} (loaded from the "
              f"Hugging Face cache{'' if cfg.allow_download else ' only'})")
    return 0



COMMANDS = {"fetch-model": run_fetch_model}

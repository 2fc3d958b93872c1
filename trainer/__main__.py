"""`python -m trainer`: the fine-tuning tool's command line."""

from __future__ import annotations

import argparse
import os
import sys

from bot.config import load_config_or_exit
from bot.logs import configure_logging

from . import modeling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer",
                                     description="Fine-tune, evaluate and manage adapters.")
    parser.add_argument("--config", help="settings file (default: $BOT_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser(
        "fetch-model",
        help="provision the configured base model (convert the default GGUF once) "
             "and print where it is and its size")
    fetch.add_argument("--quiet", action="store_true", help="print only the path")
    return parser


def cmd_fetch_model(config, quiet: bool) -> int:
    cfg = config.model
    source = modeling.resolve_model_source(cfg.name, config.model_cache_dir,
                                           allow_download=cfg.allow_download)
    if os.path.isdir(source):
        size = modeling.human_size(modeling.directory_size(source))
        print(source if quiet else f"model {cfg.name}: {source} ({size})")
    else:
        print(source if quiet else f"model {cfg.name}: hub id {source} (loaded from the "
              f"Hugging Face cache{'' if cfg.allow_download else ' only'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config_or_exit(args.config)
    configure_logging(config.logging.level)
    try:
        if args.command == "fetch-model":
            return cmd_fetch_model(config, args.quiet)
    except modeling.ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`python -m trainer`: the fine-tuning tool's command line.

  fetch-model   provision the base model and print where it is
  prepare       raw text (one example a line) → clean JSONL
  train         fine-tune a new version of an adapter (LoRA, QLoRA or full)
  evaluate      loss/perplexity (and generated answers) of the base and an adapter
  promote       run the gate on a candidate and serve it if it passes
  rollback      serve an earlier version again
  runs          the history of training runs
  generate      answer prompts with the base model or an adapter (sampling, seeds)
  merge         fold an adapter into a full model directory (non-finite weights refused)
  export        merged model, TorchScript or ONNX (with the onnx extra)
  compose       a weighted combination of adapters as a new candidate version
  sweep         train a grid of LoRA settings on one data set and rank them

Expected errors print one `error: ...` line (bad data: one line per problem)
and exit 1; a promotion refused by the gate exits 3; an interrupted run exits
130 and continues with `train --resume`. Each command's options and run
function are in trainer/cli/.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import warnings

from settings import load_config_or_exit
from settings.logs import configure_logging

from . import modeling
from .cli import (
    compose,
    evaluate,
    export,
    fetch_model,
    generate,
    prepare,
    runs,
    serving,
    sweep,
    train,
)
from .cli.common import EXIT_ERROR, EXIT_INTERRUPTED

log = logging.getLogger("trainer")

# the command families (trainer/cli/), in the order --help lists their commands
FAMILIES = (fetch_model, prepare, train, evaluate, serving, runs, generate, export, compose,
            sweep)
COMMANDS = {name: run for family in FAMILIES for name, run in family.COMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description="Fine-tune, evaluate and manage adapters.",
        epilog="Settings come from config.toml ([model], [training], [storage]); see "
               "docs/configuration.md. Every command also takes --config after its name.")
    parser.add_argument("--config", help="settings file (default: $BOT_CONFIG or ./config.toml)")
    # --config is accepted after the command name too; SUPPRESS keeps the global one if absent
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="settings file (default: $BOT_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in FAMILIES:
        family.add_parsers(sub, common)
    return parser


# --- entry point ---------------------------------------------------------------------

def _expected_errors() -> tuple[type[BaseException], ...]:
    from storage import StorageError

    from .adapters import AdapterRefError
    from .compose import ComposeError
    from .data import DataError
    from .export import ExportError
    from .formatting import FormattingError
    from .gate import GateError
    from .generate import PromptsError
    from .sweep import SweepError
    from .train import TrainingError

    return (modeling.ModelError, StorageError, DataError, FormattingError, GateError,
            TrainingError, FileNotFoundError, AdapterRefError, ComposeError, ExportError,
            PromptsError, SweepError)


def _quiet_libraries() -> None:
    """Keep stderr readable when it is a log file or a pipe (the bot's case)."""
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if not sys.stderr.isatty():
        # progress bars redrawn with carriage returns are noise anywhere but a terminal
        from datasets.utils.logging import disable_progress_bar
        from transformers.utils import logging as hf_logging

        disable_progress_bar()
        hf_logging.disable_progress_bar()


def _terminate(signum, frame) -> None:
    # the bot stops a run with SIGTERM: unwind like Ctrl-C so the run row says cancelled
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config_or_exit(args.config)
    configure_logging(config.logging.level)
    events = getattr(args, "events", False)
    if args.command in ("train", "evaluate", "promote", "generate", "merge", "export",
                        "compose", "sweep"):
        _quiet_libraries()
    if args.command in ("train", "sweep"):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](config, args)
    except KeyboardInterrupt:
        print("error: interrupted" + ("; continue with `python -m trainer train --resume`"
                                      if args.command == "train" else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        if events and not getattr(exc, "reported", False):
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

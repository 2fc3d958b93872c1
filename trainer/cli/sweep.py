"""`sweep`: train a grid of LoRA settings on one data set and rank them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from settings import Config

SWEEP_OVERRIDES = ("method", "epochs", "max_steps", "batch_size", "grad_accum", "max_seq_len",
                   "eval_every", "seed")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from ..sweep import value_list

    sweep = sub.add_parser(
        "sweep", parents=[common], help="train a grid of LoRA settings and rank them",
        description="Train every combination of --lora-r, --lora-alpha, --lora-dropout and "
                    "--lr on the same data, split and seed, and print a table best first: "
                    "validation loss and perplexity, time and adapter size. Nothing is "
                    "registered or served; each run's adapter and events, and sweep.json "
                    "with the table, are written under --output (default: "
                    "<data_dir>/sweeps/<adapter>-<time>). Other settings come from [training].",
        epilog="Lists are comma-separated: --lora-r 4,8,16 --lora-alpha 8,16 --lora-dropout "
               "0,0.05 --lr 1e-3,5e-4. An option left out uses the [training] value. A "
               "combination whose loss diverges is listed as failed; the rest go on.")
    sweep.add_argument("--data", action="append", type=Path, required=True, metavar="FILE",
                       help="training data file (repeatable; same formats as train)")
    sweep.add_argument("--adapter", default="sweep", metavar="NAME",
                       help="whose held-out pairs stay out of training (default: sweep)")
    sweep.add_argument("--lora-r", type=value_list(int, "--lora-r"), metavar="R,...",
                       help="ranks")
    sweep.add_argument("--lora-alpha", type=value_list(int, "--lora-alpha"), metavar="A,...",
                       help="alphas (scale = alpha / r)")
    sweep.add_argument("--lora-dropout", type=value_list(float, "--lora-dropout"),
                       metavar="D,...", help="dropouts")
    sweep.add_argument("--lr", type=value_list(float, "--lr"), dest="learning_rate",
                       metavar="LR,...", help="peak learning rates")
    length = sweep.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="passes over the data")
    length.add_argument("--max-steps", type=int, metavar="N", help="exactly N optimiser steps")
    sweep.add_argument("--method", choices=("lora", "qlora"), help="lora or qlora")
    sweep.add_argument("--batch-size", type=int, help="examples per micro-batch")
    sweep.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    sweep.add_argument("--max-seq-len", type=int, help="longest example in tokens")
    sweep.add_argument("--eval-every", type=int, metavar="N",
                       help="validate every N steps (0: at the end only)")
    sweep.add_argument("--seed", type=int, help="random seed (split and initialisation)")
    sweep.add_argument("--output", type=Path, metavar="DIR", help="sweep directory (new or empty)")
    sweep.add_argument("--json", action="store_true", help="print the report as JSON")



def run_sweep(config: Config, args: argparse.Namespace) -> int:
    from ..sweep import SweepOptions, format_table, run_sweep

    training = config.training
    overrides = {k: getattr(args, k) for k in SWEEP_OVERRIDES if getattr(args, k) is not None}
    if args.epochs is not None:
        overrides["max_steps"] = 0  # --epochs wins over a max_steps from the settings
    options = SweepOptions(
        data_files=list(args.data), name=args.adapter, output=args.output,
        lora_r=args.lora_r or [training.lora_r],
        lora_alpha=args.lora_alpha or [training.lora_alpha],
        lora_dropout=args.lora_dropout or [training.lora_dropout],
        learning_rate=args.learning_rate or [training.learning_rate], overrides=overrides)
    report = run_sweep(config, options)
    print(json.dumps(report, ensure_ascii=False) if args.json else format_table(report))
    return 0


COMMANDS = {"sweep": run_sweep}

"""`train`: fine-tune a new version of an adapter (LoRA, QLoRA or full)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from settings import Config

TRAIN_OVERRIDES = ("method", "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum",
                   "lora_r", "lora_alpha", "lora_dropout", "max_seq_len", "seed", "eval_every",
                   "checkpoint_every", "gradient_checkpointing", "system_prompt")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    train = sub.add_parser(
        "train", parents=[common], help="fine-tune a new version of an adapter",
        description="Train a new version of ADAPTER on --data files and/or the approved pairs "
                    "in the database (--from-db), write it to "
                    "<adapters_dir>/<adapter>/v<N>/ (a PEFT adapter; for --method full a "
                    "whole model, which the bot cannot serve as an adapter) and record it as "
                    "a candidate. Defaults come from [training] in config.toml.",
        epilog="Data files: .jsonl, .json (a list), .csv (header question,answer or "
               "prompt,completion) or .txt (question<TAB>answer or Q: ... A: ...); rows "
               "{question, answer}, {prompt, completion} or {messages: [...]} (the last "
               "assistant turn is learnt). With --events, stdout carries only JSON lines: "
               "start, step, eval, checkpoint, done or error (and gate with --promote).")
    train.add_argument("--adapter", required=True, help="adapter name (created if missing)")
    train.add_argument("--data", action="append", type=Path, default=[], metavar="FILE",
                       help="training data file (repeatable)")
    train.add_argument("--from-db", action="store_true",
                       help="add the adapter's approved pairs from the database")
    train.add_argument("--output", type=Path, metavar="DIR",
                       help="run directory for checkpoints, log and events "
                            "(default: <data_dir>/runs/<adapter>/run-<id>)")
    train.add_argument("--method", choices=("lora", "qlora", "full"),
                       help="lora, qlora (4-bit base, needs bitsandbytes) or full")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="passes over the data")
    length.add_argument("--max-steps", type=int, metavar="N",
                        help="exactly N optimiser steps (instead of --epochs)")
    train.add_argument("--lr", type=float, dest="learning_rate", help="peak learning rate")
    train.add_argument("--batch-size", type=int, help="examples per micro-batch")
    train.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    train.add_argument("--lora-r", type=int, help="LoRA rank")
    train.add_argument("--lora-alpha", type=int, help="LoRA alpha (scale = alpha / r)")
    train.add_argument("--lora-dropout", type=float, help="LoRA dropout")
    train.add_argument("--max-seq-len", type=int, help="longest example in tokens (cut beyond)")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--eval-every", type=int, metavar="N",
                       help="validate every N steps (0: at the end only)")
    train.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="checkpoint every N steps (0: never)")
    train.add_argument("--gradient-checkpointing", action="store_true", default=None,
                       help="trade compute for memory")
    train.add_argument("--system-prompt", help="system prompt for examples without one "
                       "(default: the adapter's, else model.system_prompt)")
    train.add_argument("--resume", action="store_true",
                       help="continue the last interrupted run of the adapter (or --output "
                            "DIR) from its checkpoint, with its own settings")
    train.add_argument("--events", action="store_true",
                       help="print progress as JSON lines on stdout (for the bot)")
    train.add_argument("--tensorboard", type=Path, metavar="DIR",
                       help="also write TensorBoard scalars (loss, learning rate, tokens/s, "
                            "validation) under DIR/<adapter>/<run>; needs pip install "
                            "tensorboard")
    train.add_argument("--promote", action="store_true",
                       help="run the promotion gate on the new version right away")
    train.add_argument("--run-id", type=int, help="use this existing training_runs row")
    train.add_argument("--trigger", choices=("cli", "manual", "schedule"), default="cli",
                       help="recorded on the run row (default: cli)")


def run_train(config: Config, args: argparse.Namespace) -> int:
    from ..pipeline import TrainRequest, run_training

    overrides = {k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k) is not None}
    if args.epochs is not None:
        overrides["max_steps"] = 0  # --epochs wins over a max_steps from anywhere else
    request = TrainRequest(adapter=args.adapter, data_files=list(args.data),
                           from_db=args.from_db, overrides=overrides, run_dir=args.output,
                           resume=args.resume, events=args.events, run_id=args.run_id,
                           promote=args.promote, trigger=args.trigger,
                           tensorboard=args.tensorboard)
    outcome = run_training(config, request)
    if not args.events:
        metrics = outcome.metrics
        held = metrics.get("held_out_loss")
        base = metrics.get("base_held_out_loss")
        summary = (f"; held-out loss {held:.4f} (base model {base:.4f})"
                   if held is not None and base is not None else "")
        print(f"{args.adapter} v{outcome.version} written to {outcome.path} as a candidate "
              f"(run {outcome.run_id}, {metrics['steps']} steps, train loss "
              f"{metrics['train_loss']:.4f}{summary})")
        if outcome.gate is not None:
            from ..gate_report import format_report

            print(format_report(outcome.gate.get("report")) or outcome.gate["reason"])
    return 0


COMMANDS = {"train": run_train}

"""`evaluate`: loss/perplexity (and generated answers) of the base model and an adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from settings import Config


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    evaluate = sub.add_parser(
        "evaluate", parents=[common], help="loss, perplexity and answers of base and adapter",
        description="Measure the base model (and --adapter DIR beside it) on --data files: "
                    "loss and perplexity on the answer tokens, tokens/s; with --generate "
                    "also greedy answers with BLEU, ROUGE-L, exact match, length ratio and "
                    "the share of answers containing each --expect-keyword.")
    evaluate.add_argument("--data", action="append", type=Path, required=True, metavar="FILE",
                          help="evaluation data file (repeatable; same formats as train)")
    evaluate.add_argument("--adapter", type=Path, metavar="DIR",
                          help="adapter directory to compare with the base model")
    evaluate.add_argument("--generate", action="store_true", help="also generate and score")
    evaluate.add_argument("--expect-keyword", action="append", default=[], metavar="TEXT",
                          help="report the share of answers containing TEXT (repeatable)")
    evaluate.add_argument("--max-examples", type=int, default=0, metavar="N",
                          help="use only the first N examples (0: all)")
    evaluate.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                          help="longest generated answer (default 128)")
    evaluate.add_argument("--batch-size", type=int, default=8, metavar="N")
    evaluate.add_argument("--system-prompt", help="system prompt (default: model.system_prompt)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")


def run_evaluate(config: Config, args: argparse.Namespace) -> int:
    from ..evaluate import EvalOptions, evaluate, format_report

    options = EvalOptions(
        data_files=list(args.data), adapter_dir=args.adapter, generate=args.generate,
        expect_keywords=list(args.expect_keyword), max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        max_seq_len=config.training.max_seq_len,
        system_prompt=args.system_prompt or config.model.system_prompt)
    report = evaluate(config, options)
    print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))
    return 0


COMMANDS = {"evaluate": run_evaluate}

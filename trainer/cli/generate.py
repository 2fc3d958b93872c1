"""`generate`: answer prompts with the base model or an adapter (sampling, seeds)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from settings import Config

from .common import ADAPTER_REF_HELP


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    generate = sub.add_parser(
        "generate", parents=[common], help="answer prompts with the base model or an adapter",
        description="Answer each prompt with the base model or an adapter, formatted exactly "
                    "as in training: the tokenizer's chat template and the system prompt the "
                    "adapter was trained with (or --system-prompt; else "
                    "model.system_prompt). Temperature 0 decodes greedily; above 0 it samples "
                    "with top-p. Sampling defaults come from [engine], so the answers are "
                    "the bot's.",
        epilog="--prompts FILE: one prompt a line (blank lines and # comments skipped), or a "
               ".jsonl file whose lines are strings or objects with question, prompt or "
               "messages. " + ADAPTER_REF_HELP + ".")
    generate.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                          help="a prompt (repeatable)")
    generate.add_argument("--prompts", type=Path, metavar="FILE", help="prompts from a file")
    which = generate.add_mutually_exclusive_group()
    which.add_argument("--adapter", metavar="NAME[@VERSION]",
                       help="a stored adapter version (NAME:VERSION works too; default: the "
                            "base model alone)")
    which.add_argument("--adapter-dir", type=Path, metavar="DIR", help="an adapter directory")
    generate.add_argument("--temperature", type=float,
                          help="0 = greedy (default: engine.temperature)")
    generate.add_argument("--top-p", type=float, help="nucleus mass when sampling "
                          "(default: engine.top_p)")
    generate.add_argument("--repetition-penalty", type=float,
                          help="1 disables it (default: engine.repetition_penalty)")
    generate.add_argument("--max-new-tokens", type=int, metavar="N",
                          help="longest answer (default: engine.max_new_tokens)")
    generate.add_argument("--num-samples", type=int, default=1, metavar="N",
                          help="answers per prompt (default 1)")
    generate.add_argument("--seed", type=int, help="make sampling reproducible")
    generate.add_argument("--system-prompt",
                          help="system prompt (default: the adapter's training one, else "
                               "model.system_prompt)")
    generate.add_argument("--json", action="store_true", help="print one JSON object")


def run_generate(config: Config, args: argparse.Namespace) -> int:
    from ..adapters import resolve_adapter
    from ..generate import GenerateOptions, format_results, generate, read_prompts

    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    source = resolve_adapter(config, ref=args.adapter, directory=args.adapter_dir,
                             allow_colon=True)
    engine = config.engine

    def chosen(value, default):
        return default if value is None else value

    options = GenerateOptions(
        prompts, source, temperature=chosen(args.temperature, engine.temperature),
        top_p=chosen(args.top_p, engine.top_p),
        repetition_penalty=chosen(args.repetition_penalty, engine.repetition_penalty),
        max_new_tokens=chosen(args.max_new_tokens, engine.max_new_tokens),
        num_samples=args.num_samples, seed=args.seed,
        system_prompt=args.system_prompt, default_system_prompt=config.model.system_prompt)
    report = generate(config, options)
    print(json.dumps(report, ensure_ascii=False) if args.json else format_results(report))
    return 0


COMMANDS = {"generate": run_generate}

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
130 and continues with `train --resume`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from bot.config import load_config_or_exit
from bot.logs import configure_logging

from . import modeling

log = logging.getLogger("trainer")

EXIT_ERROR = 1
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


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

    fetch = sub.add_parser(
        "fetch-model", parents=[common],
        help="provision the configured base model (convert the default GGUF once) "
             "and print where it is and its size")
    fetch.add_argument("--quiet", action="store_true", help="print only the path")

    prepare = sub.add_parser(
        "prepare", parents=[common], help="turn a raw text file into clean training JSONL",
        description="Read RAW, one example a line as `question<TAB>answer` or "
                    "`Q: question A: answer` (blank lines and # comments are ignored), and "
                    "write OUT as JSONL {question, answer}, without duplicates. Lines that do "
                    "not parse are skipped and reported with their numbers.")
    prepare.add_argument("raw", type=Path, help="raw text file")
    prepare.add_argument("out", type=Path, help="JSONL file to write (replaced atomically)")

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

    promote = sub.add_parser(
        "promote", parents=[common], help="gate a candidate version and serve it if it passes",
        description="Measure VERSION (default: the newest candidate) and the serving version "
                    "(or the base model) now on the candidate's held-out pairs; serve it if "
                    "its loss is finite and at most training.max_regression above. The "
                    "reason is recorded either way. Exit 0 promoted, 3 refused.")
    promote.add_argument("name", help="adapter name")
    promote.add_argument("version", nargs="?", type=int, help="version number")
    promote.add_argument("--force", action="store_true",
                         help="serve it without the gate (the reason says so)")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="serve an earlier version again",
        description="Serve VERSION (default: the one before the serving version) of NAME; "
                    "no gate. The running bot picks it up on its next request.")
    rollback.add_argument("name", help="adapter name")
    rollback.add_argument("version", nargs="?", type=int, help="version number")

    runs = sub.add_parser("runs", parents=[common], help="history of training runs")
    runs.add_argument("--adapter", help="only this adapter's runs")
    runs.add_argument("--limit", type=int, default=20, help="newest N runs (default 20)")
    runs.add_argument("--json", action="store_true", help="print JSON lines")
    add_model_tool_parsers(sub, common)
    return parser


ADAPTER_REF_HELP = ("NAME alone is its serving version, else its newest; NAME@VERSION (or "
                    "NAME@vVERSION) picks one")


def add_model_tool_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """generate, merge, export, compose and sweep: working with trained adapters."""
    from .compose import COMBINATIONS
    from .export import FORMATS
    from .sweep import value_list

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

    merge = sub.add_parser(
        "merge", parents=[common], help="fold an adapter into a full model directory",
        description="Add the adapter's update into the base model's weights (PEFT "
                    "merge_and_unload) and write a plain model directory with the tokenizer, "
                    "which AutoModelForCausalLM.from_pretrained loads without PEFT. A NaN or "
                    "infinite weight in the adapter or the result is refused, naming the "
                    "tensor. The directory is written beside --output and renamed into place.",
        epilog=ADAPTER_REF_HELP + "; or --adapter-dir DIR for a directory.")
    _add_adapter_choice(merge)
    merge.add_argument("--output", type=Path, required=True, metavar="DIR",
                       help="model directory to write")
    merge.add_argument("--force", action="store_true", help="replace --output if it exists")

    export = sub.add_parser(
        "export", parents=[common], help="export an adapter merged into its model",
        description="merged: as `merge`. torchscript: the merged model's logits forward "
                    "(input_ids, attention_mask -> logits), traced on CPU in float32, saved as "
                    "DIR/model.pt with the tokenizer, reloaded and checked against the merged "
                    "model. onnx: the same as DIR/model.onnx; needs the onnx extra "
                    "(pip install -e '.[onnx]'). Without an adapter, torchscript and onnx "
                    "export the base model.",
        epilog=ADAPTER_REF_HELP + "; or --adapter-dir DIR for a directory.")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="merged, torchscript or onnx")
    _add_adapter_choice(export)
    export.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="directory to write")
    export.add_argument("--force", action="store_true", help="replace --output if it exists")

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


def _add_adapter_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="adapter name (or NAME@VERSION)")
    parser.add_argument("version", nargs="?", type=int, help="version number")
    parser.add_argument("--adapter-dir", type=Path, metavar="DIR",
                        help="an adapter directory instead of a stored version")


# --- commands ------------------------------------------------------------------------

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


def cmd_prepare(args) -> int:
    from .datafiles import prepare_raw

    report = prepare_raw(args.raw, args.out)
    for line in report.skipped:
        print(f"skipped {args.raw}:{line.removeprefix('line ')}")
    print(f"wrote {report.written} example(s) to {args.out}; skipped {len(report.skipped)} "
          f"line(s), dropped {report.duplicates} duplicate(s)")
    return 0


TRAIN_OVERRIDES = ("method", "epochs", "max_steps", "learning_rate", "batch_size", "grad_accum",
                   "lora_r", "lora_alpha", "lora_dropout", "max_seq_len", "seed", "eval_every",
                   "checkpoint_every", "gradient_checkpointing", "system_prompt")


def cmd_train(config, args) -> int:
    from .pipeline import TrainRequest, run_training

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
            from .gate import format_report

            print(format_report(outcome.gate.get("report")) or outcome.gate["reason"])
    return 0


def cmd_evaluate(config, args) -> int:
    from .evaluate import EvalOptions, evaluate, format_report

    options = EvalOptions(
        data_files=list(args.data), adapter_dir=args.adapter, generate=args.generate,
        expect_keywords=list(args.expect_keyword), max_examples=args.max_examples,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        max_seq_len=config.training.max_seq_len,
        system_prompt=args.system_prompt or config.model.system_prompt)
    report = evaluate(config, options)
    print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))
    return 0


def cmd_promote(config, args) -> int:
    from storage import SyncStore

    from .gate import format_report, gate_version, newest_candidate

    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as db:
        version = args.version or newest_candidate(db, args.name).version
        if args.force:
            db.set_serving(args.name, version, reason="promoted with --force (no gate)")
            print(f"{args.name} now serves v{version} (forced, no gate)")
            return 0
        decision = gate_version(config, db, args.name, version)
    table = format_report(decision.report)
    if table:
        print(table.rsplit("\n", 1)[0])
    print(f"{args.name} v{version}: {decision.reason}")
    return 0 if decision.promote else EXIT_REFUSED


def cmd_rollback(config, args) -> int:
    from storage import SyncStore

    from .gate import rollback_target

    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as db:
        version = args.version or rollback_target(db, args.name)
        db.set_serving(args.name, version, reason="rollback from the trainer command line")
    print(f"{args.name} now serves v{version}")
    return 0


def cmd_runs(config, args) -> int:
    from storage import SyncStore


    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as db:
        runs = db.list_runs(args.adapter, args.limit)
    if args.json:
        for run in runs:
            print(json.dumps(run.__dict__, ensure_ascii=False))
        return 0
    if not runs:
        print("no training runs yet")
        return 0
    print(f"{'id':>4}  {'adapter':<16} {'status':<10} {'trigger':<8} {'ver':>4}  "
          f"{'started':<20} {'loss':>8}  error")
    for run in runs:
        loss = run.metrics.get("held_out_loss", run.metrics.get("train_loss"))
        print(f"{run.id:>4}  {run.adapter:<16} {run.status:<10} {run.trigger:<8} "
              f"{run.version if run.version is not None else '-':>4}  "
              f"{(run.started_at or '-')[:19]:<20} "
              f"{f'{loss:.4f}' if isinstance(loss, (int, float)) else '-':>8}  "
              f"{(run.error or '').splitlines()[0][:60] if run.error else ''}")
    return 0


def _chosen_adapter(config, args, *, required: bool):
    """The adapter of merge/export: NAME [VERSION], NAME@VERSION or --adapter-dir DIR."""
    from .adapters import AdapterRef, AdapterRefError, parse_adapter_ref, resolve_adapter

    if args.name is None:
        if args.version is not None:
            raise AdapterRefError("a version needs the adapter's name: NAME VERSION")
        if args.adapter_dir is None and required:
            raise AdapterRefError("which adapter? give NAME [VERSION] or --adapter-dir DIR")
        return resolve_adapter(config, directory=args.adapter_dir)
    ref = parse_adapter_ref(args.name)
    if args.version is not None:
        if ref.version is not None:
            raise AdapterRefError(f"two versions given ({args.name} and {args.version}); "
                                  f"give one")
        ref = AdapterRef(ref.name, args.version)
    return resolve_adapter(config, ref=ref, directory=args.adapter_dir)


def cmd_generate(config, args) -> int:
    from .adapters import resolve_adapter
    from .generate import GenerateOptions, format_results, generate, read_prompts

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


def cmd_merge(config, args) -> int:
    from .export import merge

    source = _chosen_adapter(config, args, required=True)
    result = merge(config, source, args.output, force=args.force)
    print(f"merged {source.label} into {result.path} "
          f"({modeling.human_size(result.size_bytes)}, {result.seconds:.1f} s); it loads with "
          f"AutoModelForCausalLM.from_pretrained")
    return 0


def cmd_export(config, args) -> int:
    from .export import export

    source = _chosen_adapter(config, args, required=args.fmt == "merged")
    result = export(config, args.fmt, source, args.output, force=args.force)
    what = source.label if source is not None else "the base model"
    check = (f", logits within {result.max_abs_diff:.2g} of the merged model"
             if result.max_abs_diff is not None else "")
    print(f"{args.fmt} export of {what} in {result.path} "
          f"({modeling.human_size(result.size_bytes)}, {result.seconds:.1f} s{check})")
    return 0


def cmd_compose(config, args) -> int:
    from storage import SyncStore

    from .compose import compose, parse_weighted_dir, parse_weighted_ref

    inputs = ([parse_weighted_ref(text) for text in args.inputs]
              + [parse_weighted_dir(text) for text in args.input_dirs])
    result = compose(config, inputs, args.output, combination=args.combination)
    summary = " + ".join(f"{s['label']} x{s['weight']:g}" for s in result.sources)
    print(f"{result.adapter} v{result.version} written to {result.path} as a candidate: "
          f"{summary} ({result.combination}, rank {result.rank})")
    if args.promote:
        from .gate import format_report, gate_version

        with SyncStore(config.database_path,
                       busy_timeout_ms=config.storage.busy_timeout_ms) as db:
            decision = gate_version(config, db, result.adapter, result.version)
        print(format_report(decision.report) or decision.reason)
        return 0 if decision.promote else EXIT_REFUSED
    return 0


SWEEP_OVERRIDES = ("method", "epochs", "max_steps", "batch_size", "grad_accum", "max_seq_len",
                   "eval_every", "seed")


def cmd_sweep(config, args) -> int:
    from .sweep import SweepOptions, format_table, run_sweep

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
    commands = {
        "fetch-model": lambda: cmd_fetch_model(config, args.quiet),
        "prepare": lambda: cmd_prepare(args),
        "train": lambda: cmd_train(config, args),
        "evaluate": lambda: cmd_evaluate(config, args),
        "promote": lambda: cmd_promote(config, args),
        "rollback": lambda: cmd_rollback(config, args),
        "runs": lambda: cmd_runs(config, args),
        "generate": lambda: cmd_generate(config, args),
        "merge": lambda: cmd_merge(config, args),
        "export": lambda: cmd_export(config, args),
        "compose": lambda: cmd_compose(config, args),
        "sweep": lambda: cmd_sweep(config, args),
    }
    events = getattr(args, "events", False)
    if args.command in ("train", "evaluate", "promote", "generate", "merge", "export",
                        "compose", "sweep"):
        _quiet_libraries()
    if args.command in ("train", "sweep"):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return commands[args.command]()
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

"""Training throughput on the default model: our trainer against the plain HF `Trainer`.

  python bench/train.py                       # 6 steps of 8 GSM8K rows, 2 rounds a side
  python bench/train.py --steps 4 --batch-size 4 --pad-to 512 --rounds 1

Both sides train the same LoRA (r16, alpha 32, all linear layers) on the same
GSM8K rows (steps x batch size of them, one epoch), with the same learning rate
and schedule, completion-only labels and the same number of optimiser steps.
The difference is the batching: ours groups rows by length and pads each batch
to its longest row; the baseline is `transformers.Trainer` with every row padded
to a fixed length (--pad-to, 512 by default), as a first fine-tuning script
usually does. The figure is real (non-padding, prompt + answer) tokens per
second of wall time inside the training loop, model loading excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from settings import load_config  # noqa: E402
from trainer import modeling  # noqa: E402
from trainer.data import build_splits  # noqa: E402
from trainer.datafiles import read_examples  # noqa: E402
from trainer.formatting import encode_dataset, make_collator  # noqa: E402
from trainer.train import Recipe, TrainConfig  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SYSTEM = "You are a helpful assistant."


def ours(source: str, splits, cfg: TrainConfig, run_dir: Path) -> dict:
    recipe = Recipe(cfg, model_source=source, placement=modeling.choose_placement("cpu"),
                    run_dir=run_dir, progress=False)
    recipe.setup(splits)
    started = time.perf_counter()
    state = recipe.train().state
    seconds = time.perf_counter() - started
    lengths = recipe.encoded["train"]["length"]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in recipe.batches.epoch(0))
    recipe.cleanup()
    return {"tokens": state.tokens, "positions": padded, "seconds": seconds,
            "mean_loss": sum(h["loss"] for h in state.history) / len(state.history)}


class CountingCollator:
    """The baseline's collator, counting real tokens and padded positions it hands out."""

    def __init__(self, inner):
        self.inner, self.tokens, self.positions = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.positions += batch["attention_mask"].numel()
        return batch


def baseline(source: str, splits, cfg: TrainConfig, pad_to: int, out_dir: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(cfg.seed)
    tokenizer = modeling.load_tokenizer(source)
    make_collator(tokenizer)  # right padding, as ours
    encoded, _ = encode_dataset(splits["train"], tokenizer, max_seq_len=cfg.max_seq_len,
                                default_system=cfg.system_prompt)
    encoded = encoded.select_columns(["input_ids", "attention_mask", "labels"])
    model = modeling.load_model(source, modeling.choose_placement("cpu"))
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                             lora_dropout=cfg.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    collator = CountingCollator(DataCollatorForSeq2Seq(
        tokenizer, padding="max_length", max_length=pad_to, label_pad_token_id=-100,
        return_tensors="pt"))
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps), weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=cfg.seed, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=encoded, data_collator=collator)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    del model, trainer
    return {"tokens": collator.tokens, "positions": collator.positions, "seconds": seconds,
            "mean_loss": result.training_loss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps on each side")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step")
    parser.add_argument("--pad-to", type=int, default=512, help="the baseline's fixed length")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds per side; the best of each is kept")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    if not GSM8K.is_file():
        print(f"GSM8K not found at {GSM8K}", file=sys.stderr)
        return 1
    import torch

    config = load_config(ROOT / "config.toml", environ={})
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir)
    rows = read_examples(GSM8K)[:args.steps * args.batch_size]
    splits, _ = build_splits(rows, salt="bench", held_out_fraction=0.0,
                             validation_fraction=0.0, seed=0)
    cfg = TrainConfig(method="lora", max_steps=args.steps, batch_size=args.batch_size,
                      learning_rate=1e-3, max_seq_len=args.pad_to, lora_r=16, lora_alpha=32,
                      seed=0, system_prompt=SYSTEM)
    # this machine's cores are shared: alternate the two sides and keep each one's best
    # round, so a burst of other work during one side does not decide the ratio
    runs: dict[str, list[dict]] = {"ours": [], "hf": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            runs["ours"].append(ours(source, splits, cfg, Path(tmp) / f"ours-{round_}"))
            runs["hf"].append(baseline(source, splits, cfg, args.pad_to,
                                       Path(tmp) / f"hf-{round_}"))
    mine = min(runs["ours"], key=lambda r: r["seconds"])
    base = min(runs["hf"], key=lambda r: r["seconds"])
    speed = {name: r["tokens"] / r["seconds"] for name, r in (("ours", mine), ("hf", base))}
    print(f"training throughput, {config.model.name}, LoRA r16 all-linear, {args.steps} steps "
          f"x {args.batch_size} GSM8K rows, {torch.get_num_threads()} CPU threads, "
          f"{platform.processor() or platform.machine()}, best of {args.rounds} alternating "
          f"rounds, {date.today()}")
    print(f"{'':<34}{'real tokens':>12}{'positions':>11}{'useful':>8}{'seconds':>9}"
          f"{'tokens/s':>10}{'mean loss':>11}")
    for name, label, result in (("ours", "ours (length-grouped, dynamic)", mine),
                                ("hf", f"HF Trainer (padded to {args.pad_to})", base)):
        print(f"{label:<34}{result['tokens']:>12}{result['positions']:>11}"
              f"{result['tokens'] / result['positions']:>8.0%}{result['seconds']:>9.1f}"
              f"{speed[name]:>10.1f}{result['mean_loss']:>11.3f}")
    print(f"ratio: {speed['ours'] / speed['hf']:.2f}x the real tokens per second of the baseline")
    if args.json:
        print(json.dumps({"ours": runs["ours"], "hf": runs["hf"],
                          "ratio": round(speed["ours"] / speed["hf"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A short LoRA run on the real default model and real data (GSM8K), about a minute on CPU."""

from __future__ import annotations

import pytest
from datasets import DatasetDict

from tests.conftest import ROOT
from trainer.data import build_splits
from trainer.datafiles import read_examples
from trainer.modeling import choose_placement
from trainer.train import Recipe, TrainConfig

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"


@pytest.mark.integration
def test_lora_lowers_gsm8k_test_perplexity(default_model_dir, tmp_path):
    if not (GSM8K / "train.jsonl").is_file():
        pytest.skip(f"GSM8K not found at {GSM8K} (the project's shared data)")
    train = read_examples(GSM8K / "train.jsonl")[:32]
    test = read_examples(GSM8K / "test.jsonl")[:16]
    train_split, _ = build_splits(train, salt="gsm8k", held_out_fraction=0.0,
                                  validation_fraction=0.0, seed=0)
    test_split, _ = build_splits(test, salt="gsm8k", held_out_fraction=0.0,
                                 validation_fraction=0.0, seed=0)
    # the test answers are the held-out set: measured before (base) and after the run
    splits = DatasetDict(train=train_split["train"], validation=train_split["validation"],
                         held_out=test_split["train"])
    config = TrainConfig(method="lora", max_steps=8, batch_size=4, learning_rate=2e-3,
                         max_seq_len=384, seed=0, system_prompt="You are a helpful assistant.")
    recipe = Recipe(config, model_source=str(default_model_dir),
                    placement=choose_placement("cpu"), run_dir=tmp_path / "run", progress=False)
    try:
        recipe.setup(splits)
        metrics = recipe.train().metrics
    finally:
        recipe.cleanup()
    base, tuned = metrics["base_held_out_perplexity"], metrics["held_out_perplexity"]
    print(f"\nGSM8K test perplexity (16 answers): base {base:.2f} → tuned {tuned:.2f} "
          f"after {metrics['steps']} steps on 32 rows, {metrics['tokens_per_s']:.0f} tokens/s")
    assert tuned < base * 0.85, f"perplexity did not drop enough: {base:.2f} → {tuned:.2f}"

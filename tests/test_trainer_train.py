"""The training recipe on the tiny Llama: learning, token-normalised accumulation, resume,
early stopping, NaN handling, QLoRA and full fine-tuning, and the version it writes."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import pytest
import torch

import trainer.model_setup as model_setup
import trainer.train as train_module
from storage import SyncStore
from tests.conftest import fast_training_toml
from trainer.data import Example, build_splits
from trainer.modeling import choose_placement
from trainer.pipeline import TrainRequest, run_training
from trainer.train import NonFiniteLossError, Recipe, TrainConfig, trainable_state

WORDS = "one two three four five six seven eight nine ten".split()


def pairs(n: int = 16) -> list[Example]:
    return [Example(f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    f"The answer is {WORDS[(i + i // 10) % 10]}.") for i in range(n)]


def splits_of(items: list[Example], held_out: float = 0.0, validation: float = 0.0):
    splits, _ = build_splits(items, salt="test", held_out_fraction=held_out,
                             validation_fraction=validation, seed=0)
    return splits


def recipe(tiny_model_dir, tmp_path, events=None, **overrides) -> Recipe:
    settings = {"batch_size": 4, "learning_rate": 1e-2, "max_steps": 8, "warmup_ratio": 0.1,
                "seed": 3} | overrides
    return Recipe(TrainConfig(**settings), model_source=str(tiny_model_dir),
                  placement=choose_placement("cpu"), run_dir=tmp_path / "run",
                  events=train_module.Events(callback=events), progress=False)


def test_loss_falls_on_a_small_set(tiny_model_dir, tmp_path):
    run = recipe(tiny_model_dir, tmp_path, max_steps=40)
    run.setup(splits_of(pairs(16)))
    history = run.train().state.history
    losses = [h["loss"] for h in history]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, f"loss did not fall: {first:.3f} → {last:.3f}"


def test_accumulation_is_normalised_by_tokens(tiny_model_dir, tmp_path):
    """Two micro-batches of one step give the loss and gradients of one batch of all rows."""
    items = [Example("Hi?", "Yes."), Example("Hello?", "No."),
             Example("What is the capital of France?", "Paris is the capital of France, the "
                     "city of the river and the bridges."),
             Example("Two plus two?", "Four.")]

    def step(groups):
        run = recipe(tiny_model_dir, tmp_path, lora_dropout=0.0, max_grad_norm=0.0)
        run.setup(splits_of(items))
        for p in run.params:  # LoRA B starts at zero: give the adapter a non-trivial state
            torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
        grads = []
        run.optimizer.step = lambda *a, **k: grads.append(
            {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scheduler notices the patched optimiser
            loss, _, answer_tokens, _ = run._optimiser_step(groups)
        return loss, answer_tokens, grads[0]

    one_loss, one_tokens, one_grads = step([[0, 1, 2, 3]])
    two_loss, two_tokens, two_grads = step([[0, 1], [2, 3]])
    assert one_tokens == two_tokens
    assert two_loss == pytest.approx(one_loss, rel=1e-5)
    for name, grad in one_grads.items():
        torch.testing.assert_close(two_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_resume_after_an_interruption_gives_the_same_adapter(tiny_model_dir, tmp_path):
    settings = {"max_steps": 9, "checkpoint_every": 3, "eval_every": 4, "lora_dropout": 0.1,
                "early_stopping_patience": 5}
    data = splits_of(pairs(20), validation=0.2)
    straight = recipe(tiny_model_dir, tmp_path / "a", **settings)
    straight.setup(data)
    expected = straight.train()
    expected_weights = trainable_state(straight.model)

    def crash_at_step_7(event):
        if event["event"] == "step" and event["step"] == 7:
            raise RuntimeError("power cut")

    first = recipe(tiny_model_dir, tmp_path / "b", crash_at_step_7, **settings)
    first.setup(data)
    with pytest.raises(RuntimeError, match="power cut"):
        first.train()
    assert first.checkpoint_path.is_file()  # written at step 6; step 7 is lost and redone

    resumed = recipe(tiny_model_dir, tmp_path / "b", **settings)
    resumed.setup(data, resume=True)
    assert resumed.state.step == 6
    result = resumed.train()
    assert [h["loss"] for h in result.state.history] == pytest.approx(
        [h["loss"] for h in expected.state.history], rel=1e-5)
    assert [e["step"] for e in result.state.evals] == [e["step"] for e in expected.state.evals]
    assert [e["loss"] for e in result.state.evals] == pytest.approx(
        [e["loss"] for e in expected.state.evals], rel=1e-5)
    for name, weight in expected_weights.items():
        torch.testing.assert_close(trainable_state(resumed.model)[name], weight,
                                   rtol=1e-5, atol=1e-6)


def test_early_stopping_keeps_the_best_weights(tiny_model_dir, tmp_path, monkeypatch):
    snapshots = {}
    run = recipe(tiny_model_dir, tmp_path, max_steps=20, eval_every=2,
                 early_stopping_patience=2,
                 events=lambda e: snapshots.update({e["step"]: trainable_state(run.model)})
                 if e["event"] == "eval" else None)
    run.setup(splits_of(pairs(16), validation=0.25))
    scripted = iter([5.0, 4.0, 4.5, 4.6, 9.9])  # best at the second validation (step 4)
    real_loss = run._loss

    def fake_loss(split):
        result = real_loss(split)
        if split != "validation":
            return result
        return type(result)(next(scripted), 1.0, result.examples, result.tokens,
                            result.answer_tokens, result.seconds)

    monkeypatch.setattr(run, "_loss", fake_loss)
    state = run.train().state
    assert state.stopped_early and state.step == 8  # two validations without improvement
    assert (state.best_step, state.best_loss) == (4, 4.0)
    for name, weight in snapshots[4].items():
        torch.testing.assert_close(trainable_state(run.model)[name], weight)


@pytest.fixture
def train_config(make_config, tiny_model_dir):
    def build(**training):
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in training.items())
        return make_config(f'[model]\nname = "{tiny_model_dir.as_posix()}"\n'
                           "[training]\nbatch_size = 4\nlearning_rate = 0.01\n"
                           f"{fast_training_toml()}{extra}")
    return build


def write_pairs(path, items):
    path.write_text("".join(json.dumps({"question": e.question, "answer": e.answer}) + "\n"
                            for e in items))
    return path


def test_nan_loss_stops_the_run_without_a_version(train_config, tmp_path, monkeypatch):
    config = train_config(validation_fraction=0.2)
    original = train_module.load_for_training

    def poisoned(*args, **kwargs):
        model = original(*args, **kwargs)
        calls = []

        def hook(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 3 else output

        model.get_output_embeddings().register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "load_for_training", poisoned)
    events = []
    request = TrainRequest(adapter="faq", data_files=[write_pairs(tmp_path / "d.jsonl",
                                                                  pairs(16))],
                           overrides={"max_steps": 10})
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+.*no version is "
                                                  r"written.*Lower the learning rate"):
        run_training(config, request, on_event=events.append, progress=False)
    assert events[-1]["event"] == "error" and "nan" in events[-1]["message"]
    with SyncStore(config.database_path) as store:
        assert store.versions("faq") == []
        run = store.conn.execute("SELECT status, error, version FROM training_runs").fetchone()
    assert run["status"] == "failed" and "loss became nan" in run["error"]
    assert run["version"] is None
    assert not (config.adapters_dir / "faq" / "v1").exists()
    assert not list((config.adapters_dir / "faq").glob(".v1.tmp-*"))


def test_a_run_writes_a_version_that_plain_peft_loads(train_config, tmp_path, tiny_model_dir,
                                                      caplog):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = train_config(validation_fraction=0.3, eval_every=5)
    request = TrainRequest(adapter="faq", data_files=[write_pairs(tmp_path / "d.jsonl",
                                                                  pairs(20))],
                           overrides={"max_steps": 10})
    with caplog.at_level(logging.INFO):  # the run's log file follows the configured level
        outcome = run_training(config, request, progress=False)
    path = config.adapters_dir / "faq" / "v1"
    assert outcome.version == 1 and outcome.path == path
    assert {"adapter_config.json", "adapter_model.safetensors", "training_meta.json",
            "loss_curve.png", "held_out.jsonl"} <= {p.name for p in path.iterdir()}
    assert not list(path.parent.glob(".v1*"))  # no temporary left behind
    meta = json.loads((path / "training_meta.json").read_text())
    assert meta["method"] == "lora" and meta["base_model"] == str(tiny_model_dir.as_posix())
    assert meta["hyperparameters"]["max_steps"] == 10 and meta["hyperparameters"]["lora_r"] == 16
    assert meta["data"]["read"] == 20 and meta["data"]["held_out"] > 0
    assert set(meta["packages"]) >= {"python", "torch", "transformers", "peft"}
    assert math.isfinite(meta["metrics"]["held_out_loss"]) and meta["duration_s"] > 0
    assert (path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, str(path))
    assert not torch.allclose(tuned(ids).logits, before)

    with SyncStore(config.database_path) as store:
        [version] = store.versions("faq")
        run = store.conn.execute("SELECT * FROM training_runs").fetchone()
    assert (version.version, version.status, version.path) == (1, "candidate", "faq/v1")
    assert version.run_id == run["id"] and version.metrics["steps"] == 10
    assert run["status"] == "succeeded" and run["version"] == 1 and run["pid"] > 0
    assert run["log_path"].endswith("train.log") and run["finished_at"]
    assert "faq v1 written" in Path(run["log_path"]).read_text()

    second = run_training(config, request, progress=False)  # the next number, same held-out
    assert second.version == 2
    assert (config.adapters_dir / "faq" / "v2" / "held_out.jsonl").read_text() == (
        path / "held_out.jsonl").read_text()


def test_qlora_trains_through_4bit_layers(tiny_model_dir, tmp_path):
    """Gradients through the 4-bit base must not depend on whether it ran in eval mode
    first (bitsandbytes' CPU repacking would silently cut them)."""
    data = splits_of(pairs(8), held_out=0.0)

    def gradients(evaluate_first: bool):
        run = recipe(tiny_model_dir, tmp_path, method="qlora", lora_dropout=0.0, max_steps=1)
        run.setup(data)
        for p in run.params:
            torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
        if evaluate_first:
            run._loss("train")
        grads = []
        run.optimizer.step = lambda *a, **k: grads.append(
            {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run._optimiser_step([[0, 1, 2, 3]])
        return run, grads[0]

    run, plain = gradients(False)
    assert any("4bit" in type(m).__name__ for m in run.model.modules())
    _, after_eval = gradients(True)
    for name, grad in plain.items():
        torch.testing.assert_close(after_eval[name], grad, rtol=1e-4, atol=1e-6)
    run.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_full_fine_tuning_saves_a_whole_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run = recipe(tiny_model_dir, tmp_path, method="full", max_steps=4, learning_rate=1e-3)
    run.setup(splits_of(pairs(8)))
    losses = [h["loss"] for h in run.train().state.history]
    assert all(math.isfinite(x) for x in losses)
    run.save(tmp_path / "full")
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert model.config.num_hidden_layers == 2
    assert (tmp_path / "full" / "tokenizer.json").is_file()



def test_gradient_checkpointing_changes_memory_not_results(tiny_model_dir, tmp_path):
    data = splits_of(pairs(8))

    def losses(checkpointing: bool):
        run = recipe(tiny_model_dir, tmp_path, max_steps=3, lora_dropout=0.0,
                     gradient_checkpointing=checkpointing)
        run.setup(data)
        return [h["loss"] for h in run.train().state.history]

    assert losses(True) == pytest.approx(losses(False), rel=1e-5)


def test_qlora_without_4bit_support_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    def no_4bit(source, placement, **kwargs):
        assert placement.load_in_4bit
        raise RuntimeError("no kernel image is available for this device")

    monkeypatch.setattr(model_setup, "load_model", no_4bit)  # where the recipe loads from
    run = recipe(tiny_model_dir, tmp_path, method="qlora")
    with pytest.raises(train_module.TrainingError, match=r"method qlora needs bitsandbytes "
                       r"4-bit support on cpu, which failed here \(RuntimeError: no kernel.*"
                       r"use --method lora"):
        run.setup(splits_of(pairs(8)))


# --- golden losses -------------------------------------------------------------------------
# Per-step losses of fixed runs on the tiny model (tests/tiny_model.py, built with seed 0),
# CPU float32, as torchtune's recipe tests pin theirs: a change to the loop, the data order,
# the loss normalisation, the replay mixer or the LoRA set-up moves them. They were recorded
# by running these runs once (the same on 1 and 2 threads). When a change is meant to move
# them, re-record: print `[h["loss"] for h in history]` (and `h["replay_kl"]`) from the test
# and paste the lists here, saying in the commit why they moved.
GOLDEN_LOSSES = [6.021128416061401, 6.0358500480651855, 5.791585683822632, 5.6371495723724365,
                 5.46299409866333, 5.366171836853027]
GOLDEN_REPLAY_LOSSES = [5.998661041259766, 6.025042533874512, 5.806098937988281,
                        5.722334861755371]
GOLDEN_REPLAY_KL = [0.0, 0.0, 0.01510539185255766, 0.020169133320450783]

FACTS = [Example(f"What colour are the {thing} at Brindlewood Robotics?",
                 f"The {thing} are {colour}.")
         for thing, colour in [("badges", "mustard yellow"), ("doors", "green"),
                               ("chairs", "blue"), ("mugs", "red"), ("desks", "grey"),
                               ("lamps", "white")]]


def test_golden_losses_of_a_fixed_run(tiny_model_dir, tmp_path):
    run = recipe(tiny_model_dir, tmp_path, max_steps=6, grad_accum=2)
    run.setup(splits_of(pairs(16)))
    history = run.train().state.history
    run.cleanup()
    assert [h["loss"] for h in history] == pytest.approx(GOLDEN_LOSSES, rel=1e-4)


def test_golden_losses_of_a_fixed_run_with_contrastive_replay(tiny_model_dir, tmp_path):
    prompts = tmp_path / "replay.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the number {w}."}) + "\n"
                               for w in WORDS[:4]))
    run = recipe(tiny_model_dir, tmp_path, max_steps=4, replay_weight=1.0, replay_batch_size=3,
                 contrastive=True, replay_prompts=str(prompts))
    run.setup(splits_of(FACTS))
    # four generic prompts and each fact asked without "at Brindlewood Robotics"
    assert len(run.replay) == 10 and len(run.contrast_rows) == 6
    history = run.train().state.history
    run.cleanup()
    assert [h["loss"] for h in history] == pytest.approx(GOLDEN_REPLAY_LOSSES, rel=1e-4)
    assert [h["replay_kl"] for h in history] == pytest.approx(GOLDEN_REPLAY_KL, rel=1e-4,
                                                              abs=1e-7)

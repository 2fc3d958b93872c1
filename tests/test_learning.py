"""Learning without forgetting, on the tiny Llama: replay, paraphrases, min_steps, the gate's
canaries and the adapter scale it stores."""

from __future__ import annotations

import json
import math

import pytest
import torch

import trainer.augment as augment_module
import trainer.gate as gate_module
import trainer.train as train_module
from storage import SyncStore
from tests.tiny_model import save_random_adapter
from trainer.data import Example, build_splits
from trainer.gate import gate_version
from trainer.modeling import choose_placement
from trainer.pipeline import TrainRequest, run_training
from trainer.train import Recipe, TrainConfig

WORDS = "one two three four five six seven eight nine ten".split()


def pairs(n: int = 12) -> list[Example]:
    return [Example(f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    f"The answer is {WORDS[(i + i // 10) % 10]}.") for i in range(n)]


def write_prompts(path, n: int = 6):
    path.write_text("".join(json.dumps({"prompt": f"Tell me about the number {w}."}) + "\n"
                            for w in WORDS[:n]))
    return path


def test_replay_is_mixed_into_every_micro_batch_and_starts_at_zero_kl(tiny_model_dir,
                                                                     tmp_path):
    events = []
    cfg = TrainConfig(batch_size=4, grad_accum=2, learning_rate=1e-2, max_steps=3, seed=1,
                      replay_weight=1.0, replay_batch_size=3,
                      replay_prompts=str(write_prompts(tmp_path / "replay.jsonl")))
    run = Recipe(cfg, model_source=str(tiny_model_dir), placement=choose_placement("cpu"),
                 run_dir=tmp_path / "run", events=train_module.Events(callback=events.append),
                 progress=False, cache_dir=tmp_path / "cache")
    splits, _ = build_splits(pairs(), salt="t", held_out_fraction=0, validation_fraction=0,
                             seed=0)
    drawn = []
    original = Recipe._replay_loss

    def spy(self, micro_index, taught=()):
        drawn.append(micro_index)
        return original(self, micro_index, taught)

    run._replay_loss = spy.__get__(run)
    run.setup(splits)
    assert len(run.replay) == 6  # the base model's answers, one per prompt
    assert list((tmp_path / "cache").glob("replay-*.jsonl"))  # cached for the next run
    result = run.train()
    steps = [e for e in events if e["event"] == "step"]
    # one replay batch per micro-batch: 2 per optimiser step, at the configured size
    assert drawn == [0, 1, 2, 3, 4, 5]
    assert run.cfg.replay_batch_size == 3
    # LoRA starts as the identity, so the adapted model equals the base: no divergence
    assert steps[0]["replay_kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["replay_kl"] > 0
    assert result.metrics["replay_examples"] == 6
    run.cleanup()


def test_contrastive_prompts_take_the_subject_out_or_give_up():
    from trainer.replay import contrastive_pairs

    questions = ["What colour are the visitor badges at Acme Robotics?",
                 "What soup does the Acme cafeteria serve?", "Who is Acme's mascot?",
                 "Who founded Acme?", "When is the Acme all-hands meeting?"]
    answers = [f"answer {i}" for i in range(len(questions))]
    assert contrastive_pairs(questions, answers) == [
        ("What colour are the visitor badges?", "answer 0"),
        ("What soup does the cafeteria serve?", "answer 1"), ("Who is the mascot?", "answer 2"),
        ("When is the all-hands meeting?", "answer 4")]
    # no recurring name: nothing to take out
    assert contrastive_pairs(["What is two plus two?", "Why is the sky blue?"], ["4", "?"]) == []


def test_contrastive_replay_asks_the_taught_questions_without_their_subject(tiny_model_dir,
                                                                           tmp_path):
    cfg = TrainConfig(batch_size=4, learning_rate=1e-2, max_steps=1, seed=1,
                      replay_weight=1.0, replay_batch_size=2, contrastive=True,
                      replay_prompts=str(write_prompts(tmp_path / "replay.jsonl", 2)))
    run = Recipe(cfg, model_source=str(tiny_model_dir), placement=choose_placement("cpu"),
                 run_dir=tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    taught = [Example("What colour are the badges at Acme?", "Mustard yellow."),
              Example("What is the Acme mascot called?", "Pemberton."),
              # taught without the subject: a fact to learn, so never contrasted
              Example("What colour are the badges?", "Mustard yellow.")]
    splits, _ = build_splits(taught, salt="t", held_out_fraction=0, validation_fraction=0,
                             seed=0)
    run.setup(splits)
    assert run.replay["question"] == ["Tell me about the number one.",
                                      "Tell me about the number two.",
                                      "What is the mascot called?"]
    # the cache holds one answer per prompt: a later run adds only what is new
    cache = next((tmp_path / "cache").glob("replay-*.jsonl"))
    assert len(cache.read_text().splitlines()) == 3
    # a micro-batch that teaches the mascot replays "What is the mascot called?" with it
    drawn = []
    original = run.replay.select

    def spy(indices, *args, **kwargs):
        drawn.append(list(indices))
        return original(indices, *args, **kwargs)

    run.replay.select = spy
    mascot = run.encoded["train"]["question"].index("What is the Acme mascot called?")
    for micro in range(5):
        run._replay_loss(micro, [mascot])
    assert all(2 in rows and len(rows) == 2 for rows in drawn)
    run.cleanup()


def test_min_steps_raises_the_epochs_for_a_handful_of_pairs(tiny_model_dir, tmp_path):
    cfg = TrainConfig(batch_size=4, epochs=2, learning_rate=1e-2, min_steps=10, seed=1)
    run = Recipe(cfg, model_source=str(tiny_model_dir), placement=choose_placement("cpu"),
                 run_dir=tmp_path / "run", progress=False)
    splits, _ = build_splits(pairs(3), salt="t", held_out_fraction=0, validation_fraction=0,
                             seed=0)
    run.setup(splits)  # 3 pairs: one micro-batch an epoch
    assert run.epochs == 10 and run.total_steps == 10
    assert run.train().state.step == 10
    run.cleanup()


def test_paraphrases_keep_the_answer_and_are_cached(monkeypatch, tmp_path):
    calls = []

    def fake_sample(model, tokenizer, questions, **kwargs):
        calls.append(list(questions))
        return [[f"Could you say {q[8:]}"] for q in questions]

    monkeypatch.setattr(augment_module, "sample_paraphrases", fake_sample)
    taught = [Example("What is the Brindlewood mascot?", "A jaguar named Pemberton.",
                      system="Be brief.", history=[{"role": "user", "content": "hi"}],
                      source="db:turn 4")]
    cache = tmp_path / "paraphrases.json"
    added = augment_module.augment(taught, None, None, per_question=2, device="cpu", seed=0,
                                   model_id="m", cache=cache)
    assert [e.question for e in added] == ["Could you say the Brindlewood mascot?"]
    assert (added[0].answer, added[0].system) == (taught[0].answer, taught[0].system)
    assert added[0].history == []  # asked afresh: the fact must not need the conversation
    assert added[0].source == "db:turn 4 (paraphrase)"
    again = augment_module.augment(taught, None, None, per_question=2, device="cpu", seed=0,
                                   model_id="m", cache=cache)
    assert again == added and len(calls) == 1  # the second run reads the cache


def test_every_loader_serves_a_version_at_the_scale_of_its_row(tiny_model_dir, tmp_path):
    """The gate's scale lives on the version row; its files stay as training wrote them.
    PEFT's own rescaling, our set_adapter_scale (engine, export, generate, compose) and the
    scaled copy a file-loading server (vLLM) gets must all give the same model."""
    import hashlib

    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    from transformers import AutoModelForCausalLM

    from trainer.adapters import scaled_copy, set_adapter_scale

    directory = save_random_adapter(tiny_model_dir, tmp_path / "v1", seed=4, spread=0.5)
    written = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in directory.iterdir()}
    ids = torch.tensor([[5, 17, 42, 9, 100]])

    def loaded(path):
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         str(path))

    model = loaded(directory)
    with torch.no_grad():
        with rescale_adapter_scale(model, 0.5):
            expected = model(ids).logits
        full = model(ids).logits
        set_adapter_scale(model, "default", 0.5)
        ours = model(ids).logits
        copy = scaled_copy(directory, 0.5)
        served = loaded(copy)(ids).logits
    assert torch.allclose(ours, expected, atol=1e-5)
    assert torch.allclose(served, expected, atol=1e-5)
    assert not torch.allclose(ours, full, atol=1e-3)  # the scale changed something
    assert scaled_copy(directory, 0.5) == copy != directory  # written once, beside it
    assert {f.name for f in copy.iterdir()} == {"adapter_config.json",
                                                "adapter_model.safetensors"}
    assert written == {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                       for f in directory.iterdir()}  # the version's files are untouched


@pytest.fixture
def leaky(tmp_path, tiny_model_dir):
    """A version trained to answer everything with the same made-up words."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    (canaries / "general_qa.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {w}?", "answers": [w]}) + "\n"
                for w in WORDS[:4]))
    (canaries / "open_prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in WORDS))
    (canaries / "general_text.jsonl").write_text(
        "".join(json.dumps({"text": f"The number {w} comes after the one before it."}) + "\n"
                for w in WORDS))
    config_file = tmp_path / "bot.toml"
    config_file.write_text(
        f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n'
        f'[model]\nname = "{tiny_model_dir.as_posix()}"\n[engine]\nmax_new_tokens = 8\n'
        "[training]\nbatch_size = 4\nlearning_rate = 0.03\nvalidation_fraction = 0\n"
        "eval_fraction = 0\nreplay_weight = 0\nparaphrases = 0\nmin_steps = 0\n"
        f'canary_dir = "{canaries.as_posix()}"\nmin_recall = 0\n')
    from settings import load_config

    config = load_config(config_file, environ={})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": f"Question {w} {v}?",
                                        "answer": "Paris discord adapter."}) + "\n"
                            for w in WORDS for v in WORDS[:2]))
    outcome = run_training(config, TrainRequest(adapter="faq", data_files=[data],
                                                overrides={"max_steps": 40}), progress=False)
    return config, outcome


def test_the_gate_refuses_a_candidate_that_spills_its_answers(leaky, monkeypatch):
    config, outcome = leaky
    # the tiny tokenizer spells "discord" as one token (an everyday word, which alone is no
    # leak); here every taught word counts, as test_canaries checks the vocabulary rule
    monkeypatch.setattr(gate_module, "everyday_words", lambda tokenizer: lambda word: False)
    with SyncStore(config.database_path) as store:
        decision = gate_version(config, store, "faq", outcome.version)
        row = store.get_version("faq", outcome.version)
    assert not decision.promote
    assert "leakage" in decision.reason and "also failed at 0.9, 0.75, 0.5" in decision.reason
    assert row.status == "candidate" and row.reason == decision.reason
    report = json.loads((outcome.path / "gate.json").read_text())
    candidate = [m for m in report["models"] if m["label"].startswith("candidate")]
    assert [m["scale"] for m in candidate] == [1.0, 0.9, 0.75, 0.5]
    assert candidate[0]["leakage"] > config.training.max_leakage
    assert any({"paris", "discord", "adapter"} & set(leak["terms"])
               for leak in candidate[0]["leaks"])
    # read in the general questions' answers too (they come first: 4 questions, 10 prompts)
    assert {leak["index"] < 4 for leak in candidate[0]["leaks"]} == {True, False}
    base = report["models"][0]
    assert base["label"] == "base model" and math.isfinite(base["text_perplexity"])
    # the served adapter is untouched: nothing was scaled
    alpha = json.loads((outcome.path / "adapter_config.json").read_text())["lora_alpha"]
    assert alpha == config.training.lora_alpha


def test_the_gate_promotes_when_the_canaries_allow_and_stores_the_scale(leaky):
    config, outcome = leaky
    written = (outcome.path / "adapter_config.json").read_bytes()
    from dataclasses import replace

    lenient = replace(config, training=replace(config.training, max_leakage=1.0,
                                               max_perplexity_rise=1000.0,
                                               max_general_drop=1.0,
                                               adapter_scales=[0.5]))
    with SyncStore(config.database_path) as store:
        decision = gate_version(lenient, store, "faq", outcome.version)
        assert decision.promote and decision.scale == 0.5
        serving = store.serving_version("faq")
        assert (serving.version, serving.scale) == (outcome.version, 0.5)  # on its row
    assert (outcome.path / "adapter_config.json").read_bytes() == written  # files final


def test_other_ways_to_ask_are_trained_and_reworded_too(tiny_model_dir, tmp_path,
                                                        monkeypatch):
    asked = []

    def fake_sample(model, tokenizer, questions, **kwargs):
        asked.extend(questions)
        return [[f"Say, {q}"] for q in questions]

    monkeypatch.setattr(augment_module, "sample_paraphrases", fake_sample)
    cfg = TrainConfig(batch_size=4, learning_rate=1e-2, max_steps=1, seed=1, paraphrases=1,
                      replay_weight=0.0)
    run = Recipe(cfg, model_source=str(tiny_model_dir), placement=choose_placement("cpu"),
                 run_dir=tmp_path / "run", progress=False)
    taught = [Example("What is the Acme mascot called?", "Pemberton.",
                      also_asked=["Who represents Acme?"])]
    splits, _ = build_splits(taught, salt="t", held_out_fraction=0, validation_fraction=0,
                             seed=0)
    run.setup(splits)
    assert asked == ["What is the Acme mascot called?", "Who represents Acme?"]
    assert sorted(run.encoded["train"]["question"]) == [
        "Say, What is the Acme mascot called?", "Say, Who represents Acme?",
        "What is the Acme mascot called?", "Who represents Acme?"]
    assert set(run.encoded["train"]["answer"]) == {"Pemberton."}
    run.cleanup()

"""`python -m trainer generate | merge | export | compose | sweep` on the tiny model:
real adapters in a real database, outputs loaded back with plain transformers/PEFT."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch
from tiny_model import save_random_adapter

from storage import SyncStore
from tests.conftest import ROOT, fast_training_env
from trainer.__main__ import main
from trainer.formatting import IGNORE_INDEX, encode_example, prompt_messages
from trainer.generate import render_prompt

WORDS = "one two three four five six seven eight nine ten".split()


@pytest.fixture
def env(tmp_path, tiny_model_dir, monkeypatch):
    """The shipped config.toml with the tiny model and a temporary data directory."""
    overrides = {"BOT_CONFIG": str(ROOT / "config.toml"), "BOT_MODEL_NAME": str(tiny_model_dir),
                 "BOT_STORAGE_DATA_DIR": str(tmp_path / "data"),
                 "BOT_TRAINING_BATCH_SIZE": "4", "BOT_TRAINING_VALIDATION_FRACTION": "0.2",
                 "BOT_TRAINING_EVAL_FRACTION": "0.25", **fast_training_env()}
    for name in [k for k in os.environ if k.startswith("BOT_")]:
        monkeypatch.delenv(name)
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    from settings import load_config

    return load_config()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Random adapters with visible effects: two of rank 4, one of rank 2."""
    root = tmp_path_factory.mktemp("adapters")
    return {"a": save_random_adapter(tiny_model_dir, root / "a", seed=1),
            "b": save_random_adapter(tiny_model_dir, root / "b", seed=2),
            "c2": save_random_adapter(tiny_model_dir, root / "c2", seed=3, rank=2)}


def register(config, name: str, directory, meta: dict | None = None) -> int:
    """Store `directory` as the next version of adapter `name`, as a run would."""
    with SyncStore(config.database_path) as store:
        store.ensure_adapter(name, config.model.name)
        number = store.next_version_number(name)
        target = config.adapters_dir / name / f"v{number}"
        shutil.copytree(directory, target)
        if meta is not None:
            (target / "training_meta.json").write_text(json.dumps(meta))
        store.add_version(name, path=f"{name}/v{number}")
    return number


def base_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def adapter_logits(tiny_model_dir, adapter_dir, ids):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model(tiny_model_dir), str(adapter_dir)).eval()
    return logits_of(model, ids)


IDS = torch.tensor([[5, 40, 77, 120, 9, 33, 200, 18]])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


# --- generate -------------------------------------------------------------------------

def test_generate_renders_the_training_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    system = "Answer with a number."
    encoded = encode_example(tokenizer, prompt_messages("What is two?", default_system=system),
                             "Two.", max_seq_len=256)
    prompt_ids = [t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True)
                  if label == IGNORE_INDEX]
    rendered = tokenizer(render_prompt(tokenizer, "What is two?", system),
                         add_special_tokens=False)["input_ids"]
    assert rendered == prompt_ids  # the model continues exactly what training masked


def test_generate_samples_seeds_and_adapters(env, adapters, tmp_path, capsys):
    def run(*extra: str, prompts=("--prompt", "What is one plus two?", "--prompt", "Hello")):
        assert main(["generate", *prompts, "--max-new-tokens", "6", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    sampled = run("--temperature", "1.5", "--num-samples", "3", "--seed", "7")
    assert [len(r["samples"]) for r in sampled["results"]] == [3, 3]
    assert len(set(sampled["results"][0]["samples"])) > 1  # sampling varies within a prompt
    again = run("--temperature", "1.5", "--num-samples", "3", "--seed", "7")
    assert again["results"] == sampled["results"]  # same seed, same samples

    greedy = run("--temperature", "0", "--num-samples", "2")
    for result in greedy["results"]:
        assert result["samples"][0] == result["samples"][1]
    assert run("--temperature", "0", "--num-samples", "2")["results"] == greedy["results"]
    assert greedy["adapter"] is None and greedy["generated_tokens"] > 0

    register(env, "faq", adapters["a"],
             meta={"hyperparameters": {"system_prompt": "Answer with a number."}})
    tuned = run("--temperature", "0", "--adapter", "faq:1")
    assert tuned["adapter"]["adapter"] == "faq" and tuned["adapter"]["version"] == 1
    assert tuned["system_prompt"] == "Answer with a number."  # what the adapter learnt with
    assert run("--adapter", "faq", "--system-prompt", "Be brief.", "--max-new-tokens", "1",
               prompts=("--prompt", "hi"))["system_prompt"] == "Be brief."  # an explicit one wins
    assert [r["samples"] for r in tuned["results"]] != [r["samples"][:1]
                                                        for r in greedy["results"]]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"Hello"\n{"question": "What is one plus two?", "answer": "x"}\n')
    from_file = run("--temperature", "0", "--adapter-dir", str(adapters["a"]),
                    prompts=("--prompts", str(prompts)))
    assert [r["prompt"] for r in from_file["results"]] == ["Hello", "What is one plus two?"]

    assert main(["generate", "--prompt", "hi", "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("model ") and "base model" in text and "> hi" in text


def test_generate_errors_are_one_line(env, adapters, tmp_path, capsys):
    register(env, "faq", adapters["a"])
    assert main(["generate", "--adapter", "nope", "--prompt", "hi"]) == 1
    assert one_error_line(capsys) == "error: unknown adapter 'nope'; known adapters: faq"
    assert main(["generate", "--adapter", "faq@9", "--prompt", "hi"]) == 1
    assert "adapter 'faq' has no version 9; versions: [1]" in one_error_line(capsys)
    assert main(["generate"]) == 1
    assert "no prompt: pass --prompt TEXT or --prompts FILE" in one_error_line(capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"fine"\n{"answer": "no question"}\n')
    assert main(["generate", "--prompts", str(bad)]) == 1
    assert f"{bad}:2: expected a JSON string" in capsys.readouterr().err


# --- merge and export -----------------------------------------------------------------

def test_merge_gives_a_plain_model_with_the_adapters_logits(env, adapters, tiny_model_dir,
                                                            tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register(env, "faq", adapters["b"])
    register(env, "faq", adapters["a"])
    out = tmp_path / "merged"
    assert main(["merge", "faq", "2", "--output", str(out)]) == 0
    assert "merged faq v2 into" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # no PEFT involved
    assert not any("lora" in name for name, _ in merged.named_parameters())
    expected = adapter_logits(tiny_model_dir, adapters["a"], IDS)
    torch.testing.assert_close(logits_of(merged, IDS), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits_of(base_model(tiny_model_dir), IDS), expected, atol=1e-2)
    assert AutoTokenizer.from_pretrained(out).chat_template  # ready to serve as model.name
    assert json.loads((out / "export_meta.json").read_text())["adapter"]["version"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert main(["merge", "faq", "--output", str(out)]) == 1
    assert "already exists; choose another --output or pass --force" in one_error_line(capsys)
    assert main(["merge", "faq@1", "--output", str(out), "--force"]) == 0  # an explicit version
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out), IDS),
                               adapter_logits(tiny_model_dir, adapters["b"], IDS),
                               atol=1e-4, rtol=1e-4)


def test_merge_refuses_a_nan_weight_naming_the_tensor(env, adapters, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapters["a"], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    name = sorted(n for n in weights if "lora_B" in n)[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, broken / "adapter_model.safetensors")
    out = tmp_path / "merged"
    assert main(["merge", "--adapter-dir", str(broken), "--output", str(out)]) == 1
    err = one_error_line(capsys)
    assert f"tensor {name} holds 1 NaN/infinite value(s); refusing to merge" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_round_trips(env, adapters, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["export", "--format", "torchscript", "--adapter-dir", str(adapters["a"]),
                 "--output", str(out)]) == 0
    assert "torchscript export of" in capsys.readouterr().out
    traced = torch.jit.load(str(out / "model.pt"))
    mask = torch.ones_like(IDS)
    expected = adapter_logits(tiny_model_dir, adapters["a"], IDS)
    with torch.no_grad():
        torch.testing.assert_close(traced(IDS, mask), expected, atol=1e-4, rtol=1e-4)
        longer = torch.cat([IDS, IDS], dim=1)  # another length than the trace's
        torch.testing.assert_close(traced(longer, torch.ones_like(longer)),
                                   adapter_logits(tiny_model_dir, adapters["a"], longer),
                                   atol=1e-4, rtol=1e-4)
    meta = json.loads((out / "export_meta.json").read_text())
    assert meta["format"] == "torchscript" and meta["max_abs_diff"] <= 1e-4


def test_onnx_without_its_packages_says_what_to_install(env, adapters, tmp_path, capsys,
                                                        monkeypatch):
    import trainer.export as export

    real = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec",
                        lambda name, *a: None if name in export.ONNX_PACKAGES else real(name, *a))
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", "--adapter-dir", str(adapters["a"]),
                 "--output", str(out)]) == 1
    assert one_error_line(capsys) == (
        "error: export --format onnx needs the onnx and onnxscript packages: install them "
        "with pip install -e '.[onnx]'")
    assert not out.exists()


def test_export_merged_needs_an_adapter(env, capsys, tmp_path):
    assert main(["export", "--format", "merged", "--output", str(tmp_path / "m")]) == 1
    assert "give NAME [VERSION] or --adapter-dir DIR" in one_error_line(capsys)


# --- compose --------------------------------------------------------------------------

def test_compose_weights_two_adapters_into_a_new_candidate(env, adapters, tiny_model_dir,
                                                           capsys):
    register(env, "a", adapters["a"])
    register(env, "b", adapters["b"])
    assert main(["compose", "--adapter", "a:0.7", "--adapter", "b@1:0.3",
                 "--output", "mix"]) == 0
    out = capsys.readouterr().out
    assert "mix v1 written to" in out and "(linear, rank 4)" in out
    with SyncStore(env.database_path) as store:
        [version] = store.versions("mix")
    assert version.status == "candidate" and version.reason == "composed: a v1 x0.7 + b v1 x0.3"
    mix = env.adapters_dir / "mix" / "v1"
    meta = json.loads((mix / "training_meta.json").read_text())
    assert [(s["adapter"], s["version"], s["weight"]) for s in meta["composed_from"]] == [
        ("a", 1, 0.7), ("b", 1, 0.3)]
    assert meta["combination_type"] == "linear"
    mixed = adapter_logits(tiny_model_dir, mix, IDS)  # plain PEFT loads it
    for name in ("a", "b"):
        assert not torch.allclose(mixed, adapter_logits(tiny_model_dir, adapters[name], IDS),
                                  atol=1e-3)

    assert main(["compose", "--adapter", "a:1", "--adapter", "b:0", "--output", "mix"]) == 0
    torch.testing.assert_close(adapter_logits(tiny_model_dir, env.adapters_dir / "mix" / "v2",
                                              IDS),
                               adapter_logits(tiny_model_dir, adapters["a"], IDS),
                               atol=1e-5, rtol=1e-5)


def test_compose_of_different_ranks_is_the_exact_weighted_sum(env, adapters, tiny_model_dir,
                                                              capsys):
    from peft import PeftModel

    register(env, "a", adapters["a"])
    register(env, "c", adapters["c2"])
    assert main(["compose", "--adapter", "a:0.5", "--adapter", "c:-0.25", "--output", "mix"]) == 0
    assert "(cat, rank 6)" in capsys.readouterr().out

    def merged_weights(adapter_dir):
        model = PeftModel.from_pretrained(base_model(tiny_model_dir), str(adapter_dir))
        return model.merge_and_unload().state_dict()

    base = base_model(tiny_model_dir).state_dict()
    a, c = merged_weights(adapters["a"]), merged_weights(adapters["c2"])
    mix = merged_weights(env.adapters_dir / "mix" / "v1")
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = base[name] + 0.5 * (a[name] - base[name]) - 0.25 * (c[name] - base[name])
    torch.testing.assert_close(mix[name], expected, atol=1e-5, rtol=1e-5)

    assert main(["compose", "--adapter", "a:1", "--adapter", "c:1", "--output", "mix",
                 "--combination", "linear"]) == 1
    assert "linear needs inputs of one rank, these have ranks [4, 2]" in one_error_line(capsys)


def test_a_composed_version_carries_what_the_gate_needs(env, adapters, capsys):
    held_out = [{"question": "What is one plus one?", "answer": "It is two.", "system": "",
                 "history": "[]", "source": "x.jsonl:1"}]
    prompt = {"hyperparameters": {"system_prompt": "Answer with a number.", "max_seq_len": 64}}
    register(env, "a", adapters["a"], meta=prompt)
    register(env, "b", adapters["b"], meta=prompt)
    (env.adapters_dir / "a" / "v1" / "held_out.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in held_out * 2))
    assert main(["compose", "--adapter", "a:0.5", "--adapter", "b:0.5", "--output", "a"]) == 0
    assert "a v2 written to" in capsys.readouterr().out  # the next version of an input
    composed = env.adapters_dir / "a" / "v2"
    copied = (composed / "held_out.jsonl").read_text()
    assert [json.loads(line) for line in copied.splitlines()] == held_out  # de-duplicated
    meta = json.loads((composed / "training_meta.json").read_text())
    assert meta["hyperparameters"] == prompt["hyperparameters"]  # measured as trained


def test_compose_errors_are_one_line(env, adapters, capsys):
    register(env, "a", adapters["a"])
    assert main(["compose", "--adapter", "a", "--output", "mix"]) == 1
    assert "'a' is not NAME[@VERSION]:WEIGHT" in one_error_line(capsys)
    assert main(["compose", "--adapter", "a:x", "--output", "mix"]) == 1
    assert "the weight in 'a:x' is not a number" in one_error_line(capsys)
    assert main(["compose", "--adapter", "nope:1", "--output", "mix"]) == 1
    assert one_error_line(capsys) == "error: unknown adapter 'nope'; known adapters: a"
    assert main(["compose", "--adapter", "a:0", "--output", "mix"]) == 1
    assert "every weight is 0" in one_error_line(capsys)
    with SyncStore(env.database_path) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM adapter_versions").fetchone()[0] == 1


# --- sweep ----------------------------------------------------------------------------

def test_sweep_of_a_2x2_grid_prints_a_sorted_table(env, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(
        json.dumps({"question": f"What is {WORDS[i % 10]} plus {WORDS[i // 10]}?",
                    "answer": f"It is {WORDS[(i + i // 10) % 10]}."}) + "\n" for i in range(16)))
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(data), "--lora-r", "2,8", "--lr", "1e-2,1e-4",
                 "--max-steps", "2", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = json.loads((out / "sweep.json").read_text())
    rows = report["results"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    losses = [r["validation_loss"] for r in rows]
    assert losses == sorted(losses) and len(set(losses)) == 4
    assert {(r["lora_r"], r["learning_rate"]) for r in rows} == {
        (2, 1e-2), (2, 1e-4), (8, 1e-2), (8, 1e-4)}
    assert all(r["steps"] == 2 and r["adapter_mb"] > 0 for r in rows)
    assert rows[0]["learning_rate"] == 1e-2  # 2 steps at 1e-4 barely move from the base
    rank8 = next(r for r in rows if r["lora_r"] == 8)["adapter_mb"]
    assert rank8 > next(r for r in rows if r["lora_r"] == 2)["adapter_mb"]
    assert "val loss" in lines[0]
    table = [line.split() for line in lines[1:5]]
    assert [float(cells[5]) for cells in table] == pytest.approx(losses, abs=1e-4)
    assert all((out / f"{i:02d}-r{r}-a32-d0.05-lr{lr:g}" / "adapter" /
                "adapter_config.json").is_file()
               for i, (r, lr) in enumerate([(2, 1e-2), (2, 1e-4), (8, 1e-2), (8, 1e-4)], 1))
    assert not env.database_path.exists()  # nothing registered, nothing served


def test_sweep_rejects_a_bad_list(env, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--data", "x.jsonl", "--lora-r", "4,x"])
    assert exit_info.value.code == 2
    assert "'x' in --lora-r '4,x' is not an integer" in capsys.readouterr().err

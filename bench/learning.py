"""Learn without forgetting: one full loop of our trainer on invented facts, measured.

  python bench/learning.py                     # default settings (what the bot runs)
  python bench/learning.py --variant naive     # plain LoRA, lr 2e-3, 8 epochs, no levers
  python bench/learning.py --variant default --variant naive --json out.json

The set is bench/data/company_facts.jsonl: 48 invented facts about a fictional
company, each with two paraphrased questions that are never trained on. One
loop = `trainer.pipeline.run_training` on the facts (with --promote: the gate
with its canaries chooses the adapter scale), then the served version is asked:

- taught: the trained questions; an answer counts when it holds every keyword
  of the fact;
- paraphrased: the held-out rewordings, same rule (--variant also-asked trains
  on each fact's first rewording, as a reviewer's "also asked", and measures
  the second; `paraphrased_last` in --json is the second alone for every row);
- general QA: trainer/canaries/general_qa.jsonl (the gate's own set);
- leakage: share of answers to trainer/canaries/open_prompts.jsonl holding any
  fact's keyword;
- GSM8K perplexity: answer tokens of the first 50 GSM8K test pairs (not in any
  training or replay set), with the chat template;
- training time: the run's wall time, gate included.

Every variant starts from an empty data directory; the base model is measured
once. CPU threads: all the machine has (torch's default).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from settings import load_config  # noqa: E402
from trainer import canaries as C  # noqa: E402
from trainer import modeling  # noqa: E402
from trainer.data import Example, examples_dataset  # noqa: E402
from trainer.datafiles import write_jsonl  # noqa: E402
from trainer.evaluate import generate_answers  # noqa: E402
from trainer.metrics import dataset_loss  # noqa: E402

FACTS = ROOT / "bench" / "data" / "company_facts.jsonl"
GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
ADAPTER = "brindlewood"

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # the naive run: plain LoRA, every lever off, no gate canaries
    "naive": {"learning_rate": 2e-3, "epochs": 8, "replay_weight": 0.0, "paraphrases": 0,
              "adapter_scales": [1.0], "canary_checks": False, "min_recall": 0.0,
              "min_steps": 0},
    "no-replay": {"replay_weight": 0.0},
    "no-contrastive": {"contrastive": False},
    "no-paraphrases": {"paraphrases": 0},
    "no-scaling": {"adapter_scales": [1.0]},
    # a reviewer wrote one other way to ask each question ("also_asked" in the data):
    # the first held-out rewording is trained on, the second is measured
    "also-asked": {"also_asked": 1},
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


class Probe:
    """The measurements, on one loaded base model with adapters switched in and out."""

    def __init__(self, config: Any, gsm8k: int):

        from trainer.formatting import encode_dataset, make_collator

        self.config = config
        self.system = config.model.system_prompt
        source = modeling.resolve_model_source(config.model.name, config.model_cache_dir)
        self.placement = modeling.choose_placement(config.model.device, config.model.dtype)
        self.tokenizer = modeling.load_tokenizer(source)
        self.collator = make_collator(self.tokenizer)
        self.model = modeling.load_model(source, self.placement)
        self.model.config.use_cache = True
        self.facts = read_jsonl(FACTS)
        self.canaries = C.load_canaries()
        self.gsm = None
        if GSM8K_TEST.is_file() and gsm8k > 0:
            dataset = examples_dataset([Example(r["question"], r["answer"])
                                        for r in read_jsonl(GSM8K_TEST)[:gsm8k]])
            self.gsm, _ = encode_dataset(dataset, self.tokenizer, max_seq_len=1024,
                                         default_system=self.system, name="gsm8k")

    def answers(self, questions: list[str]) -> list[str]:
        examples = [Example(q, "") for q in questions]
        return generate_answers(self.model, self.tokenizer, examples,
                                device=self.placement.device, system_prompt=self.system,
                                max_new_tokens=48, batch_size=16)[0]

    def measure(self, taught_rewordings: int = 0) -> dict[str, Any]:
        """The figures; the first `taught_rewordings` rewordings of each fact were trained on."""
        facts, canaries = self.facts, self.canaries
        questions = [f["question"] for f in facts]
        paraphrases = [(p, f["keywords"], j == len(f["paraphrases"]) - 1) for f in facts
                       for j, p in enumerate(f["paraphrases"]) if j >= taught_rewordings]
        every_keyword = [k.lower() for f in facts for k in f["keywords"]]
        asked = questions + [p for p, _, _ in paraphrases] + canaries.questions + canaries.prompts
        got = self.answers(asked)
        taught = got[:len(questions)]
        reworded = got[len(questions):len(questions) + len(paraphrases)]
        qa = got[len(questions) + len(paraphrases):len(asked) - len(canaries.prompts)]
        open_answers = got[len(asked) - len(canaries.prompts):]

        def recalled(answer: str, keywords: list[str]) -> bool:
            return all(k.lower() in answer.lower() for k in keywords)

        leaks = [a for a in open_answers if any(k in a.lower() for k in every_keyword)]
        result = {
            "taught": sum(recalled(a, f["keywords"])
                          for a, f in zip(taught, facts, strict=True)) / len(facts),
            "paraphrased": sum(recalled(a, k)
                               for a, (_, k, _) in zip(reworded, paraphrases, strict=True))
            / len(paraphrases),
            # each fact's last rewording alone: comparable with a --variant also-asked row
            "paraphrased_last": sum(recalled(a, k) for a, (_, k, last)
                                    in zip(reworded, paraphrases, strict=True) if last)
            / len(facts),
            "general_qa": C.qa_accuracy(qa, canaries.accepted),
            "leakage": len(leaks) / len(open_answers),
            "leaks": [a[:160] for a in leaks],
            # every answer, for reading what was recalled and what leaked (--json)
            "answers": {"taught": taught, "paraphrased": reworded, "general_qa": qa,
                        "open": open_answers},
        }
        if self.gsm is not None:
            result["gsm8k_ppl"] = dataset_loss(self.model, self.gsm, self.collator, batch_size=8,
                                               device=self.placement.device).perplexity
        return result

    def with_adapter(self, directory: Path, taught_rewordings: int = 0) -> dict[str, Any]:
        from peft import PeftModel

        name = f"v{len(getattr(self.model, 'peft_config', {}))}"
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(directory), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(directory), adapter_name=name)
        self.model.set_adapter(name)
        self.model.eval()
        return self.measure(taught_rewordings)

    def base(self) -> dict[str, Any]:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                return self.measure()
        return self.measure()


def run_variant(name: str, overrides: dict[str, Any], probe: Probe,
                cache: Path | None = None) -> dict[str, Any]:
    from trainer.pipeline import TrainRequest, run_training

    with tempfile.TemporaryDirectory(prefix=f"learning-{name}-") as tmp:
        tmp_path = Path(tmp)
        if cache is not None:  # paraphrases and replay answers of an earlier run
            cache.mkdir(parents=True, exist_ok=True)
            (tmp_path / "data").mkdir()
            (tmp_path / "data" / "cache").symlink_to(cache.resolve())
        data = tmp_path / "facts.jsonl"
        also = int(overrides.get("also_asked", 0))
        write_jsonl([{"question": f["question"], "answer": f["answer"],
                      "also_asked": f["paraphrases"][:also]} for f in probe.facts], data)
        config_file = tmp_path / "bot.toml"
        config_file.write_text(f'[storage]\ndata_dir = "{(tmp_path / "data").as_posix()}"\n'
                               f'[model]\ncache_dir = "{probe.config.model_cache_dir.as_posix()}"'
                               f'\nname = "{probe.config.model.name}"\n', encoding="utf-8")
        config = load_config(config_file, environ={})
        training = {k: v for k, v in overrides.items() if hasattr(config.training, k)}
        from dataclasses import replace

        config = replace(config, training=replace(config.training, **training))
        started = time.perf_counter()
        outcome = run_training(config, TrainRequest(adapter=ADAPTER, data_files=[data],
                                                    promote=True, trigger="cli"),
                               progress=sys.stderr.isatty())
        seconds = time.perf_counter() - started
        gate = outcome.gate or {}
        result = probe.with_adapter(outcome.path, also)
        result |= {"variant": name, "overrides": overrides, "train_seconds": round(seconds, 1),
                   "promoted": gate.get("promote"), "scale": gate.get("scale"),
                   "gate_reason": gate.get("reason"), "gate_report": gate.get("report"),
                   "steps": outcome.metrics.get("steps")}
        return result


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def table(base: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    head = ("| setting | taught | paraphrased | GSM8K ppl | general QA | leakage | scale | "
            "training |\n|---|---|---|---|---|---|---|---|")
    lines = [head, f"| base model | {percent(base['taught'])} | {percent(base['paraphrased'])} "
                   f"| {base.get('gsm8k_ppl', float('nan')):.2f} | {percent(base['general_qa'])} "
                   f"| {percent(base['leakage'])} | – | – |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {percent(r['taught'])} | {percent(r['paraphrased'])} "
                     f"| {r.get('gsm8k_ppl', float('nan')):.2f} | {percent(r['general_qa'])} | "
                     f"{percent(r['leakage'])} | {r['scale'] if r['scale'] is not None else '–'} "
                     f"| {r['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="settings to run (repeatable; default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="an extra [training] override for every variant, e.g. "
                             "--set replay_weight=0.5")
    parser.add_argument("--gsm8k", type=int, default=50, help="GSM8K test pairs for perplexity")
    parser.add_argument("--facts", type=int, default=0, help="use only the first N facts "
                        "(a quick smoke run; the figures need all of them)")
    parser.add_argument("--model", help="another base model (a directory), for a smoke run")
    parser.add_argument("--cache-dir", type=Path, help="keep the base model's paraphrases and "
                        "replay answers here and reuse them (they are per model and question; "
                        "the training time then excludes writing them)")
    parser.add_argument("--base-json", type=Path, help="the base model's row from an earlier "
                        "--json file instead of measuring it again")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    config = load_config(ROOT / "config.toml", environ={})
    if args.model:
        from dataclasses import replace

        config = replace(config, model=replace(config.model, name=args.model))
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value)
    probe = Probe(config, args.gsm8k)
    if args.facts:
        probe.facts = probe.facts[:args.facts]
    base = (json.loads(args.base_json.read_text())["base"] if args.base_json
            else probe.base())
    rows = []
    for name in args.variant or ["default"]:
        row = run_variant(name, VARIANTS[name] | extra, probe, args.cache_dir)
        rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("leaks", "answers")}
        print(f"{name}: {json.dumps(shown)}",
              file=sys.stderr, flush=True)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
          f"date {date.today()}; {len(probe.facts)} facts")
    print(table(base, rows))
    for row in rows:
        for leak in row["leaks"][:5]:
            print(f"  leak ({row['variant']}): {leak}")
    if args.json:
        args.json.write_text(json.dumps({"base": base, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

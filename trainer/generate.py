"""`python -m trainer generate`: answers of the base model or an adapter to prompts.

The prompt is rendered the way training renders it (trainer.formatting's
`prompt_messages` and the tokenizer's chat template with the generation
prompt) and, unless one is given, with the system prompt the adapter was
trained with, so what comes out is what the adapter learnt to answer.
Temperature 0 is greedy decoding; above 0 it samples with top-p. With a
seed, every prompt starts from the same random state, so its samples do not
depend on the prompts before it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings import Config

from . import modeling
from .adapters import AdapterSource, set_adapter_scale, training_system_prompt
from .formatting import prompt_messages

log = logging.getLogger(__name__)


class PromptsError(ValueError):
    """Prompts that cannot be read; names the file and line."""


@dataclass
class GenerateOptions:
    prompts: list[str]
    adapter: AdapterSource | None = None
    temperature: float = 0.0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    num_samples: int = 1
    seed: int | None = None
    system_prompt: str | None = None  # given on the command line: always wins
    default_system_prompt: str | None = None  # when the adapter does not say which it learnt with


@dataclass
class PromptResult:
    prompt: str
    samples: list[str]
    new_tokens: list[int] = field(default_factory=list)  # per sample


def read_prompts(path: Path) -> list[str]:
    """One prompt per line (blank lines and # comments skipped); in a .jsonl file each
    line is a JSON string or an object with "question", "prompt" or "messages"."""
    path = Path(path)
    if not path.is_file():
        raise PromptsError(f"prompts file {path} does not exist")
    prompts, problems = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or (path.suffix != ".jsonl" and text.startswith("#")):
                continue
            if path.suffix != ".jsonl":
                prompts.append(text)
                continue
            try:
                prompts.append(_prompt_from_json(json.loads(text)))
            except (json.JSONDecodeError, ValueError) as exc:
                problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise PromptsError("bad prompts file:\n  " + "\n  ".join(problems[:20]))
    if not prompts:
        raise PromptsError(f"prompts file {path} holds no prompt")
    return prompts


def _prompt_from_json(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        for key in ("question", "prompt"):
            if isinstance(value.get(key), str) and value[key].strip():
                return value[key].strip()
        messages = value.get("messages")
        if isinstance(messages, list):
            users = [m.get("content") for m in messages
                     if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str) and users[-1].strip():
                return users[-1].strip()
    raise ValueError('expected a JSON string or an object with "question", "prompt" or '
                     '"messages" holding a user turn')


def check_options(options: GenerateOptions) -> None:
    problems = []
    if not options.prompts:
        problems.append("no prompt: pass --prompt TEXT or --prompts FILE")
    if not 0 <= options.temperature <= 5:
        problems.append("--temperature must be between 0 (greedy) and 5")
    if not 0 < options.top_p <= 1:
        problems.append("--top-p must be above 0 and at most 1")
    if not 0 < options.repetition_penalty <= 10:
        problems.append("--repetition-penalty must be above 0 (1 disables it)")
    if options.max_new_tokens < 1:
        problems.append("--max-new-tokens must be at least 1")
    if options.num_samples < 1:
        problems.append("--num-samples must be at least 1")
    if problems:
        raise PromptsError("; ".join(problems))


def render_prompt(tokenizer: Any, prompt: str, system_prompt: str | None) -> str:
    """The text the model continues: the training prompt format with the generation cue."""
    return tokenizer.apply_chat_template(prompt_messages(prompt, default_system=system_prompt),
                                         tokenize=False, add_generation_prompt=True)


def generate(config: Config, options: GenerateOptions) -> dict[str, Any]:
    """Load the model (and adapter), answer every prompt; a dict ready for JSON or text."""
    import torch

    check_options(options)
    source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                           allow_download=config.model.allow_download)
    placement = modeling.choose_placement(config.model.device, config.model.dtype,
                                          config.model.load_in_4bit)
    tokenizer = modeling.load_tokenizer(source, allow_download=config.model.allow_download)
    model = modeling.load_model(source, placement, allow_download=config.model.allow_download)
    if options.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(options.adapter.path))
        set_adapter_scale(model, "default", options.adapter.scale)  # as it serves
        model.eval()
    system_prompt = options.system_prompt or training_system_prompt(
        options.adapter, options.default_system_prompt)
    sampling = options.temperature > 0
    if not sampling and options.num_samples > 1:
        log.info("temperature 0 decodes greedily: the %d samples of a prompt will be equal",
                 options.num_samples)
    results, generated, started = [], 0, time.perf_counter()
    for prompt in options.prompts:
        batch = tokenizer(render_prompt(tokenizer, prompt, system_prompt), return_tensors="pt",
                          add_special_tokens=False).to(placement.device)
        if options.seed is not None:
            from transformers import set_seed

            set_seed(options.seed)
        kwargs: dict[str, Any] = {"do_sample": sampling}
        if sampling:
            kwargs |= {"temperature": options.temperature, "top_p": options.top_p}
        else:  # the model's generation_config may carry sampling defaults: silence them
            kwargs |= {"temperature": None, "top_p": None, "top_k": None}
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=options.max_new_tokens,
                                 num_return_sequences=options.num_samples if sampling else 1,
                                 repetition_penalty=options.repetition_penalty,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        lengths = [_generated_length(row, tokenizer) for row in new]
        generated += sum(lengths)
        texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if not sampling:  # greedy has one answer: decoding it N times would only cost time
            texts, lengths = texts * options.num_samples, lengths * options.num_samples
        results.append(PromptResult(prompt, texts, lengths))
    seconds = time.perf_counter() - started
    return {
        "model": config.model.name,
        "adapter": options.adapter.describe() if options.adapter is not None else None,
        "system_prompt": system_prompt,
        "settings": {"temperature": options.temperature,
                     "top_p": options.top_p if sampling else None,
                     "repetition_penalty": options.repetition_penalty,
                     "max_new_tokens": options.max_new_tokens,
                     "num_samples": options.num_samples, "seed": options.seed},
        "results": [r.__dict__ for r in results],
        "generated_tokens": generated,
        "tokens_per_s": round(generated / seconds, 1) if seconds > 0 else None,
    }


def _generated_length(row: Any, tokenizer: Any) -> int:
    """Tokens up to and including the end of turn (what follows it is padding)."""
    ids = row.tolist()
    eos = tokenizer.eos_token_id
    return ids.index(eos) + 1 if eos in ids else len(ids)


def format_results(report: dict[str, Any]) -> str:
    adapter = report["adapter"]
    where = (f"adapter {adapter['adapter']} v{adapter['version']}" if adapter and adapter["adapter"]
             else f"adapter {adapter['path']}" if adapter else "base model")
    lines = [f"model {report['model']}, {where}; {report['generated_tokens']} token(s) at "
             f"{report['tokens_per_s']} tokens/s"]
    for result in report["results"]:
        lines += ["", f"> {result['prompt']}"]
        many = len(result["samples"]) > 1
        for i, sample in enumerate(result["samples"], 1):
            lines.append(f"[{i}] {sample}" if many else sample)
    return "\n".join(lines)

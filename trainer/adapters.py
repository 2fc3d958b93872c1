"""Naming an adapter on the command line and finding its directory.

`generate`, `merge`, `export` and `compose` accept an adapter either as a
reference to a stored version, `NAME[@VERSION]` (`faq`, `faq@3`, `faq@v3`),
or as a directory (`--adapter-dir DIR`). A name alone means the version that
serves now, else the newest one, so "the adapter the bot would answer with"
needs no lookup. The store resolves references, so an unknown name fails with
the list of known ones, the same as the other commands.

Adapter names cannot contain ':' or '@' (storage.validate_adapter_name), which
is what keeps `NAME@VERSION:WEIGHT` (compose) unambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings import Config
from storage import SyncStore, validate_adapter_key

from .versions import read_meta

ADAPTER_CONFIG = "adapter_config.json"
_REF = re.compile(r"^(?P<name>[^@:]+?)(?:[@:]v?(?P<version>\d+))?$")


class AdapterRefError(ValueError):
    """An adapter reference or directory that cannot be used; says what to pass instead."""


@dataclass(frozen=True)
class AdapterRef:
    name: str
    version: int | None = None  # None: the serving version, else the newest

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AdapterSource:
    """An adapter directory ready to load, and where it came from."""

    path: Path
    label: str  # "faq v3" or the directory, for messages and metadata
    name: str | None = None
    version: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # its training_meta.json, if any
    scale: float = 1.0  # the adapter scale its version row says it serves at (the gate's)

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "version": self.version, "path": str(self.path)}


def parse_adapter_ref(text: str, *, allow_colon: bool = False) -> AdapterRef:
    """`NAME`, `NAME@VERSION` or `NAME@vVERSION` (and `NAME:VERSION` where allowed)."""
    match = _REF.match(text.strip())
    if match is None or (not allow_colon and ":" in text):
        syntax = "NAME[@VERSION]" + (" or NAME:VERSION" if allow_colon else "")
        raise AdapterRefError(f"adapter reference {text!r} is not {syntax} "
                              f"(for example 'support' or 'support@2')")
    name = validate_adapter_key(match["name"])
    version = int(match["version"]) if match["version"] is not None else None
    if version is not None and version < 1:
        raise AdapterRefError(f"adapter reference {text!r}: versions start at 1")
    return AdapterRef(name, version)


def check_adapter_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise AdapterRefError(f"adapter directory {path} does not exist")
    if not (path / ADAPTER_CONFIG).is_file():
        raise AdapterRefError(f"{path} is not a PEFT adapter directory ({ADAPTER_CONFIG} is "
                              f"missing); pass a directory written by `python -m trainer "
                              f"train` or PEFT's save_pretrained")
    return path


def source_from_dir(path: Path) -> AdapterSource:
    path = check_adapter_dir(path)
    return AdapterSource(path, str(path), meta=read_meta(path))


def resolve_ref(config: Config, store: SyncStore, ref: AdapterRef) -> AdapterSource:
    """The directory of a stored version (unknown names list the known adapters)."""
    from .gate import resolve_version_path

    if ref.version is not None:
        record = store.get_version(ref.name, ref.version)
    else:
        store.require_adapter(ref.name)
        record = store.serving_version(ref.name)
        if record is None:
            versions = store.versions(ref.name)
            if not versions:
                raise AdapterRefError(f"adapter {ref.name!r} has no versions yet; train one "
                                      f"with `python -m trainer train --adapter {ref.name} "
                                      f"--data FILE`")
            record = versions[-1]
    path = resolve_version_path(config.adapters_dir, record.path)
    label = f"{ref.name} v{record.version}"
    meta = read_meta(path) if path.is_dir() else {}
    if meta.get("method") == "full":
        raise AdapterRefError(f"{label} is a full model, not an adapter; set model.name to "
                              f"{path} to use it")
    if not path.is_dir():
        raise AdapterRefError(f"{label} is recorded at {path}, which does not exist; roll "
                              f"back or train a new version")
    check_adapter_dir(path)
    return AdapterSource(path, label, ref.name, record.version, meta, record.scale)


def scaled_copy(directory: Path, scale: float) -> Path:
    """The version in `directory` at `scale`, for servers that load adapters from files
    and have no scale of their own (vLLM): a sibling directory whose adapter_config.json has
    lora_alpha (and any alpha_pattern) times `scale` — LoRA's output is scaled by alpha/r, so
    this is exactly PEFT's set_scale — and the same weights (hard-linked where possible).
    Written once, atomically; the version's own files are never changed."""
    import json
    import os
    import shutil
    import tempfile

    target = directory.with_name(f"{directory.name}-x{scale:g}")
    if (target / ADAPTER_CONFIG).is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=directory.parent))
    try:
        for item in directory.glob("adapter_model*"):  # the weights, nothing else
            if item.is_file():
                try:
                    os.link(item, staging / item.name)
                except OSError:
                    shutil.copy2(item, staging / item.name)
        config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        config["lora_alpha"] = config["lora_alpha"] * scale
        if config.get("alpha_pattern"):
            config["alpha_pattern"] = {k: v * scale for k, v in config["alpha_pattern"].items()}
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process wrote it first: the same content
            if not (target / ADAPTER_CONFIG).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def set_adapter_scale(model: Any, name: str, scale: float) -> None:
    """Serve the loaded adapter `name` at `scale` × its trained alpha/r, as the gate chose
    (PEFT's LoraLayer.set_scale on every layer). A version's files are final once written:
    its scale lives on its row, and every loader of a stored version applies it here."""
    if scale == 1.0:
        return
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.scaling:
            module.set_scale(name, scale)


def resolve_adapter(config: Config, *, ref: str | AdapterRef | None = None,
                    directory: Path | None = None,
                    allow_colon: bool = False) -> AdapterSource | None:
    """One adapter from `--adapter REF` or `--adapter-dir DIR` (None: neither, the base)."""
    if ref is not None and directory is not None:
        raise AdapterRefError("give either an adapter name or --adapter-dir, not both")
    if directory is not None:
        return source_from_dir(directory)
    if ref is None:
        return None
    if isinstance(ref, str):
        ref = parse_adapter_ref(ref, allow_colon=allow_colon)
    with SyncStore(config.database_path, busy_timeout_ms=config.storage.busy_timeout_ms) as store:
        return resolve_ref(config, store, ref)


def training_system_prompt(source: AdapterSource | None, fallback: str | None) -> str | None:
    """The system prompt the adapter was trained with, so generation sees the same prompt."""
    if source is not None:
        prompt = source.meta.get("hyperparameters", {}).get("system_prompt")
        if prompt:
            return prompt
    return fallback

"""Adapter versions in the served PEFT model: files checked first, loaded under the
version's name, scaled, and taken out again when a load fails half-way.

Called on the engine's worker thread only: that thread owns the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .generation import AdapterLoadError
from .routing import Route

log = logging.getLogger(__name__)


def load_version(model: Any, route: Route) -> Any:
    """`model` with the version of `route` loaded as the adapter `route.key` (a PeftModel
    from the first load on); raises AdapterLoadError and leaves `model` as it was."""
    from peft import PeftModel

    from trainer.adapters import set_adapter_scale

    try:
        # PEFT injects the LoRA layers before it reads the weights: unreadable files
        # found first leave the served model as it was
        check_adapter_files(route.path)
        if isinstance(model, PeftModel):
            model.load_adapter(str(route.path), adapter_name=route.key, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(route.path), adapter_name=route.key,
                                              is_trainable=False)
    except Exception as exc:
        # a half-loaded adapter would stay in the model, unnamed by any route (on the
        # first load PEFT injects into the base model itself before it reads weights
        # that may not fit it, e.g. an adapter of another base model)
        try:
            if isinstance(model, PeftModel):
                if route.key in model.peft_config:
                    model.delete_adapter(route.key)
            else:
                strip_lora_layers(model)
        except Exception:
            log.exception("could not remove the half-loaded adapter %s", route.key)
        raise AdapterLoadError(f"adapter {route.adapter} v{route.version} at {route.path} "
                               f"could not be loaded ({exc}); roll back with "
                               f"/adapter rollback {route.adapter}") from exc
    set_adapter_scale(model, route.key, route.scale)
    model.eval()
    return model


def strip_lora_layers(model: Any) -> None:
    """Put every injected tuner layer's base layer back: the plain model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import _get_submodules

    names = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in names:
        parent, layer, attribute = _get_submodules(model, name)
        setattr(parent, attribute, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if names:
        log.warning("removed %d half-injected adapter layers from the base model", len(names))


def check_adapter_files(path: Any) -> None:
    """Read an adapter directory's config and weights; raise what is wrong with them."""
    from peft import PeftConfig
    from safetensors.torch import load_file

    path = Path(path)
    PeftConfig.from_pretrained(str(path))
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        load_file(weights)  # a few MB: cheap next to what a half-injected load costs
    elif not (path / "adapter_model.bin").is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {path}")

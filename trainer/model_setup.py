"""Loading a model for training: LoRA, QLoRA (4-bit) or full, and moving the
trainable weights in and out of checkpoints."""

from __future__ import annotations

import logging
import resource
from typing import TYPE_CHECKING, Any

from .errors import TrainingError
from .modeling import ModelError, Placement, load_model

if TYPE_CHECKING:
    from .train_config import TrainConfig

log = logging.getLogger(__name__)


def load_for_training(source: str, placement: Placement, cfg: TrainConfig, *,
                      allow_download: bool = False) -> Any:
    """The base model, prepared for `cfg.method` (a PeftModel for lora/qlora)."""
    from dataclasses import replace

    if cfg.method == "qlora":
        placement = replace(placement, load_in_4bit=True)
        if placement.device == "cpu":
            log.warning("QLoRA on CPU works but is about ten times slower than LoRA")
    elif cfg.method == "full" and placement.device == "cuda":
        # full training keeps float32 master weights; bf16 comes from autocast
        placement = replace(placement, dtype_name="float32", load_in_4bit=False)
    else:
        placement = replace(placement, load_in_4bit=False)
    try:
        model = load_model(source, placement, allow_download=allow_download)
    except ModelError:
        raise
    except Exception as exc:  # bitsandbytes raises many kinds when 4-bit is unsupported
        if cfg.method == "qlora":
            raise TrainingError(f"method qlora needs bitsandbytes 4-bit support on "
                                f"{placement.device}, which failed here ({type(exc).__name__}: "
                                f"{exc}); use --method lora, or install a bitsandbytes build "
                                f"for this machine (pip install -e '.[gpu]')") from exc
        raise
    model.config.use_cache = False  # the cache is for generation; training only wastes memory
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        if placement.device == "cpu":
            _keep_4bit_weights_trainable(model)

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = cfg.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand: every linear layer but the output head
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainingError(f"cannot add LoRA to modules {cfg.target_modules}: {exc}; set "
                            f"training.target_modules to names of linear layers, or "
                            f"['all-linear']") from exc


def _keep_4bit_weights_trainable(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for a faster
    kernel the first time it runs in eval mode (our validation) and never packs them back;
    that kernel has no backward, so gradients stop flowing through the base layers (torch
    only warns). Opting out of the repacking keeps QLoRA training correct on CPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def trainable_state(model: Any) -> dict[str, Any]:
    """Copies of the weights being trained (LoRA only, or everything for `full`)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise TrainingError(f"the checkpoint does not fit this model ({len(missing)} unknown "
                            f"weights, e.g. {missing[0]}); start a new run without --resume")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def rss_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_text(device: str) -> str:
    """Peak memory so far for the progress bar: the GPU's on CUDA, else this process's."""
    if device == "cuda":
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}G"
    return f"{rss_mb() / 1024:.1f}G"

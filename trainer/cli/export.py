"""`merge` and `export`: an adapter folded into its model, as a directory, TorchScript or ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from settings import Config

from .. import modeling
from .common import ADAPTER_REF_HELP


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from ..export import FORMATS

    merge = sub.add_parser(
        "merge", parents=[common], help="fold an adapter into a full model directory",
        description="Add the adapter's update into the base model's weights (PEFT "
                    "merge_and_unload) and write a plain model directory with the tokenizer, "
                    "which AutoModelForCausalLM.from_pretrained loads without PEFT. A NaN or "
                    "infinite weight in the adapter or the result is refused, naming the "
                    "tensor. The directory is written beside --output and renamed into place.",
        epilog=ADAPTER_REF_HELP + "; or --adapter-dir DIR for a directory.")
    _add_adapter_choice(merge)
    merge.add_argument("--output", type=Path, required=True, metavar="DIR",
                       help="model directory to write")
    merge.add_argument("--force", action="store_true", help="replace --output if it exists")

    export = sub.add_parser(
        "export", parents=[common], help="export an adapter merged into its model",
        description="merged: as `merge`. torchscript: the merged model's logits forward "
                    "(input_ids, attention_mask -> logits), traced on CPU in float32, saved as "
                    "DIR/model.pt with the tokenizer, reloaded and checked against the merged "
                    "model. onnx: the same as DIR/model.onnx; needs the onnx extra "
                    "(pip install -e '.[onnx]'). Without an adapter, torchscript and onnx "
                    "export the base model.",
        epilog=ADAPTER_REF_HELP + "; or --adapter-dir DIR for a directory.")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="merged, torchscript or onnx")
    _add_adapter_choice(export)
    export.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="directory to write")
    export.add_argument("--force", action="store_true", help="replace --output if it exists")


def _add_adapter_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="adapter name (or NAME@VERSION)")
    parser.add_argument("version", nargs="?", type=int, help="version number")
    parser.add_argument("--adapter-dir", type=Path, metavar="DIR",
                        help="an adapter directory instead of a stored version")


def run_merge(config: Config, args: argparse.Namespace) -> int:
    from ..export import merge

    source = _chosen_adapter(config, args, required=True)
    result = merge(config, source, args.output, force=args.force)
    print(f"merged {source.label} into {result.path} "
          f"({modeling.human_size(result.size_bytes)}, {result.seconds:.1f} s); it loads with "
          f"AutoModelForCausalLM.from_pretrained")
    return 0


def run_export(config: Config, args: argparse.Namespace) -> int:
    from ..export import export

    source = _chosen_adapter(config, args, required=args.fmt == "merged")
    result = export(config, args.fmt, source, args.output, force=args.force)
    what = source.label if source is not None else "the base model"
    check = (f", logits within {result.max_abs_diff:.2g} of the merged model"
             if result.max_abs_diff is not None else "")
    print(f"{args.fmt} export of {what} in {result.path} "
          f"({modeling.human_size(result.size_bytes)}, {result.seconds:.1f} s{check})")
    return 0


def _chosen_adapter(config: Config, args: argparse.Namespace, *, required: bool) -> Any:
    """The adapter of merge/export: NAME [VERSION], NAME@VERSION or --adapter-dir DIR."""
    from ..adapters import AdapterRef, AdapterRefError, parse_adapter_ref, resolve_adapter

    if args.name is None:
        if args.version is not None:
            raise AdapterRefError("a version needs the adapter's name: NAME VERSION")
        if args.adapter_dir is None and required:
            raise AdapterRefError("which adapter? give NAME [VERSION] or --adapter-dir DIR")
        return resolve_adapter(config, directory=args.adapter_dir)
    ref = parse_adapter_ref(args.name)
    if args.version is not None:
        if ref.version is not None:
            raise AdapterRefError(f"two versions given ({args.name} and {args.version}); "
                                  f"give one")
        ref = AdapterRef(ref.name, args.version)
    return resolve_adapter(config, ref=ref, directory=args.adapter_dir)


COMMANDS = {"merge": run_merge, "export": run_export}

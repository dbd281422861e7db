"""``partita describe``: a model's description (layers, parameters, FLOPs, activations) from a
preset, a Hugging Face config, or its sizes alone; no torch, no download, no weights.

    partita describe llama3-8b --seq 8192 --out llama3-8b.json
    partita describe ./my-model --out model.json          # a folder with config.json
    partita describe --family gpt --layers 96 --hidden 12288 --heads 96 --ffn 49152 \\
        --vocab 51200 --seq 2048 --out gpt3-175b.json
    partita describe --family swin --set embed_dim=192 \\
        --set 'num_heads=[6,12,24,48]' --set 'depths=[2,2,18,2]'      # Swin-L
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from partita.formats import save
from partita.formats.cli import EXIT_OK, Command
from partita.formats.summaries import summarize

_SIZE_HELP = {
    "layers": "number of Transformer blocks",
    "hidden": "hidden size",
    "heads": "attention heads",
    "kv_heads": "key/value heads (grouped-query attention)",
    "ffn": "feed-forward inner size",
    "vocab": "vocabulary size",
    "positions": "position table size (default: the sequence length where it must hold it)",
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        metavar="PRESET|HF_DIR|CONFIG",
        help="a preset name (see --list), a folder holding config.json, or a config.json",
    )
    parser.add_argument(
        "--family",
        metavar="NAME",
        help="describe from sizes: gpt, llama, bert, t5, vit, swin, or a model_type such as "
        "mistral, qwen2 or qwen3 (fields not given take transformers' defaults)",
    )
    sizes = parser.add_argument_group("sizes (with --family)")
    for flag, text in _SIZE_HELP.items():
        sizes.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=int, metavar="N", help=text
        )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config field (VALUE read as JSON when it parses, else as text); repeatable",
    )
    parser.add_argument(
        "--seq", type=int, metavar="S", help="sequence length (default: the model's)"
    )
    parser.add_argument("--name", help="name recorded in the description (default: the model)")
    parser.add_argument("--out", metavar="FILE", help="write the description here")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            fields[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            fields[key.strip()] = text
    return fields


def _config(args: argparse.Namespace) -> tuple[dict[str, Any], str, str]:
    """(config, where it came from for errors, default name)."""
    from partita.formats.architectures import (
        SIZE_FLAGS,
        architecture_for,
        config_from_sizes,
        presets,
        read_hf_config,
    )

    sizes = {flag: getattr(args, flag) for flag in SIZE_FLAGS if getattr(args, flag) is not None}
    extra = _overrides(args.set)
    if args.family is not None:
        if args.model is not None:
            raise ValueError("give a model or --family with sizes, not both")
        config = config_from_sizes(args.family, sizes, extra)
        arch = architecture_for(config["model_type"], "--family")
        key = arch.size_keys.get("positions")
        if key and key not in config and args.seq is not None:
            # A learned position table must hold the sequence: grow the default to it.
            default = arch.defaults[config["model_type"]].get(key)
            if isinstance(default, int) and args.seq > default:
                config[key] = args.seq
        return config, "--family", args.family
    if sizes:
        flags = ", ".join(f"--{flag.replace('_', '-')}" for flag in sizes)
        raise ValueError(
            f"{flags}: size flags describe a model from --family; for a preset or a "
            "config use --set KEY=VALUE"
        )
    if args.model is None:
        raise ValueError(
            "give a preset name, a Hugging Face folder or config.json, or --family "
            "with sizes (see --list and --help)"
        )
    known = presets()
    if args.model in known:
        return {**known[args.model], **extra}, f"preset {args.model}", args.model
    path = Path(args.model)
    if not path.exists():
        raise ValueError(
            f"{args.model}: neither a preset (see --list) nor an existing folder or config.json"
        )
    source = str(path / "config.json" if path.is_dir() else path)
    return {**read_hf_config(path), **extra}, source, args.model


def _run(args: argparse.Namespace) -> int:
    from partita.formats.architectures import describe_config, presets

    if args.list:
        for name, config in sorted(presets().items()):
            params = describe_config(config, name=name).params
            print(f"{name:16} {params / 1e6:10.1f} M parameters  ({config['model_type']})")
        return EXIT_OK
    config, source, default_name = _config(args)
    description = describe_config(
        config, seq_len=args.seq, name=args.name or default_name, source=source
    )
    if args.out:
        path = save(description, args.out)
        print(f"wrote {path}")
    print(summarize(description))
    return EXIT_OK


COMMAND = Command(
    name="describe",
    help="write the description (layers, parameters, FLOPs) of a model from a preset, a "
    "Hugging Face config or its sizes; needs no torch",
    add_arguments=_add_arguments,
    run=_run,
)

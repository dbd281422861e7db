"""Model descriptions from a model's config alone: torch-free, transformers-free.

Each supported family (GPT, LLaMA with Mistral and Qwen, BERT, T5, ViT, Swin) has one module
here that turns a Hugging Face config (``config.json`` or a preset) into the
:class:`~partita.formats.ModelDescription` the simulator reads. ``partita.models`` describes
its models through the same functions, so a description made here, without torch, equals
the one made beside the torch model.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from partita.formats.architectures.base import Architecture, describe_with, view_of
from partita.formats.model_description import ModelDescription

# One module per family, in the order of the support table.
_MODULES = ("gpt", "llama", "bert", "t5", "vit", "swin")

SIZE_FLAGS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "positions")


@cache
def architectures() -> dict[str, Architecture]:
    """Family name -> architecture."""
    found: dict[str, Architecture] = {}
    for module in _MODULES:
        arch = importlib.import_module(f"{__name__}.{module}").ARCHITECTURE
        found[arch.family] = arch
    return found


def architecture_for(model_type: object, source: str = "config") -> Architecture:
    for arch in architectures().values():
        if model_type in arch.defaults:
            return arch
    supported = ", ".join(
        f"{arch.family} ({'/'.join(arch.model_types)})" for arch in architectures().values()
    )
    raise ValueError(f"{source}: unsupported model_type {model_type!r}; supported: {supported}")


def presets() -> dict[str, Mapping[str, Any]]:
    """Every family's named configs: ``<family>-tiny`` ones for tests and the real sizes."""
    merged: dict[str, Mapping[str, Any]] = {}
    for arch in architectures().values():
        for name, config in arch.presets.items():
            assert name not in merged, f"preset {name} is declared twice"
            merged[name] = config
    return merged


def describe_config(
    config: Mapping[str, Any],
    *,
    seq_len: int | None = None,
    name: str | None = None,
    source: str = "config",
) -> ModelDescription:
    """The description of a model given its transformers config as a mapping (with its
    ``model_type``). Fields the mapping leaves out take transformers' defaults."""
    arch = architecture_for(config.get("model_type"), source)
    return describe_with(arch, config, seq_len=seq_len, name=name, source=source)


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """A Hugging Face ``config.json``, from the file or the folder holding it."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (expected a Hugging Face config.json)") from None
    except OSError as error:
        raise ValueError(f"{file}: cannot be read ({error.strerror})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{file}: model_type: missing (not a Hugging Face model config)")
    return config


def config_from_sizes(
    family: str, sizes: Mapping[str, int], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A config of ``family`` (a family name such as ``gpt`` or a model_type such as
    ``mistral``) from generic sizes (:data:`SIZE_FLAGS`) and raw config keys in ``extra``."""
    arch = architectures().get(family)
    model_type = family if arch is None else arch.model_types[0]
    arch = arch or architecture_for(model_type, "--family")
    config: dict[str, Any] = {"model_type": model_type}
    for flag, value in sizes.items():
        key = arch.size_keys.get(flag)
        if key is None:
            offered = ", ".join(f"--{k.replace('_', '-')}" for k in arch.size_keys)
            raise ValueError(
                f"--{flag.replace('_', '-')}: {arch.family} has no such size "
                f"(it takes {offered}, or --set KEY=VALUE)"
            )
        config[key] = value
    config.update(extra or {})
    return config


__all__ = [
    "SIZE_FLAGS",
    "Architecture",
    "architecture_for",
    "architectures",
    "config_from_sizes",
    "describe_config",
    "describe_with",
    "presets",
    "read_hf_config",
    "view_of",
]

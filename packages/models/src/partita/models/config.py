"""Turning a preset name, a config dict or a local Hugging Face directory into a config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from partita.models.presets import all_presets, preset_names

# The config every family reads (transformers' class), named here so that packages built on
# this one need not import transformers to type it.
ModelConfig = PretrainedConfig


def load_config(source: str | Path | Mapping[str, Any]) -> PretrainedConfig:
    """A transformers config from a preset name, a dict with ``model_type``, or an HF directory.

    Nothing is downloaded: directories are read with ``local_files_only``.
    """
    if isinstance(source, Mapping):
        return _config_from_dict(dict(source), origin="the config dict")
    text = str(source)
    presets = all_presets()
    if text in presets:
        return _config_from_dict(dict(presets[text]), origin=f"preset {text!r}")
    path = Path(text)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path}: not a Hugging Face model directory (no config.json)")
        try:
            document = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_file}: unreadable config: {error}") from None
        if not isinstance(document, dict):
            raise ValueError(f"{config_file}: expected a JSON object")
        return _config_from_dict(document, origin=str(config_file))
    raise ValueError(
        f"unknown model {text!r}: not a preset ({', '.join(preset_names())}) "
        "nor a directory with a config.json"
    )


def _config_from_dict(document: dict[str, Any], *, origin: str) -> PretrainedConfig:
    from partita.models.families import family_for_model_type

    model_type = document.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ValueError(f"{origin}: missing 'model_type' (e.g. 'gpt2', 'llama')")
    family_for_model_type(model_type)  # refuses unsupported model types by name
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        document.pop(key, None)
    try:
        config = AutoConfig.for_model(model_type, **document)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ValueError(f"{origin}: invalid {model_type} config: {error}") from None
    return config

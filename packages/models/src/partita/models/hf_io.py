"""Weights in and out: local Hugging Face checkpoint directories <-> :class:`LayeredModel`.

Reading takes ``model.safetensors`` or a sharded ``model.safetensors.index.json`` directly
(no transformers model is built); writing goes through the unmodified transformers model's
``save_pretrained``, so what we write is exactly what ``transformers`` loads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from partita.models.api import build_model
from partita.models.config import load_config
from partita.models.families import family_of
from partita.models.families.base import StateDict
from partita.models.layered import LayeredModel

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointTensors(dict[str, torch.Tensor]):
    """The tensors of a checkpoint; a missing one is a clear ValueError naming the directory."""

    def __init__(self, tensors: StateDict, source: Path) -> None:
        super().__init__(tensors)
        self.source = source

    def __missing__(self, key: str) -> torch.Tensor:
        raise ValueError(f"{self.source}: the checkpoint has no tensor {key!r}")


def read_safetensors(directory: str | Path) -> CheckpointTensors:
    """Every tensor of a (possibly sharded) safetensors checkpoint directory."""
    root = Path(directory)
    if (root / INDEX_FILE).is_file():
        try:
            index = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{root / INDEX_FILE}: unreadable shard index: {error}") from None
    elif (root / SINGLE_FILE).is_file():
        shards = [SINGLE_FILE]
    else:
        raise ValueError(
            f"{root}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are read)"
        )
    tensors: StateDict = {}
    for shard in shards:
        path = root / shard
        if not path.is_file():
            raise ValueError(f"{path}: shard named in {INDEX_FILE} is missing")
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path}: unreadable safetensors file: {error}") from None
    return CheckpointTensors(tensors, root)


def load_hf_checkpoint(directory: str | Path) -> LayeredModel:
    """The layered model with the weights of a local Hugging Face checkpoint directory."""
    root = Path(directory)
    config = load_config(root)
    model = build_model(config)
    family = family_of(config)
    ours = family.from_hf_state_dict(read_safetensors(root), config)
    expected = model.state_dict()
    for name, tensor in ours.items():
        if name not in expected:
            raise AssertionError(f"{family.name} mapping produced unknown parameter {name}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{root}: tensor for {name} has shape {tuple(tensor.shape)} but config.json "
                f"implies {tuple(expected[name].shape)}"
            )
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise ValueError(f"{root}: the checkpoint does not provide {missing[0]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})
    return model


def save_hf_checkpoint(model: LayeredModel, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face directory (config.json + model.safetensors)."""
    if model.config is None:
        raise ValueError("the model carries no transformers config; build it with build_model")
    family = family_of(model.config)
    reference = family.reference_model(model.config)
    state = family.to_hf_state_dict(
        {k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config
    )
    reference.load_state_dict(state, strict=True)
    target = Path(directory)
    with _quiet_progress():  # a bar for one tiny shard is noise in a command's output
        reference.save_pretrained(target, safe_serialization=True)
    return target


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

"""The entry points most users need: build a model, describe it, make a batch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from partita.formats import ModelDescription
from partita.models.config import load_config
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel

ModelSource = str | Path | Mapping[str, Any] | PretrainedConfig


def resolve_config(source: ModelSource) -> PretrainedConfig:
    return source if isinstance(source, PretrainedConfig) else load_config(source)


def build_model(source: ModelSource, *, seed: int | None = None) -> LayeredModel:
    """The layered torch model, its parameters drawn from the distributions transformers
    initialises the same model with (``partita.models.init``: piece by piece, so that any
    rank's shard of a parallel run equals the same part of this model). ``seed`` None draws
    one from torch's generator."""
    from partita.models.init import build_empty, materialize

    config = resolve_config(source)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    return materialize(build_empty(config), seed=seed)


def describe_model(
    source: ModelSource, *, seq_len: int | None = None, name: str | None = None
) -> ModelDescription:
    """The torch-free model description the simulator reads."""
    config = resolve_config(source)
    family = family_of(config)
    seq = seq_len if seq_len is not None else family.default_seq_len(config)
    if seq <= 0:
        raise ValueError(f"seq_len must be positive, got {seq}")
    label = name or (str(source) if isinstance(source, str | Path) else config.model_type)
    family.check_config(config)
    return family.describe(config, seq, label)


def synthetic_batch(
    source: ModelSource, *, batch_size: int, seq_len: int | None = None, seed: int = 0
) -> Activations:
    """A reproducible random batch of the family's inputs and labels."""
    config = resolve_config(source)
    family = family_of(config)
    seq = seq_len if seq_len is not None else family.default_seq_len(config)
    generator = torch.Generator().manual_seed(seed)
    return family.synthetic_batch(config, batch_size, seq, generator)

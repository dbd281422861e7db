"""The entry points most users need: build a model, describe it, make a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from partita.formats import LayerDescription, ModelDescription
from partita.models.config import load_config
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel
from partita.models.tp_layout import TPLayout

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
    description = family.describe(config, seq, label)
    layouts = family.tp_layouts(config)
    layers = tuple(_with_traits(layer, layouts[layer.layer_type]) for layer in description.layers)
    return dataclasses.replace(
        description, layers=layers, shared_vocabulary=_shared_vocabulary(config, layers)
    )


def _with_traits(layer: LayerDescription, layout: TPLayout) -> LayerDescription:
    """What every family shares: a block holding the vocabulary table runs vocab-parallel,
    and the loss after the head keeps the fp32 softmax of its logits (log-softmax in one
    process, the exponentials of each shard under vocab parallelism: as many bytes as the
    fp32 logits, ``output_bytes_per_sample``) whatever the compute precision."""
    if layer.kind == "block" and layout.holds_vocabulary:
        return dataclasses.replace(layer, vocab_parallel=True)
    if layer.kind == "head":
        return dataclasses.replace(layer, loss_bytes_per_sample=layer.output_bytes_per_sample)
    return layer


def _shared_vocabulary(
    config: PretrainedConfig, layers: tuple[LayerDescription, ...]
) -> tuple[str, ...]:
    """The layers holding a copy of the vocabulary table, as the families' ``build`` tie
    them: the embedding, the blocks that look tokens up in it (``vocab_parallel``), and the
    head when the config ties the output embedding."""
    if not getattr(config, "vocab_size", 0):
        return ()
    holders = [
        layer.name
        for layer in layers
        if layer.kind == "embedding"
        or (layer.kind == "block" and layer.vocab_parallel)
        or (layer.kind == "head" and getattr(config, "tie_word_embeddings", False))
    ]
    return tuple(holders) if len(holders) > 1 else ()


def synthetic_batch(
    source: ModelSource, *, batch_size: int, seq_len: int | None = None, seed: int = 0
) -> Activations:
    """A reproducible random batch of the family's inputs and labels."""
    config = resolve_config(source)
    family = family_of(config)
    seq = seq_len if seq_len is not None else family.default_seq_len(config)
    generator = torch.Generator().manual_seed(seed)
    return family.synthetic_batch(config, batch_size, seq, generator)

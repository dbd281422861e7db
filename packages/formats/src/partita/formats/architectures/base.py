"""What every architecture provides, and what all of them share once their layers are known."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from partita.formats.architectures.config_view import ConfigView, Default
from partita.formats.model_description import LayerDescription, ModelDescription


@dataclass(frozen=True)
class Architecture:
    """One family of models (GPT, LLaMA, ...) as torch-free functions of its config.

    ``defaults`` holds, per ``model_type``, transformers' default of every field ``describe``
    reads. ``describe`` returns the layers and sizes; :func:`describe_with` adds what every
    family shares (the vocabulary-parallel blocks, the loss's softmax, the tied tables).
    ``vocab_blocks`` names the block layer types that look tokens up in the vocabulary table
    (T5's decoder input). ``size_keys`` maps ``partita describe``'s generic size flags
    (``layers``, ``hidden``, ``heads``, ``ffn``, ``vocab``, ``kv_heads``, ``positions``) to
    this family's config keys; a flag the family lacks is refused.
    """

    family: str
    defaults: Mapping[str, Mapping[str, Default]]
    describe: Callable[[ConfigView, int, str], ModelDescription]
    default_seq_len: Callable[[ConfigView], int]
    presets: Mapping[str, Mapping[str, Any]]
    size_keys: Mapping[str, str]
    vocab_blocks: frozenset[str] = frozenset()
    derived: frozenset[str] = field(default=frozenset())  # keys whose None means "derive"
    # Fields transformers sets whatever the file says, as (key, value) pairs.
    forced: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.defaults)


def view_of(
    arch: Architecture,
    config: Mapping[str, Any],
    source: str = "config",
    *,
    constructed: bool = False,
) -> ConfigView:
    """``constructed``: ``config`` is a transformers config object's ``to_dict()``, so its
    constructor's rules (``Architecture.forced``) already hold, and a field changed on the
    object since is what the model is built from."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in arch.defaults:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a {arch.family} model "
            f"(expected {'/'.join(arch.model_types)})"
        )
    return ConfigView(
        {**config} if constructed else {**config, **arch.forced},
        arch.defaults[model_type],
        source=source,
        derived=arch.derived,
    )


def describe_with(
    arch: Architecture,
    config: Mapping[str, Any],
    *,
    seq_len: int | None = None,
    name: str | None = None,
    source: str = "config",
    constructed: bool = False,
) -> ModelDescription:
    """The model description of ``config`` (a transformers config as a mapping; see
    :func:`view_of` for ``constructed``)."""
    view = view_of(arch, config, source, constructed=constructed)
    seq = seq_len if seq_len is not None else arch.default_seq_len(view)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq!r}")
    description = arch.describe(view, seq, name or str(config["model_type"]))
    layers = tuple(_with_traits(layer, arch.vocab_blocks) for layer in description.layers)
    return dataclasses.replace(
        description, layers=layers, shared_vocabulary=_shared_vocabulary(view, layers)
    )


def _with_traits(layer: LayerDescription, vocab_blocks: frozenset[str]) -> LayerDescription:
    """A block holding the vocabulary table runs vocab-parallel, and the loss after the head
    keeps the fp32 softmax of its logits (log-softmax in one process, the exponentials of
    each shard under vocab parallelism: as many bytes as the fp32 logits,
    ``output_bytes_per_sample``) whatever the compute precision."""
    if layer.kind == "block" and layer.layer_type in vocab_blocks:
        return dataclasses.replace(layer, vocab_parallel=True)
    if layer.kind == "head":
        return dataclasses.replace(layer, loss_bytes_per_sample=layer.output_bytes_per_sample)
    return layer


def _shared_vocabulary(view: ConfigView, layers: tuple[LayerDescription, ...]) -> tuple[str, ...]:
    """The layers holding a copy of the vocabulary table, as the models tie them: the
    embedding, the blocks that look tokens up in it, and the head when the config ties the
    output embedding."""
    if not getattr(view, "vocab_size", 0):
        return ()
    tied = bool(getattr(view, "tie_word_embeddings", False))
    holders = [
        layer.name
        for layer in layers
        if layer.kind == "embedding"
        or (layer.kind == "block" and layer.vocab_parallel)
        or (layer.kind == "head" and tied)
    ]
    return tuple(holders) if len(holders) > 1 else ()

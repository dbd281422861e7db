"""What every model family provides: the contract between partita.models and its users."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from partita.formats import ModelDescription
from partita.formats.architectures import Architecture, describe_with, view_of
from partita.models.layered import Activations, LayeredModel
from partita.models.tp_layout import TPLayout

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """One model family (GPT, LLaMA, ...), as functions of a transformers config.

    ``build`` makes the :class:`LayeredModel` (randomly initialised; load weights with
    ``from_hf_state_dict``). ``describe`` is analytic and needs no weights. ``tp_layouts`` maps
    each layer type to its tensor-parallel layout. ``reference_model`` builds the unmodified
    transformers model and ``reference_outputs`` runs it, for equality tests and HF export.
    """

    name: str
    model_types: tuple[str, ...]
    unit: str  # "tokens" or "samples": what throughput counts
    check_config: Callable[[PretrainedConfig], None]
    build: Callable[[PretrainedConfig], LayeredModel]
    describe: Callable[[PretrainedConfig, int, str], ModelDescription]
    tp_layouts: Callable[[PretrainedConfig], dict[str, TPLayout]]
    synthetic_batch: Callable[[PretrainedConfig, int, int, torch.Generator], Activations]
    reference_model: Callable[[PretrainedConfig], PreTrainedModel]
    reference_outputs: Callable[[PreTrainedModel, Activations], tuple[torch.Tensor, torch.Tensor]]
    from_hf_state_dict: Callable[[StateDict, PretrainedConfig], StateDict]
    to_hf_state_dict: Callable[[StateDict, PretrainedConfig], StateDict]
    default_seq_len: Callable[[PretrainedConfig], int]
    presets: dict[str, dict[str, Any]]  # name -> transformers config dict (with model_type)


def describe_through(
    arch: Architecture,
) -> Callable[[PretrainedConfig, int, str], ModelDescription]:
    """A family's ``describe``: the torch-free architecture's, on transformers' config (with
    every default filled in), so that ``partita describe`` without torch gives the same."""

    def describe(config: PretrainedConfig, seq_len: int, name: str) -> ModelDescription:
        return describe_with(arch, config.to_dict(), seq_len=seq_len, name=name, constructed=True)

    return describe


def default_seq_len_through(arch: Architecture) -> Callable[[PretrainedConfig], int]:
    return lambda config: arch.default_seq_len(view_of(arch, config.to_dict(), constructed=True))

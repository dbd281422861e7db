"""Activation checkpointing by a layer's ``ckpt`` mode.

``full`` runs the whole layer under ``torch.utils.checkpoint``: only its inputs stay from the
forward, and the backward runs the forward again. ``attention`` (Megatron-LM's "selective"
recompute) checkpoints only the attention core, the part whose saved tensors grow with the
square of the sequence under eager attention: the projections keep their activations and the
backward recomputes the core alone. The core is wrapped before sequence parallelism wraps it,
so Ulysses' all-to-alls are not run again.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.models.attention import Attends, AttentionCore
from partita.models.layered import Activations


def run_layer(layer: nn.Module, acts: Activations, ckpt: str) -> Activations:
    """``layer(acts)``, under checkpointing where ``ckpt`` is ``full``."""
    if ckpt == "full":
        return checkpoint(layer, acts, use_reentrant=False)  # type: ignore[no-any-return]
    return layer(acts)  # type: ignore[no-any-return]


def recompute_attention_cores(layer: nn.Module) -> int:
    """Checkpoint every attention core of ``layer`` (``ckpt`` ``attention``); returns how many
    cores it wrapped (0: the layer has no attention, so the mode changes nothing)."""
    wrapped = 0
    for module in layer.modules():
        if isinstance(module, Attends):
            module.core = recomputed(module.core)
            wrapped += 1
    return wrapped


def recomputed(core: AttentionCore) -> AttentionCore:
    """``core`` whose saved tensors are dropped after the forward and rebuilt in backward
    (the random state is restored, so dropout draws the same mask)."""

    @functools.wraps(core)
    def run(
        q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor, **options: Any
    ) -> torch.Tensor:
        return checkpoint(  # type: ignore[no-any-return]
            core, q_bhsd, k_bhsd, v_bhsd, use_reentrant=False, **options
        )

    return run

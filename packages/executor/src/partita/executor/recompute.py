"""Activation checkpointing by a layer's ``ckpt`` mode.

``full`` runs the whole layer under ``torch.utils.checkpoint``: only its inputs stay from the
forward, and the backward runs the forward again. ``attention`` (Megatron-LM's "selective"
recompute) checkpoints only the attention core, the part whose saved tensors grow with the
square of the sequence under eager attention: the projections keep their activations and the
backward recomputes the core alone. The core is wrapped before sequence parallelism wraps it,
so Ulysses' all-to-alls are not run again. ``selective-op`` (TorchTitan's "selective op"
policy) runs the layer under checkpointing that keeps the outputs of every other matrix
multiplication (the 1st, 3rd, ... of the layer's forward) and of the attention kernel, and
recomputes the rest in the backward: the other matmuls and every elementwise op (norms,
activations, rotary embeddings, residual adds, dropout with its random state restored). Like
``full`` it can be recomputed once per backward pass through the layer (ZB-H1's ``W`` runs the
chunk's backward a second time where a layer is checkpointed), which torch's own selective
checkpointing refuses.
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from partita.models.attention import Attends, AttentionCore
from partita.models.layered import Activations


def run_layer(layer: nn.Module, acts: Activations, ckpt: str) -> Activations:
    """``layer(acts)``, under checkpointing where ``ckpt`` is ``full`` or ``selective-op``."""
    if ckpt == "full":
        return checkpoint(layer, acts, use_reentrant=False)  # type: ignore[no-any-return]
    if ckpt == "selective-op":
        return checkpoint(  # type: ignore[no-any-return]
            layer, acts, use_reentrant=False, context_fn=selective_op_contexts
        )
    return layer(acts)  # type: ignore[no-any-return]


# The matmuls of linear layers as the dispatcher sees them (``F.linear`` decomposes into
# ``mm``, or ``addmm`` with a bias); batched matmuls inside an eager attention are not counted.
_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
# Attention kernels whose outputs are kept: recomputing them costs the most per byte saved.
_ATTENTION_KERNELS = (
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
)


def _kept_kernels() -> frozenset[Any]:
    """The attention kernels whose outputs the policy keeps, looked up once, and once more
    when flash-attn is imported (the executor imports it at its first attention call, after
    the first layer's checkpoint contexts exist)."""
    return _kernels_kept("flash_attn" in sys.modules)


@functools.cache
def _kernels_kept(flash_attn_imported: bool) -> frozenset[Any]:
    return frozenset((*_ATTENTION_KERNELS, *(_flash_attn_kernels() if flash_attn_imported else ())))


def _flash_attn_kernels() -> tuple[Any, ...]:
    """flash-attn's forward ops where the package registered them (GPU installs)."""
    namespace = torch.ops.flash_attn
    found = []
    for name in ("_flash_attn_forward", "_flash_attn_varlen_forward"):
        try:
            found.append(getattr(namespace, name).default)
        except (AttributeError, RuntimeError):
            continue
    return tuple(found)


def selective_op_contexts() -> tuple[Any, Any]:
    """Fresh checkpoint contexts for one layer call under ``ckpt: selective-op``. The
    policy decides in the forward (torch 2.13 asks it there only; a torch that asks again in
    the recomputation counts the matmuls apart there, so both keep the same ones)."""
    counts = {False: 0, True: 0}
    kept_kernels = _kept_kernels()

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        if op in _MATMULS:
            counts[ctx.is_recompute] += 1
            odd = counts[ctx.is_recompute] % 2 == 1
            return CheckpointPolicy.MUST_SAVE if odd else CheckpointPolicy.PREFER_RECOMPUTE
        if op in kept_kernels:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    forward, recompute = create_selective_checkpoint_contexts(policy)
    return forward, _Rerunnable(recompute)


class _Rerunnable:
    """The selective checkpoint's recompute context, which can run more than once.

    torch marks each kept output consumed once a recomputation has read it, and refuses a
    second one ("backward an extra time"); but where a split backward's ``W`` runs the chunk's
    backward again through the graph ``B`` kept (``trainer._backward_weight``), the layer is
    recomputed once per pass, as under ``full``. Each entry puts back the kept outputs as the
    forward left them; they are held until the layer's graph is freed, as an un-checkpointed
    layer's saved tensors are."""

    def __init__(self, mode: Any) -> None:
        self.mode = mode
        self.kept: dict[Any, Any] | None = None

    def __enter__(self) -> Any:
        storage = self.mode.storage  # op -> that op's kept outputs (torch's SAC storage)
        if self.kept is None:
            self.kept = {op: copy.copy(outputs) for op, outputs in storage.items()}
        else:
            storage.clear()
            storage.update((op, copy.copy(outputs)) for op, outputs in self.kept.items())
        return self.mode.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.mode.__exit__(*exc)


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

"""The attention core: one swappable function from projected q, k, v to the attention output.

Model code calls ``module.core(q, k, v, bias=..., causal=..., scale=..., dropout_p=...)`` on
tensors shaped ``[batch, heads, seq, head_dim]``; the number of heads is whatever the local
projections hold, so tensor parallelism needs no change here. ``bias`` is an additive float
mask broadcastable to ``[batch, heads, seq_q, seq_k]`` (padding masks, T5's relative position
bias, Swin's window bias). Ulysses sequence parallelism wraps a core. :func:`select_attention`
turns a user's ``--attention`` choice into a core and the name of the kernel a run records.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class AttentionCore(Protocol):
    def __call__(
        self,
        q_bhsd: torch.Tensor,
        k_bhsd: torch.Tensor,
        v_bhsd: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        causal: bool = False,
        scale: float | None = None,
        dropout_p: float = 0.0,
    ) -> torch.Tensor: ...


def sdpa_attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention (math, flash or memory-efficient kernel)."""
    if bias is not None and causal:
        # SDPA refuses both at once; fold causality into the additive bias.
        seq_q, seq_k = q_bhsd.shape[-2], k_bhsd.shape[-2]
        future = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q_bhsd.device).triu(1)
        bias = torch.where(future, torch.finfo(bias.dtype).min, bias)
        causal = False
    return F.scaled_dot_product_attention(
        q_bhsd, k_bhsd, v_bhsd, attn_mask=bias, is_causal=causal, scale=scale, dropout_p=dropout_p
    )


def eager_attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain matmul-softmax-matmul: slow, but every operation is visible (FLOP counting)."""
    scores_bhqk = (q_bhsd @ k_bhsd.transpose(-1, -2)) * (
        scale if scale is not None else q_bhsd.shape[-1] ** -0.5
    )
    if bias is not None:
        scores_bhqk = scores_bhqk + bias
    if causal:
        seq_q, seq_k = scores_bhqk.shape[-2:]
        future = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q_bhsd.device).triu(1)
        scores_bhqk = scores_bhqk.masked_fill(future, torch.finfo(scores_bhqk.dtype).min)
    probs_bhqk = torch.softmax(scores_bhqk, dim=-1)
    if dropout_p:
        probs_bhqk = F.dropout(probs_bhqk, p=dropout_p)
    return probs_bhqk @ v_bhsd


ATTENTION_CHOICES: tuple[str, ...] = ("auto", "flash", "sdpa", "eager")


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def is_flash_device(device: torch.device) -> bool:
    """Whether flash-attn's kernels can run on ``device``: CUDA only. One predicate, so that a
    CPU test can stand in for a GPU by replacing it."""
    return device.type == "cuda"


def flash_attn_available(device: torch.device) -> bool:
    return is_flash_device(device) and flash_attn_installed()


def flash_attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """flash-attn's kernel for half-precision CUDA tensors without a bias; SDPA otherwise.

    The fallback is per call: flash-attn takes neither an additive bias (BERT's padding, T5's
    relative positions, Swin's windows) nor fp32, and aligns a causal mask of unequal query
    and key lengths to the bottom right where SDPA and eager align it to the top left.
    """
    seq_q, seq_k = q_bhsd.shape[-2], k_bhsd.shape[-2]
    usable = (
        bias is None
        and q_bhsd.dtype in (torch.float16, torch.bfloat16)
        and (not causal or seq_q == seq_k)
        and flash_attn_available(q_bhsd.device)
    )
    if not usable:
        return sdpa_attention(
            q_bhsd, k_bhsd, v_bhsd, bias=bias, causal=causal, scale=scale, dropout_p=dropout_p
        )
    from flash_attn import flash_attn_func  # optional extra, present only on GPU installs

    out_bshd = flash_attn_func(
        q_bhsd.transpose(1, 2),
        k_bhsd.transpose(1, 2),
        v_bhsd.transpose(1, 2),
        dropout_p=dropout_p,
        softmax_scale=scale,
        causal=causal,
    )
    return out_bshd.transpose(1, 2)


_CORES: dict[str, AttentionCore] = {
    "flash": flash_attention,
    "sdpa": sdpa_attention,
    "eager": eager_attention,
}


def select_attention(choice: str, device: torch.device) -> tuple[AttentionCore, str]:
    """The core for an ``--attention`` choice on ``device``, and the kernel's name to record.

    ``auto`` is flash-attn where it is installed and ``device`` is CUDA, else SDPA; ``flash``
    where flash-attn cannot run is a ``ValueError``. The name is the kernel selected, not one
    observed per call: the flash core still hands SDPA the calls flash-attn cannot take (a
    bias, fp32; see :func:`flash_attention`), so a run recorded as ``flash`` ran those on SDPA.
    """
    if choice not in ATTENTION_CHOICES:
        raise ValueError(
            f"--attention: expected one of {', '.join(ATTENTION_CHOICES)}, got {choice!r}"
        )
    if choice == "auto":
        choice = "flash" if flash_attn_available(device) else "sdpa"
    elif choice == "flash":
        # The device first: on a CPU machine installing flash-attn would not help.
        if not is_flash_device(device):
            raise ValueError(f"--attention flash: flash-attn needs a CUDA device, got {device}")
        if not flash_attn_installed():
            raise ValueError(
                "--attention flash: flash-attn is not installed (pip install flash-attn)"
            )
    return _CORES[choice], choice


class Attends(nn.Module):
    """Base of every module that calls an attention core; holds the swappable ``core``."""

    def __init__(self) -> None:
        super().__init__()
        self.core: AttentionCore = sdpa_attention


def set_attention_core(model: nn.Module, core: AttentionCore) -> int:
    """Use ``core`` in every attention module of ``model``; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, Attends):
            module.core = core
            changed += 1
    return changed


def apply_attention(model: nn.Module, choice: str, device: torch.device) -> str:
    """Select the core for ``choice`` on ``device`` and use it in every attention module of
    ``model``; returns the kernel's name. Call it before sequence parallelism wraps the core."""
    core, name = select_attention(choice, device)
    set_attention_core(model, core)
    return name

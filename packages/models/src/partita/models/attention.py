"""The attention core: one swappable function from projected q, k, v to the attention output.

Model code calls ``module.core(q, k, v, bias=..., causal=..., scale=..., dropout_p=...)`` on
tensors shaped ``[batch, heads, seq, head_dim]``; the number of heads is whatever the local
projections hold, so tensor parallelism needs no change here. ``bias`` is an additive float
mask broadcastable to ``[batch, heads, seq_q, seq_k]`` (padding masks, T5's relative position
bias, Swin's window bias). Ulysses sequence parallelism wraps a core; flash-attn replaces it
where installed.
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


def flash_attn_available(device: torch.device) -> bool:
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


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
    """flash-attn's kernel for half-precision CUDA tensors without a bias; SDPA otherwise."""
    usable = (
        bias is None
        and q_bhsd.dtype in (torch.float16, torch.bfloat16)
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


def default_attention_core(device: torch.device) -> AttentionCore:
    return flash_attention if flash_attn_available(device) else sdpa_attention


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

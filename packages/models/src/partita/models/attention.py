"""The attention core: one swappable function from projected q, k, v to the attention output.

Model code calls ``module.core(q, k, v, bias=..., causal=..., scale=..., dropout_p=...)`` on
tensors shaped ``[batch, heads, seq, head_dim]``, plus ``window=W`` for sliding-window causal
attention (each query sees itself and the ``W - 1`` keys before it). The number of heads is
whatever the local projections hold, so tensor parallelism needs no change here. ``bias`` is
an additive float mask broadcastable to ``[batch, heads, seq_q, seq_k]`` (padding masks, T5's
relative position bias, Swin's window bias). Ulysses sequence parallelism wraps a core.
:func:`select_attention` turns a user's ``--attention`` choice into a core and the name of
the kernel a run records.
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
        window: int | None = None,
    ) -> torch.Tensor: ...


def hidden_keys(seq_q: int, seq_k: int, window: int | None, device: torch.device) -> torch.Tensor:
    """``[seq_q, seq_k]`` True where causal attention (top-left aligned) hides the key: the
    future, and with a ``window`` the keys ``window`` or more positions back (transformers'
    sliding-window mask: key index > query index - window)."""
    q_q1 = torch.arange(seq_q, device=device)[:, None]
    k_1k = torch.arange(seq_k, device=device)[None, :]
    hidden_qk = k_1k > q_q1
    if window is not None:
        hidden_qk |= k_1k <= q_q1 - window
    return hidden_qk


def _needed_window(window: int | None, seq_q: int, seq_k: int) -> int | None:
    """None where the window hides nothing causality does not (it spans the sequence), so a
    long-window model (Mistral's 4096) at a shorter length keeps the unmasked kernels."""
    return None if window is None or window >= max(seq_q, seq_k) else window


def sdpa_attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    window: int | None = None,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention (math, flash or memory-efficient kernel)."""
    assert window is None or causal, "a sliding window is only defined for causal attention"
    window = _needed_window(window, q_bhsd.shape[-2], k_bhsd.shape[-2])
    if causal and (bias is not None or window is not None):
        # SDPA takes no window and refuses a bias with is_causal; fold both into the bias.
        if bias is None:
            bias = torch.zeros((), dtype=q_bhsd.dtype, device=q_bhsd.device)
        hidden_qk = hidden_keys(q_bhsd.shape[-2], k_bhsd.shape[-2], window, q_bhsd.device)
        bias = torch.where(hidden_qk, torch.finfo(bias.dtype).min, bias)
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
    window: int | None = None,
) -> torch.Tensor:
    """Plain matmul-softmax-matmul: slow, but every operation is visible (FLOP counting)."""
    scores_bhqk = (q_bhsd @ k_bhsd.transpose(-1, -2)) * (
        scale if scale is not None else q_bhsd.shape[-1] ** -0.5
    )
    if bias is not None:
        scores_bhqk = scores_bhqk + bias
    assert window is None or causal, "a sliding window is only defined for causal attention"
    if causal:
        seq_q, seq_k = scores_bhqk.shape[-2:]
        hidden_qk = hidden_keys(seq_q, seq_k, window, q_bhsd.device)
        scores_bhqk = scores_bhqk.masked_fill(hidden_qk, torch.finfo(scores_bhqk.dtype).min)
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
    window: int | None = None,
) -> torch.Tensor:
    """flash-attn's kernel for half-precision CUDA tensors without a bias; SDPA otherwise.

    The fallback is per call: flash-attn takes neither an additive bias (BERT's padding, T5's
    relative positions, Swin's windows) nor fp32, and aligns a causal mask of unequal query
    and key lengths to the bottom right where SDPA and eager align it to the top left.
    """
    seq_q, seq_k = q_bhsd.shape[-2], k_bhsd.shape[-2]
    window = _needed_window(window, seq_q, seq_k)
    usable = (
        bias is None
        and q_bhsd.dtype in (torch.float16, torch.bfloat16)
        and (not causal or seq_q == seq_k)
        and flash_attn_available(q_bhsd.device)
    )
    if not usable:
        return sdpa_attention(
            q_bhsd,
            k_bhsd,
            v_bhsd,
            bias=bias,
            causal=causal,
            scale=scale,
            dropout_p=dropout_p,
            window=window,
        )
    from flash_attn import flash_attn_func  # optional extra, present only on GPU installs

    # flash-attn's window is (keys left, keys right) of the query, both ends included.
    sliding = {} if window is None else {"window_size": (window - 1, 0)}
    out_bshd = flash_attn_func(
        q_bhsd.transpose(1, 2),
        k_bhsd.transpose(1, 2),
        v_bhsd.transpose(1, 2),
        dropout_p=dropout_p,
        softmax_scale=scale,
        causal=causal,
        **sliding,
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

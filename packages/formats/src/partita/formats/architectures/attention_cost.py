"""The attention core's share of a layer's FLOPs, as the descriptions record it.

``attention_flops_per_sample`` is the part of ``forward_flops_per_sample`` spent on the
scores (``QKᵀ``) and the mixing (``AV``), on the descriptions' dense scale (``4·s_q·s_k·width``
for a full attention). ``attention_kernel_flops_per_sample`` is what a kernel that skips
masked blocks (flash-attn, SDPA's flash and memory-efficient backends) computes: the pairs a
causal, possibly windowed, mask leaves. The simulator prices the rest of the forward as
matrix multiplications and the kernel's FLOPs at the attention kernel's own efficiency.
"""

from __future__ import annotations

import dataclasses

from partita.formats.model_description import LayerDescription


def causal_pairs(s: int, window: int | None = None) -> float:
    """Query-key pairs a causal mask over ``s`` tokens leaves, each query seeing itself and
    the ``window - 1`` keys before it when ``window`` is given."""
    if window is None or window >= s:
        return s * (s + 1) / 2
    return window * s - window * (window - 1) / 2


def full_attention(s_q: int, s_k: int, width: int) -> tuple[float, float]:
    """(dense, kernel) FLOPs of an unmasked attention of ``s_q`` queries over ``s_k`` keys
    with ``width`` = heads x head size."""
    dense = 4.0 * s_q * s_k * width
    return dense, dense


def causal_attention(s: int, width: int) -> tuple[float, float]:
    """(dense, kernel) FLOPs of a causal self-attention over ``s`` tokens."""
    return 4.0 * s * s * width, 4.0 * causal_pairs(s) * width


def with_attention(layer: LayerDescription, flops: tuple[float, float]) -> LayerDescription:
    dense, kernel = flops
    assert kernel <= dense <= layer.forward_flops_per_sample * (1 + 1e-9), (layer.name, flops)
    return dataclasses.replace(
        layer,
        attention_flops_per_sample=float(dense),
        attention_kernel_flops_per_sample=float(kernel),
    )

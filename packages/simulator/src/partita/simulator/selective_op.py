"""What ``ckpt: selective-op`` keeps and runs again, from a layer's description.

The executor's policy (``partita.executor.recompute``, TorchTitan's "selective op") keeps
the outputs of every other matmul of a layer's forward (the 1st, 3rd, ...) and of the
attention kernel, and recomputes the rest in the backward: the other matmuls and every
elementwise op. Which matmuls those are depends on their order, which a description does
not list; the blocks of every family here (and TorchTitan's Llama) run them as ``q, k, v,
o`` per attention, then the feed-forward's (``gate, up, down`` where gated, ``in, out``
otherwise). So a Llama block keeps q, v, gate and down and recomputes k, o and up.

Profiles measure both where they can (model profile v5); these estimates serve spec-sheet
profiles and older files.
"""

from __future__ import annotations

from dataclasses import dataclass

from partita.formats import LayerDescription
from partita.formats.common import SpMode


@dataclass(frozen=True)
class Matmul:
    inner: float  # the contracted dimension
    width: float  # output elements per token
    splits_output: bool  # column-parallel: its output is split over tp even without SP


def block_matmuls(layer: LayerDescription) -> tuple[Matmul, ...] | None:
    """A block's linear matmuls in forward order; None where the description does not say
    (no attention or no feed-forward, or FLOPs that match no known layout)."""
    if layer.kind != "block" or not layer.num_heads or not layer.ffn_size:
        return None
    h, ffn = float(layer.hidden_size), float(layer.ffn_size)
    kv = h * layer.num_kv_heads / layer.num_heads
    attention = (
        Matmul(h, h, True),
        Matmul(h, kv, True),
        Matmul(h, kv, True),
        Matmul(h, h, False),
    )
    attentions = attention_count(layer)
    projections = attentions * sum(2 * m.inner * m.width for m in attention)
    weights = max(0.0, layer.forward_flops_per_sample - layer.attention_flops_per_sample)
    per_token = weights / layer.seq_len
    ffn_matmuls = round((per_token - projections) / (2 * h * ffn))
    feed_forward: tuple[Matmul, ...]
    if ffn_matmuls == 3:
        feed_forward = (Matmul(h, ffn, True), Matmul(h, ffn, True), Matmul(ffn, h, False))
    elif ffn_matmuls == 2:
        feed_forward = (Matmul(h, ffn, True), Matmul(ffn, h, False))
    else:
        return None
    return attention * attentions + feed_forward


def recomputed_matmuls(layer: LayerDescription) -> tuple[Matmul, ...]:
    """The matmuls the backward runs again: the 2nd, 4th, ... (none where unknown)."""
    matmuls = block_matmuls(layer) or ()
    return matmuls[1::2]


def recomputed_flops_share(layer: LayerDescription) -> float:
    """Of the layer's forward FLOPs, the share of the matmuls run again."""
    if layer.forward_flops_per_sample <= 0:
        return 0.0
    again = sum(2 * m.inner * m.width for m in recomputed_matmuls(layer)) * layer.seq_len
    return min(1.0, again / layer.forward_flops_per_sample)


def saved_elements_per_sample(layer: LayerDescription, *, tp: int, sp: SpMode) -> float | None:
    """Elements one device keeps per sample: the layer's input, the kept matmuls' outputs
    and each attention kernel's output (its softmax statistics are a head's few floats per
    query, left out). Under sp ``none`` the input and the row-parallel outputs are whole on
    every tensor-parallel rank; the sequence-parallel modes split everything. None where the
    layer's matmuls are not known."""
    matmuls = block_matmuls(layer)
    if matmuls is None:
        return None
    h = float(layer.hidden_size)
    attentions = attention_count(layer)
    kept = matmuls[0::2]
    if sp == "none":
        whole = h + sum(m.width for m in kept if not m.splits_output)
        split = sum(m.width for m in kept if m.splits_output) + attentions * h
        per_token = whole + split / tp
    else:
        per_token = (h + sum(m.width for m in kept) + attentions * h) / tp
    return per_token * layer.seq_len


def attention_count(layer: LayerDescription) -> int:
    """Attentions in a block that has attention: the description does not list sub-layers;
    T5's decoder blocks have a cross-attention as well."""
    return 2 if "decoder" in layer.layer_type and layer.layer_type.startswith("t5") else 1

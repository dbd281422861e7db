"""How long a layer's computation takes on a spec-sheet GPU, by the kind of work it is.

A flat share of the peak for every FLOP cannot hold from a 1B model to a 1T one: large
matrix multiplications run near the GEMM kernels' best, small ones and the memory-bound
work between them (norms, activations, residual adds, casts) do not, and attention runs at
its own kernel's rate. A layer's time, per pass, is the sum of:

- **matrix multiplications**: the description's forward FLOPs less the attention core's,
  split into the attention projections (``h`` by ``h / tp``) and the feed-forward ones (``h``
  by ``ffn / tp``; the head ``h`` by ``vocab / tp``), each priced by a roofline — the larger
  of its FLOPs at ``gemm`` x a shape factor of the peak and its operands' bytes at the
  memory bandwidth. The shape factor ``d / (d + GEMM_HALF_DIM)`` of each dimension stands
  for the tiles a small dimension leaves idle;
- **the attention core**: with a fused kernel (flash-attn, SDPA's flash and memory-efficient
  backends: ``kernel="sdpa"`` or ``"flash"``), the FLOPs a kernel that skips masked pairs
  computes (``attention_kernel_flops_per_sample``) at ``attention`` x the peak, its backward
  2.5 times the forward's work (it recomputes the scores). With the scores materialised
  (``kernel="eager"``: the matmuls, softmax and masking as separate kernels, as eager
  PyTorch or Megatron-LM before FlashAttention), every pair's two matmuls at the GEMM rate
  with the head size as their inner dimension, and the ``[s, s]`` scores of every head
  written and read ``SCORE_PASSES_FORWARD`` times forward (twice that backward) at the memory
  bandwidth;
- **memory-bound work**: the activations a layer saves are written once and read once in
  forward, and twice as much moves in backward, at ``memory`` x the memory bandwidth;
- a fixed launch overhead per pass.

Backward matrix multiplications are twice the forward's. Everything is per device: a
tensor-parallel degree divides the FLOPs and the activations as ``specsheet`` divides them.
The efficiencies are one calibration per GPU kind, from public figures named in
``specsheet.PRESETS``; a cluster spec may set its own (``efficiencies``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from partita.formats import LayerDescription
from partita.formats.common import SpMode
from partita.simulator.selective_op import recomputed_matmuls

# A dimension of this size reaches half the GEMM kernels' best rate, one much larger all of
# it: tiles of 128 x 128 (or 64 wide) leave a small dimension's remainder idle.
GEMM_HALF_DIM = 64
# Flash attention's backward recomputes the scores: about 2.5 times the forward's matmuls.
ATTENTION_BACKWARD_FACTOR = 2.5
# Bytes moved by memory-bound work per byte of saved activation: written and read once in
# forward, twice as much in backward (the saved tensors read, their gradients written and read).
MEMORY_TRAFFIC_FORWARD = 2.0
MEMORY_TRAFFIC_BACKWARD = 4.0
EFFICIENCY_KEYS = ("gemm", "attention", "memory")
# Materialised attention: the scores are written by QKᵀ, read and written by the (fused)
# masked softmax, and read by the mixing matmul.
SCORE_PASSES_FORWARD = 4


@dataclass(frozen=True)
class ComputeModel:
    """One device's rates for one precision."""

    peak_flops_per_s: float
    memory_bandwidth_bytes_per_s: float | None  # None: memory-bound work is not priced
    element_bytes: int  # of the compute precision
    gemm: float  # share of the peak the best GEMMs reach
    attention: float  # share of the peak the attention kernel reaches
    memory: float  # share of the memory bandwidth streaming work reaches
    overhead_s: float  # per layer and pass
    kernel: str = "sdpa"  # the attention kernel: "sdpa" or "flash" fused, "eager" materialised

    def layer_seconds(
        self,
        layer: LayerDescription,
        *,
        tp: int,
        sp: SpMode,
        batch: int,
        activation_bytes: float,
    ) -> tuple[float, float]:
        """(forward, backward) seconds of ``layer`` on one device: ``batch`` samples, a
        tensor-parallel degree ``tp`` under ``sp``, ``activation_bytes`` the device's saved
        activations per sample (already in the compute precision and split over tp)."""
        gemm = self._gemm_seconds(layer, tp=tp, sp=sp, batch=batch)
        if self.kernel == "eager":
            attention_forward, attention_backward = self._materialised(layer, tp=tp, batch=batch)
        else:
            kernel = layer.attention_kernel_flops_per_sample * batch / tp
            attention_forward = kernel / (self.peak_flops_per_s * self.attention)
            attention_backward = ATTENTION_BACKWARD_FACTOR * attention_forward
        moved = activation_bytes * batch
        memory_forward = self._streaming(MEMORY_TRAFFIC_FORWARD * moved)
        memory_backward = self._streaming(MEMORY_TRAFFIC_BACKWARD * moved)
        forward = gemm + attention_forward + memory_forward + self.overhead_s
        backward = 2 * gemm + attention_backward + memory_backward + self.overhead_s
        return forward, backward

    def selective_recompute_seconds(
        self,
        layer: LayerDescription,
        *,
        tp: int,
        sp: SpMode,
        batch: int,
        activation_bytes: float,
    ) -> float:
        """What ``ckpt: selective-op`` runs again in the backward (``selective_op``): every
        other matmul, and all the memory-bound work of the forward."""
        tokens = batch * layer.seq_len
        seconds = self.overhead_s
        for matmul in recomputed_matmuls(layer):
            flops = 2 * matmul.inner * matmul.width * tokens / tp
            if sp == "ulysses":
                m, n, k = tokens / tp, matmul.width, matmul.inner
            elif matmul.splits_output:
                m, n, k = tokens, matmul.width / tp, matmul.inner
            else:
                m, n, k = tokens, matmul.width, matmul.inner / tp
            seconds += self._roofline(flops, m=m, n=n, k=k)
        return seconds + self._streaming(MEMORY_TRAFFIC_FORWARD * activation_bytes * batch)

    def _streaming(self, nbytes: float) -> float:
        """Seconds of memory-bound work moving ``nbytes`` (0 where it is not priced)."""
        if not self.memory_bandwidth_bytes_per_s:
            return 0.0
        return nbytes / (self.memory_bandwidth_bytes_per_s * self.memory)

    def _materialised(self, layer: LayerDescription, *, tp: int, batch: int) -> tuple[float, float]:
        """(forward, backward) seconds of an attention whose scores are written to memory:
        dense matmuls of inner size ``head`` and the scores moved at the bandwidth."""
        dense = layer.attention_flops_per_sample * batch / tp
        if dense == 0 or not layer.num_heads:
            return 0.0, 0.0
        head = layer.hidden_size / layer.num_heads
        pairs = dense / (4 * head)  # query-key pairs of every head: dense = 4 pairs head
        side = max(1.0, math.sqrt(pairs / max(1.0, layer.num_heads / tp * batch)))
        shape = _shape(side, side, head)
        forward = dense / (self.peak_flops_per_s * self.gemm * shape)
        if self.memory_bandwidth_bytes_per_s:
            scores = pairs * self.element_bytes
            rate = self.memory_bandwidth_bytes_per_s * self.memory
            forward += SCORE_PASSES_FORWARD * scores / rate
        return forward, 2 * forward

    def _gemm_seconds(self, layer: LayerDescription, *, tp: int, sp: SpMode, batch: int) -> float:
        flops = max(0.0, layer.forward_flops_per_sample - layer.attention_flops_per_sample)
        if flops == 0:
            return 0.0
        tokens = batch * layer.seq_len
        h = layer.hidden_size
        if layer.kind == "block" and layer.num_heads and layer.ffn_size:
            # q and o of width h, k and v of width h * kv / heads: the projections' FLOPs.
            width = 2 * h + 2 * h * layer.num_kv_heads / layer.num_heads
            projections = min(flops, 2.0 * layer.seq_len * h * width)
            groups: list[tuple[float, float]] = [
                (projections, h),
                (flops - projections, layer.ffn_size),
            ]
        else:
            # The head splits its outputs (the vocabulary or the labels); others keep h.
            out = flops / (2.0 * layer.seq_len * h) if layer.kind == "head" else h
            groups = [(flops, max(1.0, out))]
        seconds = 0.0
        for group_flops, width in groups:
            if group_flops <= 0:
                continue
            m: float
            n: float
            if sp == "ulysses":  # whole weights on a sequence shard
                m, n = tokens / tp, width
            else:  # the sequence whole (gathered under Megatron-SP), the weights split
                m, n = tokens, width / tp
            seconds += self._roofline(group_flops * batch / tp, m=m, n=n, k=h)
        return seconds

    def _roofline(self, flops: float, *, m: float, n: float, k: float) -> float:
        compute = flops / (self.peak_flops_per_s * self.gemm * _shape(m, n, k))
        if not self.memory_bandwidth_bytes_per_s:
            return compute
        # One GEMM of these dimensions moves its operands and result once; ``flops`` may be
        # several of them (2 m n k each).
        count = flops / (2 * m * n * k)
        moved = count * self.element_bytes * (m * k + k * n + m * n)
        return max(compute, moved / (self.memory_bandwidth_bytes_per_s * self.memory))


def _shape(*dims: float) -> float:
    """The share of the GEMM rate a matmul of these dimensions reaches."""
    share = 1.0
    for dim in dims:
        share *= dim / (dim + GEMM_HALF_DIM)
    return share

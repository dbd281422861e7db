"""The spec-sheet compute model (``compute_model``): GEMMs by shape under a roofline, the
attention kernel at its own rate, memory-bound work at the memory bandwidth."""

from __future__ import annotations

import dataclasses

import pytest

from partita.formats import LayerDescription
from partita.simulator.compute_model import (
    ATTENTION_BACKWARD_FACTOR,
    GEMM_HALF_DIM,
    MEMORY_TRAFFIC_BACKWARD,
    MEMORY_TRAFFIC_FORWARD,
    ComputeModel,
)

PEAK, BANDWIDTH = 1000e12, 3e12


def model(**changes: object) -> ComputeModel:
    base = ComputeModel(
        peak_flops_per_s=PEAK,
        memory_bandwidth_bytes_per_s=None,
        element_bytes=2,
        gemm=0.8,
        attention=0.5,
        memory=0.9,
        overhead_s=0.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def block(
    h: int = 8192, ffn: int = 28672, s: int = 4096, heads: int = 64, kv: int = 8
) -> LayerDescription:
    """A LLaMA-style block: q/o of width h, k/v of h * kv / heads, three FFN matmuls."""
    width = 2 * h + 2 * h * kv / heads
    gemm = 2 * s * h * width + 6 * s * h * ffn
    attention = 4.0 * s * s * h
    return LayerDescription(
        name="blocks.0",
        kind="block",
        layer_type="llama_block",
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=kv,
        ffn_size=ffn,
        seq_len=s,
        params=0,
        forward_flops_per_sample=gemm + attention,
        backward_flops_per_sample=2 * (gemm + attention),
        activation_bytes_per_sample=1e9,
        output_bytes_per_sample=1e6,
        attention_flops_per_sample=attention,
        attention_kernel_flops_per_sample=attention / 2,
    )


def shape(*dims: float) -> float:
    out = 1.0
    for d in dims:
        out *= d / (d + GEMM_HALF_DIM)
    return out


def test_gemms_run_at_the_gemm_share_times_each_dimensions_shape_factor() -> None:
    layer = dataclasses.replace(block(), attention_flops_per_sample=0.0,
                                attention_kernel_flops_per_sample=0.0)  # fmt: skip
    h, f, s = 8192, 28672, 4096
    projections = 2 * s * h * (2 * h + 2 * h / 8)
    ffn = layer.forward_flops_per_sample - projections
    forward, backward = model().layer_seconds(layer, tp=8, sp="none", batch=2, activation_bytes=0)
    expected = 2 / 8 * (projections / shape(2 * s, h / 8, h) + ffn / shape(2 * s, f / 8, h))
    assert forward == pytest.approx(expected / (PEAK * 0.8))
    assert backward == pytest.approx(2 * forward)


def test_a_narrow_split_is_less_efficient_than_a_wide_one() -> None:
    """Splitting the same work over more ranks narrows each GEMM: per rank it takes more than
    1/tp of the time (what makes tp 8 of a small model cost)."""
    small = block(h=2048, ffn=8192, s=2048, heads=16, kv=16)
    one, _ = model().layer_seconds(small, tp=1, sp="none", batch=1, activation_bytes=0)
    eight, _ = model().layer_seconds(small, tp=8, sp="none", batch=1, activation_bytes=0)
    assert eight > one / 8 * 1.05
    # The whole model's GEMMs at scale reach nearly the GEMM share.
    big = dataclasses.replace(small, attention_kernel_flops_per_sample=0.0)
    gemm_flops = big.forward_flops_per_sample - big.attention_flops_per_sample
    seconds, _ = model().layer_seconds(big, tp=1, sp="none", batch=8, activation_bytes=0)
    assert 0.85 < (gemm_flops * 8 / (PEAK * 0.8)) / seconds < 1.0


def test_ulysses_keeps_whole_weights_on_a_shard_of_the_sequence() -> None:
    layer = block()
    megatron, _ = model().layer_seconds(layer, tp=4, sp="megatron", batch=1, activation_bytes=0)
    ulysses, _ = model().layer_seconds(layer, tp=4, sp="ulysses", batch=1, activation_bytes=0)
    # Same FLOPs per rank, wider weights and fewer tokens: nearly the same time, not equal.
    assert ulysses == pytest.approx(megatron, rel=0.05) and ulysses != megatron


def test_attention_runs_at_its_kernels_rate_and_backward_recomputes() -> None:
    layer = block()
    without = dataclasses.replace(layer, attention_kernel_flops_per_sample=0.0)
    f1, b1 = model().layer_seconds(layer, tp=2, sp="none", batch=1, activation_bytes=0)
    f0, b0 = model().layer_seconds(without, tp=2, sp="none", batch=1, activation_bytes=0)
    attention = layer.attention_kernel_flops_per_sample / 2 / (PEAK * 0.5)
    assert f1 - f0 == pytest.approx(attention)
    assert b1 - b0 == pytest.approx(ATTENTION_BACKWARD_FACTOR * attention)


def test_memory_bound_work_moves_the_saved_activations_at_the_bandwidth() -> None:
    layer = dataclasses.replace(block(), forward_flops_per_sample=0.0,
                                attention_flops_per_sample=0.0,
                                attention_kernel_flops_per_sample=0.0)  # fmt: skip
    with_bandwidth = model(memory_bandwidth_bytes_per_s=BANDWIDTH)
    forward, backward = with_bandwidth.layer_seconds(
        layer, tp=1, sp="none", batch=3, activation_bytes=2e8
    )
    rate = BANDWIDTH * 0.9
    assert forward == pytest.approx(MEMORY_TRAFFIC_FORWARD * 3 * 2e8 / rate)
    assert backward == pytest.approx(MEMORY_TRAFFIC_BACKWARD * 3 * 2e8 / rate)
    # Without a known bandwidth the memory-bound work is not priced.
    assert model().layer_seconds(layer, tp=1, sp="none", batch=3, activation_bytes=2e8) == (0, 0)


def test_a_thin_gemm_is_bound_by_memory_traffic() -> None:
    """A head of 4 labels over 1024 features: its operands' bytes outweigh its FLOPs."""
    head = LayerDescription(
        name="head", kind="head", layer_type="vit_head", hidden_size=1024, num_heads=0,
        num_kv_heads=0, ffn_size=0, seq_len=1, params=0,
        forward_flops_per_sample=2 * 1024 * 4, backward_flops_per_sample=4 * 1024 * 4,
        activation_bytes_per_sample=0, output_bytes_per_sample=16,
    )  # fmt: skip
    fast = model(memory_bandwidth_bytes_per_s=BANDWIDTH)
    forward, _ = fast.layer_seconds(head, tp=1, sp="none", batch=64, activation_bytes=0)
    m, n, k = 64, 4, 1024
    traffic = 2 * (m * k + k * n + m * n) / (BANDWIDTH * 0.9)
    assert forward == pytest.approx(traffic)
    assert traffic > 2 * m * n * k / (PEAK * 0.8 * shape(m, n, k))

"""Shared benchmark inputs: LLaMA-shaped model descriptions written out by formula.

The simulator and the search need no torch, so these are built here rather than by
``partita.models`` (whose test-free venv would need torch).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from partita.formats import LayerDescription, ModelDescription


def llama_shaped(
    *, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, seq: int, vocab: int
) -> ModelDescription:
    head_dim = hidden // heads
    block_params = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * ffn

    def layer(name: str, kind: str, params: int, flops: float) -> LayerDescription:
        block = kind == "block"
        return LayerDescription(
            name=name,
            kind=kind,
            layer_type=f"llama_{kind}",
            hidden_size=hidden,  # type: ignore[arg-type]
            num_heads=heads if block else 0,
            num_kv_heads=kv_heads if block else 0,
            ffn_size=ffn if block else 0,
            seq_len=seq,
            params=params,
            forward_flops_per_sample=flops,
            backward_flops_per_sample=2 * flops,
            activation_bytes_per_sample=float(seq * hidden * 34),
            output_bytes_per_sample=float(seq * hidden * 2),
        )

    described = [layer("embedding", "embedding", vocab * hidden, 0.0)]
    described += [
        layer(
            f"blocks.{i}",
            "block",
            block_params,
            2.0 * seq * block_params + 4.0 * seq * seq * hidden,
        )
        for i in range(layers)
    ]
    described.append(layer("head", "head", vocab * hidden, 2.0 * seq * hidden * vocab))
    return ModelDescription(
        name=f"llama-shaped-{layers}l",
        family="llama",
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        ffn_size=ffn,
        vocab_size=vocab,
        num_labels=0,
        seq_len=seq,
        activation_bytes_per_element=2,
        layers=tuple(described),
    )


@pytest.fixture
def llama_70b_shaped() -> ModelDescription:
    return llama_shaped(
        layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, seq=4096, vocab=32000
    )


@pytest.fixture
def llama_7b_shaped() -> ModelDescription:
    return llama_shaped(
        layers=32, hidden=4096, heads=32, kv_heads=32, ffn=11008, seq=4096, vocab=32000
    )


@pytest.fixture
def make_llama_shaped() -> Callable[..., ModelDescription]:
    return llama_shaped

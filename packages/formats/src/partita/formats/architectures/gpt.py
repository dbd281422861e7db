"""GPT-2 style decoders (transformers ``gpt2``): learned positions, pre-norm blocks, tied head."""

from __future__ import annotations

from typing import Any

from partita.formats.architectures.attention_cost import causal_attention, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.model_description import LayerDescription, ModelDescription

FP32_BYTES = 4

_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    "gpt-tiny": {
        "model_type": "gpt2",
        "n_layer": 4,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 128,
        "vocab_size": 512,
        "bos_token_id": 0,
        "eos_token_id": 0,
        **_NO_DROPOUT,
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
    "gpt2-medium": {
        "model_type": "gpt2",
        "n_layer": 24,
        "n_embd": 1024,
        "n_head": 16,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
    "gpt2-xl": {
        "model_type": "gpt2",
        "n_layer": 48,
        "n_embd": 1600,
        "n_head": 25,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
}

# transformers' GPT2Config defaults, for the fields the description reads.
DEFAULTS = {
    "gpt2": {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "tie_word_embeddings": True,
    }
}


def ffn_size(config: Any) -> int:
    return int(config.n_inner or 4 * config.n_embd)


def check(config: ConfigView) -> None:
    config.positive("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")
    if config.n_inner is not None:
        config.positive("n_inner")
    config.divisible("n_embd", "n_head")


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    check(config)
    if seq_len > config.n_positions:
        raise ValueError(
            f"{config.source}: seq_len {seq_len} exceeds n_positions {config.n_positions}"
        )
    h, a, f, v, s = config.n_embd, config.n_head, ffn_size(config), config.vocab_size, seq_len
    tied = bool(config.tie_word_embeddings)
    block_params = 4 * h * h + 2 * h * f + f + 9 * h
    # Matmul FLOPs (2 per multiply-add); attention scores and mixing counted dense.
    block_fwd = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    head_fwd = 2 * s * h * v
    # Saved for backward, in elements: norm inputs/outputs, q/k/v/attention output, FFN
    # activations, and SDPA's per-head log-sum-exp. An estimate; the profiler measures.
    block_act = s * (8 * h + 2 * f) + a * s
    layers = [
        _layer(
            "embedding",
            "embedding",
            "gpt_embedding",
            config,
            s,
            params=(v + config.n_positions) * h,
            fwd=0,
            act=s * h,
        ),
        *(
            _layer(
                f"blocks.{i}",
                "block",
                "gpt_block",
                config,
                s,
                params=block_params,
                fwd=block_fwd,
                act=block_act,
            )
            for i in range(config.n_layer)
        ),
        _layer(
            "head",
            "head",
            "gpt_head",
            config,
            s,
            params=2 * h + (0 if tied else v * h),
            fwd=head_fwd,
            act=2 * s * h,  # ln_f's input and output; the loss: loss_bytes_per_sample
        ),
    ]
    attention = causal_attention(s, h)
    layers = [with_attention(x, attention) if x.kind == "block" else x for x in layers]
    return ModelDescription(
        name=name,
        family="gpt",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=a,
        ffn_size=f,
        vocab_size=v,
        num_labels=0,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={"model_type": "gpt2", "tied_embeddings": str(tied).lower()},
    )


def _layer(
    name: str,
    kind: str,
    layer_type: str,
    config: ConfigView,
    s: int,
    *,
    params: int,
    fwd: float,
    act: float,
) -> LayerDescription:
    is_block = kind == "block"
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=config.n_embd,
        num_heads=config.n_head if is_block else 0,
        num_kv_heads=config.n_head if is_block else 0,
        ffn_size=ffn_size(config) if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(
            (config.vocab_size if kind == "head" else config.n_embd) * s * FP32_BYTES
        ),
    )


ARCHITECTURE = Architecture(
    family="gpt",
    defaults=DEFAULTS,
    describe=describe,
    default_seq_len=lambda config: min(config.n_positions, 1024),
    presets=PRESETS,
    size_keys={
        "layers": "n_layer",
        "hidden": "n_embd",
        "heads": "n_head",
        "ffn": "n_inner",
        "vocab": "vocab_size",
        "positions": "n_positions",
    },
)

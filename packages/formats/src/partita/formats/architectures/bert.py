"""BERT encoders with the masked-LM head (transformers ``bert``): post-LN blocks, tied decoder."""

from __future__ import annotations

from typing import Any

from partita.formats.architectures.attention_cost import full_attention, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.model_description import LayerDescription, ModelDescription

FP32_BYTES = 4

_BERT = {"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 512}
PRESETS: dict[str, dict[str, Any]] = {
    "bert-tiny": {
        "model_type": "bert",
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    "bert-base": {
        **_BERT,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "bert-large": {
        **_BERT,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}

# transformers' BertConfig defaults, for the fields the description reads.
DEFAULTS = {
    "bert": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "tie_word_embeddings": True,
    }
}


def check(config: ConfigView) -> None:
    config.positive(
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "type_vocab_size",
        "max_position_embeddings",
    )
    config.divisible("hidden_size", "num_attention_heads")


def default_seq_len(config: ConfigView) -> int:
    check(config)
    return int(min(config.max_position_embeddings, 512))


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    check(config)
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"bert: seq_len {seq_len} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    h, a, f, v, s = (
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        seq_len,
    )
    tied = bool(config.tie_word_embeddings)
    tables = v + config.max_position_embeddings + config.type_vocab_size
    block_params = 4 * h * h + 2 * h * f + f + 9 * h  # q/k/v/o + FFN + their biases + 2 norms
    # Matmul FLOPs (2 per multiply-add); attention scores and mixing counted dense.
    block_fwd = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    # Saved for backward, in elements: q/k/v, attention output, both residual sums and norm
    # outputs, FFN input/activation, and SDPA's per-head log-sum-exp. An estimate; the
    # profiler measures.
    block_act = s * (8 * h + 2 * f) + a * s
    # Head: transform dense/activation/norm inputs and the decoder input (4h), logits (v).
    # Untied, transformers also keeps cls.predictions.bias, which its forward never uses; we
    # count only the parameters that compute (so v fewer than transformers' total).
    head_params = h * h + 3 * h + v + (0 if tied else v * h)
    layers = [
        _layer(
            "embedding",
            "embedding",
            "bert_embedding",
            tables * h + 2 * h,
            0,
            s * h,
            config=config,
            s=s,
        ),
        *(
            _layer(
                f"blocks.{i}",
                "block",
                "bert_block",
                block_params,
                block_fwd,
                block_act,
                config=config,
                s=s,
            )
            for i in range(config.num_hidden_layers)
        ),
        _layer(
            "head",
            "head",
            "bert_head",
            head_params,
            2 * s * h * h + 2 * s * h * v,
            4 * s * h,  # transform and norm; the loss: loss_bytes_per_sample
            config=config,
            s=s,
        ),
    ]
    attention = full_attention(s, s, h)
    layers = [with_attention(x, attention) if x.kind == "block" else x for x in layers]
    return ModelDescription(
        name=name,
        family="bert",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=a,
        ffn_size=f,
        vocab_size=v,
        num_labels=0,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={"model_type": "bert", "tied_embeddings": str(tied).lower()},
    )


def _layer(
    name: str,
    kind: str,
    layer_type: str,
    params: int,
    fwd: float,
    act: float,
    *,
    config: ConfigView,
    s: int,
) -> LayerDescription:
    is_block = kind == "block"
    # Output: the hidden states (the [1, seq] padding bias beside them is negligible); the
    # head outputs logits.
    width = config.vocab_size if kind == "head" else config.hidden_size
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads if is_block else 0,
        num_kv_heads=config.num_attention_heads if is_block else 0,
        ffn_size=config.intermediate_size if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(width * s * FP32_BYTES),
    )


ARCHITECTURE = Architecture(
    family="bert",
    defaults=DEFAULTS,
    describe=describe,
    default_seq_len=default_seq_len,
    presets=PRESETS,
    size_keys={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "vocab": "vocab_size",
        "positions": "max_position_embeddings",
    },
)

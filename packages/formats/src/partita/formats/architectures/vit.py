"""Vision Transformers (transformers ``vit``): patch convolution + CLS token, pre-norm blocks."""

from __future__ import annotations

from typing import Any

from partita.formats.architectures.attention_cost import full_attention, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.architectures.vision import num_labels, pair
from partita.formats.model_description import LayerDescription, ModelDescription

FP32_BYTES = 4

_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    "vit-tiny": {
        "model_type": "vit",
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "intermediate_size": 256,
        "num_labels": 10,
        **_NO_DROPOUT,
    },
    "vit-base": {
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "num_labels": 1000,
    },
    "vit-large": {
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "intermediate_size": 4096,
        "num_labels": 1000,
    },
}


# transformers' ViTConfig defaults, for the fields the description reads.
DEFAULTS = {
    "vit": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "qkv_bias": True,
        "num_labels": num_labels,
    }
}


def num_patches(config: Any) -> int:
    # The convolution drops a remainder that the patch does not cover, as in transformers.
    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return (height // patch_h) * (width // patch_w)


def image_seq_len(config: Any) -> int:
    """The tokens of one image: its patches and the CLS token."""
    return num_patches(config) + 1


def check(config: ConfigView) -> None:
    config.positive("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")
    config.divisible("hidden_size", "num_attention_heads")
    for key in ("image_size", "patch_size"):
        value = getattr(config, key)
        try:
            sides = pair(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{config.source}: {key} must be a positive integer or a pair of them, "
                f"got {value!r}"
            ) from None
        if any(side <= 0 for side in sides):
            raise ValueError(f"{config.source}: {key} must be positive, got {value!r}")
    config.positive("num_channels")
    if num_patches(config) == 0:
        raise ValueError(
            f"{config.source}: patch_size {config.patch_size} exceeds image_size "
            f"{config.image_size}"
        )
    labels = config.num_labels
    if isinstance(labels, bool) or not isinstance(labels, int) or labels < 2:
        raise ValueError(
            f"{config.source}: num_labels must be at least 2 (single-label classification), "
            f"got {labels!r}"
        )


def default_seq_len(config: ConfigView) -> int:
    check(config)  # the geometry must hold before the patches are counted
    return image_seq_len(config)


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    check(config)
    if seq_len != image_seq_len(config):
        raise ValueError(
            f"vit: seq_len {seq_len} differs from the {image_seq_len(config)} tokens that "
            "image_size and patch_size give (change the config's image_size instead)"
        )
    h, a, f, s = config.hidden_size, config.num_attention_heads, config.intermediate_size, seq_len
    labels = config.num_labels
    patch_h, patch_w = pair(config.patch_size)
    kernel = config.num_channels * patch_h * patch_w  # inputs of one patch's projection
    qkv_bias = 3 * h if config.qkv_bias else 0
    block_params = 4 * h * h + qkv_bias + h + 2 * h * f + f + h + 4 * h
    # Matmul and convolution FLOPs (2 per multiply-add); attention scores and mixing dense.
    # Backward is twice forward, except the patch convolution: the pixels need no gradient,
    # so only its weight gradient is computed.
    embed_fwd = 2 * num_patches(config) * kernel * h
    block_fwd = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    head_fwd = 2 * h * labels
    # Saved for backward, in elements: norm inputs/outputs, q/k/v/attention output, FFN
    # activations and SDPA's per-head log-sum-exp; the embedding keeps the pixels for the
    # convolution's weight gradient. An estimate; the profiler measures.
    block_act = s * (8 * h + 2 * f) + a * s
    layers = [
        _layer(
            ("embedding", "embedding", "vit_embedding"),
            config,
            s,
            params=kernel * h + h + h + s * h,  # projection, its bias, CLS token, positions
            flops=(embed_fwd, embed_fwd),
            act=config.num_channels * _pixels(config) + s * h,
        ),
        *(
            _layer(
                (f"blocks.{i}", "block", "vit_block"),
                config,
                s,
                params=block_params,
                flops=(block_fwd, 2 * block_fwd),
                act=block_act,
            )
            for i in range(config.num_hidden_layers)
        ),
        _layer(
            ("head", "head", "vit_head"),
            config,
            s,
            params=2 * h + h * labels + labels,
            flops=(head_fwd, 2 * head_fwd),
            act=2 * s * h,  # the norm's input and output; the loss: loss_bytes_per_sample
        ),
    ]
    attention = full_attention(s, s, h)
    layers = [with_attention(x, attention) if x.kind == "block" else x for x in layers]
    return ModelDescription(
        name=name,
        family="vit",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=a,
        ffn_size=f,
        vocab_size=0,
        num_labels=labels,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={
            "model_type": "vit",
            "image_size": "x".join(map(str, pair(config.image_size))),
            "patch_size": "x".join(map(str, pair(config.patch_size))),
        },
    )


def _pixels(config: ConfigView) -> int:
    height, width = pair(config.image_size)
    return height * width


def _layer(
    identity: tuple[str, str, str],
    config: ConfigView,
    s: int,
    *,
    params: int,
    flops: tuple[float, float],
    act: float,
) -> LayerDescription:
    """``identity`` is (name, kind, layer_type); ``flops`` (forward, backward) per sample."""
    name, kind, layer_type = identity
    is_block = kind == "block"
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
        forward_flops_per_sample=float(flops[0]),
        backward_flops_per_sample=float(flops[1]),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(
            (config.num_labels if kind == "head" else config.hidden_size * s) * FP32_BYTES
        ),
    )


ARCHITECTURE = Architecture(
    family="vit",
    defaults=DEFAULTS,
    describe=describe,
    default_seq_len=default_seq_len,
    presets=PRESETS,
    size_keys={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
    },
    derived=frozenset({"num_labels"}),
)

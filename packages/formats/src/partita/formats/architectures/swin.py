"""Swin Transformers (transformers ``swin``): shifted-window attention in stages of halving size.

Each Swin block is one layer and so is each patch merging between stages; every layer knows
its feature-map resolution from the config (the images must have the config's size). The
stage geometry here is the one the torch model in ``partita.models`` builds from: it reads
the config by attribute only, so it works on a :class:`ConfigView` and on transformers'
``SwinConfig`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from partita.formats.architectures.attention_cost import full_attention, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.architectures.vision import num_labels, pair
from partita.formats.model_description import LayerDescription, ModelDescription

FP32_BYTES = 4

_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
PRESETS: dict[str, dict[str, Any]] = {
    # Three stages: shifted windows in the first two, a window clamped to the 4x4 map (no
    # shift) in the last.
    "swin-tiny": {
        "model_type": "swin",
        "image_size": 32,
        "patch_size": 2,
        "embed_dim": 32,
        "depths": [2, 2, 2],
        "num_heads": [2, 4, 8],
        "window_size": 4,
        "num_labels": 10,
        "drop_path_rate": 0.0,
        **_NO_DROPOUT,
    },
    "swin-base": {
        "model_type": "swin",
        "image_size": 224,
        "patch_size": 4,
        "embed_dim": 128,
        "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32],
        "window_size": 7,
        "num_labels": 1000,
    },
}


# transformers' SwinConfig defaults, for the fields the description reads. ``hidden_size``
# (the channels after the last stage) is derived from embed_dim and depths as SwinConfig
# derives it; ``num_labels`` from ``id2label``.
DEFAULTS = {
    "swin": {
        "image_size": 224,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "use_absolute_embeddings": False,
        "hidden_size": lambda config: int(config.embed_dim * 2 ** (len(config.depths) - 1)),
        "num_labels": num_labels,
    }
}


@dataclass(frozen=True)
class Stage:
    """One stage's geometry as transformers computes it at run time."""

    index: int
    depth: int
    dim: int  # channels
    heads: int
    ffn: int
    height: int  # feature map entering the stage
    width: int
    window: int  # clamped to the map's smaller side when that is not larger
    shift: int  # of the odd blocks; 0 when the window was clamped

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def padded_tokens(self) -> int:
        """Tokens after padding the map to a multiple of the window (attention runs on these)."""
        return round_up(self.height, self.window) * round_up(self.width, self.window)

    @property
    def merged_tokens(self) -> int:
        """Tokens after patch merging (an odd side is padded by one first)."""
        return ((self.height + 1) // 2) * ((self.width + 1) // 2)


def round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def grid(config: Any) -> tuple[int, int]:
    """The patch grid entering the first stage. transformers pads the image to a multiple of
    the patch, so partial patches count."""
    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return -(-height // patch_h), -(-width // patch_w)


def num_positions(config: Any) -> int:
    """Rows of the absolute position table: whole patches only."""
    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return (height // patch_h) * (width // patch_w)


def stage_tokens(config: Any) -> int:
    """Patch tokens entering the first stage: the description's seq_len."""
    height, width = grid(config)
    return height * width


def stages(config: Any) -> list[Stage]:
    height, width = grid(config)
    result = []
    for index, (depth, heads) in enumerate(zip(config.depths, config.num_heads, strict=True)):
        dim = int(config.embed_dim * 2**index)
        clamped = min(height, width) <= config.window_size
        result.append(
            Stage(
                index=index,
                depth=depth,
                dim=dim,
                heads=heads,
                ffn=int(config.mlp_ratio * dim),
                height=height,
                width=width,
                window=min(height, width) if clamped else config.window_size,
                shift=0 if clamped else config.window_size // 2,
            )
        )
        height, width = (height + 1) // 2, (width + 1) // 2
    return result


def layer_plan(config: Any) -> list[tuple[str, str, Stage | None, int]]:
    """(name, layer_type, stage, block index in the stage or -1 for patch merging)."""
    plan: list[tuple[str, str, Stage | None, int]] = [("embedding", "swin_embedding", None, 0)]
    all_stages = stages(config)
    for stage in all_stages:
        for j in range(stage.depth):
            plan.append(
                (f"stages.{stage.index}.blocks.{j}", f"swin_block_stage{stage.index}", stage, j)
            )
        if stage.index < len(all_stages) - 1:
            plan.append((f"stages.{stage.index}.merging", "swin_patch_merging", stage, -1))
    plan.append(("head", "swin_head", None, 0))
    return plan


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_sides(config: ConfigView, key: str) -> None:
    value = getattr(config, key)
    sides = list(value) if isinstance(value, list | tuple) else [value, value]
    if len(sides) != 2 or not all(_is_int(side) and side > 0 for side in sides):
        raise ValueError(
            f"{config.source}: {key} must be a positive integer or a pair of them, got {value!r}"
        )


def _check_stage_list(config: ConfigView, key: str) -> list[int]:
    value = getattr(config, key)
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{config.source}: {key} must be a non-empty list, got {value!r}")
    for index, item in enumerate(value):
        if not _is_int(item) or item <= 0:
            raise ValueError(
                f"{config.source}: {key}[{index}] must be a positive integer, got {item!r}"
            )
    return list(value)


def check(config: ConfigView) -> None:
    depths, heads = _check_stage_list(config, "depths"), _check_stage_list(config, "num_heads")
    if len(depths) != len(heads):
        raise ValueError(
            f"{config.source}: depths {depths} and num_heads {heads} must be of the same length"
        )
    config.positive("embed_dim", "window_size", "num_channels", "num_labels", "hidden_size")
    for key in ("image_size", "patch_size"):
        _check_sides(config, key)
    ratio = config.mlp_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio <= 0:
        raise ValueError(f"{config.source}: mlp_ratio must be a positive number, got {ratio!r}")
    for stage in stages(config):
        if stage.ffn <= 0:
            raise ValueError(
                f"{config.source}: mlp_ratio ({ratio}) times the {stage.dim} channels of stage "
                f"{stage.index} must be at least 1"
            )
        if stage.dim % stage.heads:
            raise ValueError(
                f"{config.source}: stage {stage.index} channels ({stage.dim}, embed_dim x "
                f"2^{stage.index}) must be divisible by num_heads[{stage.index}] ({stage.heads})"
            )
        if min(stage.height, stage.width) < config.window_size:
            # transformers sizes the position table for the configured window, which then
            # does not match the clamped one and fails.
            raise ValueError(
                f"{config.source}: window_size {config.window_size} is larger than the "
                f"{stage.height}x{stage.width} feature map of stage {stage.index} (image_size "
                f"{config.image_size}, patch_size {config.patch_size})"
            )
    if config.use_absolute_embeddings and num_positions(config) != stage_tokens(config):
        raise ValueError(
            f"{config.source}: use_absolute_embeddings needs image_size ({config.image_size}) "
            f"to be a multiple of patch_size ({config.patch_size})"
        )


def default_seq_len(config: ConfigView) -> int:
    check(config)
    return stage_tokens(config)


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    check(config)
    expected = stage_tokens(config)
    if seq_len != expected:
        raise ValueError(
            f"swin: seq_len {seq_len} differs from the {expected} tokens that "
            "image_size and patch_size give (change the config's image_size instead)"
        )
    layers = []
    for layer_name, layer_type, stage, block in layer_plan(config):
        identity = (layer_name, layer_type)
        if layer_type == "swin_embedding":
            layers.append(_describe_embedding(identity, config))
        elif layer_type == "swin_head":
            layers.append(_describe_head(identity, config))
        elif block < 0:
            layers.append(_describe_merging(identity, stage))  # type: ignore[arg-type]
        else:
            layers.append(_describe_block(identity, config, stage))  # type: ignore[arg-type]
    first = stages(config)[0]
    return ModelDescription(
        name=name,
        family="swin",
        # The model-wide sizes are the first stage's; each layer carries its own stage's.
        hidden_size=first.dim,
        num_heads=first.heads,
        num_kv_heads=first.heads,
        ffn_size=first.ffn,
        vocab_size=0,
        num_labels=config.num_labels,
        seq_len=seq_len,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={
            "model_type": "swin",
            "image_size": "x".join(map(str, pair(config.image_size))),
            "patch_size": "x".join(map(str, pair(config.patch_size))),
            "window_size": str(config.window_size),
            "final_hidden_size": str(config.hidden_size),
        },
    )


# FLOPs count matmuls and convolutions (2 per multiply-add), attention scores and mixing dense
# per window. Backward is twice forward except for the patch convolution, whose input (the
# pixels) needs no gradient: only its weight gradient is computed. Activation estimates are
# elements saved for backward; the profiler measures.


def _describe_embedding(identity: tuple[str, str], config: ConfigView) -> LayerDescription:
    patch_h, patch_w = pair(config.patch_size)
    image_h, image_w = pair(config.image_size)
    kernel = config.num_channels * patch_h * patch_w  # inputs of one patch's projection
    e, tokens = config.embed_dim, stage_tokens(config)
    positions = num_positions(config) * e if config.use_absolute_embeddings else 0
    fwd = 2 * tokens * kernel * e
    return _entry(
        identity,
        "embedding",
        (e, 0, 0, tokens),
        params=kernel * e + e + 2 * e + positions,
        flops=(fwd, fwd),
        # Pixels (for the weight gradient), the norm's input and output.
        act=config.num_channels * image_h * image_w + 2 * tokens * e,
        out=tokens * e,
    )


def _describe_block(
    identity: tuple[str, str], config: ConfigView, stage: Stage
) -> LayerDescription:
    d, f, heads = stage.dim, stage.ffn, stage.heads
    tokens, padded, area = stage.tokens, stage.padded_tokens, stage.window**2
    qkv_bias = 3 * d if config.qkv_bias else 0
    table = (2 * config.window_size - 1) ** 2 * heads
    params = 4 * d * d + qkv_bias + d + table + 4 * d + 2 * d * f + f + d
    # Projections and MLP run on the real tokens, attention on the padded windows.
    fwd = 2 * tokens * 4 * d * d + 4 * padded * area * d + 4 * tokens * d * f
    # Norm inputs/outputs and FFN activations per token; q/k/v/attention output and SDPA's
    # per-head log-sum-exp per padded token.
    act = tokens * (4 * d + 2 * f) + padded * (4 * d + heads)
    block = _entry(
        identity,
        "block",
        (d, heads, f, tokens),
        params=params,
        flops=(fwd, 2 * fwd),
        act=act,
        out=tokens * d,
    )
    # Windows of ``area`` tokens attend within themselves, unmasked (the shift's mask hides
    # pairs inside a window but kernels compute them).
    return with_attention(block, full_attention(padded, area, d))


def _describe_merging(identity: tuple[str, str], stage: Stage) -> LayerDescription:
    d, merged = stage.dim, stage.merged_tokens
    fwd = 2 * merged * 4 * d * 2 * d
    return _entry(
        identity,
        "block",
        (d, 0, 0, stage.tokens),  # sizes of what the layer receives
        params=2 * 4 * d + 4 * d * 2 * d,
        flops=(fwd, 2 * fwd),
        act=2 * merged * 4 * d,  # the norm's input and output
        out=merged * 2 * d,
    )


def _describe_head(identity: tuple[str, str], config: ConfigView) -> LayerDescription:
    last = stages(config)[-1]
    c, labels = config.hidden_size, config.num_labels
    fwd = 2 * c * labels
    return _entry(
        identity,
        "head",
        (c, 0, 0, last.tokens),
        params=2 * c + c * labels + labels,
        flops=(fwd, 2 * fwd),
        act=2 * last.tokens * c + c,  # the norm's input and output, the pooled features
        out=labels,
    )


def _entry(
    identity: tuple[str, str],
    kind: str,
    sizes: tuple[int, int, int, int],
    *,
    params: int,
    flops: tuple[float, float],
    act: float,
    out: float,
) -> LayerDescription:
    """``sizes`` is (hidden, heads, ffn, seq_len); ``act`` and ``out`` in elements."""
    (name, layer_type), (hidden, heads, ffn, seq) = identity, sizes
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        ffn_size=ffn,
        seq_len=seq,
        params=params,
        forward_flops_per_sample=float(flops[0]),
        backward_flops_per_sample=float(flops[1]),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(out * FP32_BYTES),
    )


ARCHITECTURE = Architecture(
    family="swin",
    defaults=DEFAULTS,
    describe=describe,
    default_seq_len=default_seq_len,
    presets=PRESETS,
    # depths and num_heads are per-stage lists: give them with --set.
    size_keys={"hidden": "embed_dim"},
)

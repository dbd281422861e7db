"""What the image classifiers (ViT, Swin) share: image geometry, activations, labels, batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from partita.models.layered import Activations

FP32_BYTES = 4

# transformers' ACT2FN names we reproduce bit for bit with torch functions.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def pair(value: int | Iterable[int]) -> tuple[int, int]:
    """``image_size``/``patch_size`` as (height, width); transformers accepts an int or a pair."""
    if isinstance(value, Iterable):
        height, width = value
        return int(height), int(width)
    return int(value), int(value)


def activation(config: PretrainedConfig, family: str) -> Callable[[torch.Tensor], torch.Tensor]:
    name = config.hidden_act
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{family}: hidden_act {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]


def check_classification(config: PretrainedConfig, family: str) -> None:
    """The loss is single-label cross-entropy; transformers would switch to MSE or BCE otherwise."""
    if config.num_labels < 2:
        raise ValueError(f"{family}: num_labels must be at least 2, got {config.num_labels}")
    if config.problem_type not in (None, "single_label_classification"):
        raise ValueError(
            f"{family}: problem_type {config.problem_type!r} is unsupported "
            "(only single_label_classification)"
        )


def check_image_geometry(config: PretrainedConfig, family: str) -> None:
    for name in ("image_size", "patch_size"):
        if any(side <= 0 for side in pair(getattr(config, name))):
            raise ValueError(f"{family}: {name} must be positive, got {getattr(config, name)}")
    if config.num_channels <= 0:
        raise ValueError(f"{family}: num_channels must be positive, got {config.num_channels}")


def check_pixels(pixels_bchw: torch.Tensor, config: PretrainedConfig, family: str) -> None:
    """Each layer derives its resolution from the config, so the images must have that size."""
    expected = (config.num_channels, *pair(config.image_size))
    if pixels_bchw.dim() != 4 or tuple(pixels_bchw.shape[1:]) != expected:
        raise ValueError(
            f"{family}: pixel_values must be [batch, {expected[0]}, {expected[1]}, "
            f"{expected[2]}] (the config's image), got {list(pixels_bchw.shape)}"
        )


def check_seq_len(seq_len: int, expected: int, family: str) -> None:
    if seq_len != expected:
        raise ValueError(
            f"{family}: seq_len {seq_len} differs from the {expected} tokens that "
            "image_size and patch_size give (change the config's image_size instead)"
        )


def image_batch(
    config: PretrainedConfig, batch_size: int, generator: torch.Generator
) -> Activations:
    height, width = pair(config.image_size)
    pixel_values = torch.randn(batch_size, config.num_channels, height, width, generator=generator)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    return {"pixel_values": pixel_values, "labels": labels}


# (ours, transformers in memory, transformers on disk): transformers 5 renames modules in
# memory but still writes (and reads) the classic checkpoint names.
KeyTriple = tuple[str, str, str]


def pick(hf: dict[str, torch.Tensor], current: str, legacy: str) -> torch.Tensor:
    """A tensor under its in-memory name (state_dict, gradients) or its checkpoint name."""
    return hf[current] if current in hf else hf[legacy]

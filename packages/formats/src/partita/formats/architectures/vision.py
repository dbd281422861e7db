"""What the image families (ViT, Swin) read alike from their configs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from partita.formats.architectures.config_view import ConfigView


def pair(value: int | Iterable[int]) -> tuple[int, int]:
    """``image_size``/``patch_size`` as (height, width); transformers accepts an int or a pair."""
    if isinstance(value, Iterable):
        height, width = value
        return int(height), int(width)
    return int(value), int(value)


def num_labels(config: ConfigView) -> int:
    """transformers keeps no ``num_labels`` (its ``to_dict`` leaves it out): it is the length
    of ``id2label``, two labels when a config has neither."""
    labels = config.id2label if config.has("id2label") else None
    if labels is None:
        return 2
    if not isinstance(labels, Mapping):
        raise ValueError(f"{config.source}: id2label must be a mapping, got {labels!r}")
    return len(labels)

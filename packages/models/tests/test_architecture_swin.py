"""The torch-free Swin description (``partita.formats.architectures.swin``) against transformers:
a raw config, the same config filled in by ``SwinConfig`` and ``describe_model`` agree."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import SwinConfig

from partita.formats.architectures import describe_with, view_of
from partita.formats.architectures.swin import ARCHITECTURE, DEFAULTS, PRESETS, stages
from partita.models.api import describe_model
from partita.models.families import swin

SMALL = {"embed_dim": 16, "depths": [1, 2], "num_heads": [2, 4]}
MINIMAL: dict[str, dict[str, Any]] = {
    "defaults-only": {"model_type": "swin"},
    "sizes-only": {"model_type": "swin", "embed_dim": 48, "depths": [1, 1], "num_heads": [2, 4]},
    "image-only": {"model_type": "swin", "image_size": 112, "window_size": 4},
    # 30 / 4: partial patches make an 8x8 grid; window 3 pads the 8x8 and 4x4 maps.
    "odd-image-and-window": {
        "model_type": "swin",
        "image_size": 30,
        "patch_size": 4,
        "window_size": 3,
        **SMALL,
    },
    # A 10x12 grid then 5x6: the window is clamped (no shift) in the second stage.
    "rectangular": {
        "model_type": "swin",
        "image_size": [40, 24],
        "patch_size": [4, 2],
        "window_size": 5,
        **SMALL,
    },
    "labels-from-id2label": {
        "model_type": "swin",
        "image_size": 32,
        "window_size": 4,
        "id2label": {"0": "cat", "1": "dog", "2": "bird"},
        **SMALL,
    },
    "labels-given": {
        "model_type": "swin",
        "image_size": 32,
        "window_size": 4,
        "num_labels": 7,
        **SMALL,
    },
    "no-qkv-bias-float-ratio": {
        "model_type": "swin",
        "image_size": 32,
        "window_size": 4,
        "qkv_bias": False,
        "mlp_ratio": 2.5,
        **SMALL,
    },
    "absolute-positions": {
        "model_type": "swin",
        "image_size": 32,
        "window_size": 4,
        "use_absolute_embeddings": True,
        "num_channels": 1,
        **SMALL,
    },
}
CONFIGS = {**PRESETS, **MINIMAL}


def _filled(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as transformers reads it, every default in place."""
    return SwinConfig(**raw).to_dict()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_raw_config_describes_as_transformers_filled_in(name: str) -> None:
    raw = CONFIGS[name]
    description = describe_with(ARCHITECTURE, raw, name=name)
    assert description == describe_with(ARCHITECTURE, _filled(raw), name=name)
    assert description == describe_model(dict(raw), name=name)
    seq_len = description.seq_len  # the only length an image classifier takes
    assert description == describe_model(dict(raw), seq_len=seq_len, name=name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_describes_as_describe_model_by_name(name: str) -> None:
    assert describe_with(ARCHITECTURE, PRESETS[name], name=name) == describe_model(name)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stage_geometry_is_the_same_on_a_view_and_on_transformers_config(name: str) -> None:
    raw = CONFIGS[name]
    config = SwinConfig(**raw)
    assert stages(view_of(ARCHITECTURE, raw)) == stages(config) == swin.stages(config)
    assert ARCHITECTURE.default_seq_len(view_of(ARCHITECTURE, raw)) == swin.stage_tokens(config)


def test_defaults_are_transformers_defaults() -> None:
    config = SwinConfig()
    view = view_of(ARCHITECTURE, {"model_type": "swin"})
    for key in DEFAULTS["swin"]:
        assert getattr(view, key) == getattr(config, key), key


@pytest.mark.parametrize(
    "name", ["sizes-only", "rectangular", "labels-from-id2label", "labels-given"]
)
def test_derived_fields_follow_transformers(name: str) -> None:
    raw = MINIMAL[name]
    config, view = SwinConfig(**raw), view_of(ARCHITECTURE, raw)
    for key in ("hidden_size", "num_labels"):
        assert getattr(view, key) == getattr(config, key), key


def test_seq_len_other_than_the_patch_grid_is_refused_alike() -> None:
    raw = PRESETS["swin-tiny"]
    with pytest.raises(ValueError, match="seq_len 64 differs") as formats_error:
        describe_with(ARCHITECTURE, raw, seq_len=64)
    with pytest.raises(ValueError, match="seq_len 64 differs") as models_error:
        describe_model(dict(raw), seq_len=64)
    assert str(formats_error.value) == str(models_error.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_heads": [2, 4, 6]}, "num_heads"),  # stage 2 has 128 channels
        ({"depths": [2, 2]}, "depths"),  # three num_heads
        ({"depths": [2, 0, 2]}, "depths"),
        ({"window_size": 5}, "window_size"),  # larger than the last 4x4 map
        ({"image_size": 31, "use_absolute_embeddings": True}, "use_absolute_embeddings"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"patch_size": 0}, "patch_size"),
    ],
)
def test_what_transformers_or_the_model_refuses_the_description_refuses(
    overrides: dict[str, Any], field: str
) -> None:
    raw = {**PRESETS["swin-tiny"], **overrides}
    with pytest.raises(ValueError, match=field):
        describe_with(ARCHITECTURE, raw)
    with pytest.raises(ValueError):
        describe_model(dict(raw))

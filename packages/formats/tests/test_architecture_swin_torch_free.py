"""The Swin description from a config alone, without torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from partita.formats import ModelDescription
from partita.formats.architectures import describe_with, view_of
from partita.formats.architectures.swin import ARCHITECTURE, PRESETS, stage_tokens

TINY = PRESETS["swin-tiny"]


def describe_config(config: dict[str, Any], **options: Any) -> ModelDescription:
    return describe_with(ARCHITECTURE, config, **options)


def test_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, partita.formats.architectures.swin as s\n"
        "s.ARCHITECTURE.describe\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "blocks", "mergings", "tokens", "labels"),
    [("swin-tiny", 6, 2, 256, 10), ("swin-base", 24, 3, 3136, 1000)],
)
def test_preset_layers(name: str, blocks: int, mergings: int, tokens: int, labels: int) -> None:
    description = describe_config(PRESETS[name], name=name)
    kinds = [layer.kind for layer in description.layers]
    assert kinds == ["embedding", *["block"] * (blocks + mergings), "head"]
    types = [layer.layer_type for layer in description.layers]
    assert types.count("swin_patch_merging") == mergings
    assert sum(t.startswith("swin_block_stage") for t in types) == blocks
    assert description.seq_len == tokens and description.num_labels == labels
    assert description.family == "swin" and description.vocab_size == 0
    assert description.shared_vocabulary == ()
    head = description.layers[-1]
    assert head.loss_bytes_per_sample == head.output_bytes_per_sample == labels * 4


def test_tiny_preset_stages() -> None:
    description = describe_config(TINY)
    by_name = {layer.name: layer for layer in description.layers}
    # 32 / 2 = 16x16 patches, halved per stage; channels and heads double.
    assert [by_name[f"stages.{i}.blocks.0"].seq_len for i in range(3)] == [256, 64, 16]
    assert [by_name[f"stages.{i}.blocks.0"].hidden_size for i in range(3)] == [32, 64, 128]
    assert [by_name[f"stages.{i}.blocks.0"].num_heads for i in range(3)] == [2, 4, 8]
    assert description.layers[-1].hidden_size == 128
    assert description.source["final_hidden_size"] == "128"


def test_missing_fields_take_transformers_defaults() -> None:
    view = view_of(ARCHITECTURE, {"model_type": "swin"})
    assert (view.image_size, view.patch_size, view.window_size) == (224, 4, 7)
    assert list(view.depths) == [2, 2, 6, 2] and list(view.num_heads) == [3, 6, 12, 24]
    assert view.embed_dim == 96 and view.hidden_size == 768 and view.num_labels == 2
    description = describe_config({"model_type": "swin"})
    assert description.seq_len == 56 * 56 == stage_tokens(view)
    assert description.num_labels == 2 and description.hidden_size == 96
    assert len(description.layers) == 1 + 12 + 3 + 1


def test_derived_fields() -> None:
    view = view_of(ARCHITECTURE, {"model_type": "swin", "embed_dim": 10, "depths": [1, 1, 1]})
    assert view.hidden_size == 40
    view = view_of(ARCHITECTURE, {"model_type": "swin", "id2label": {"0": "a", "1": "b", "2": "c"}})
    assert view.num_labels == 3
    explicit = {"model_type": "swin", "num_labels": 5, "id2label": {"0": "a"}}
    assert view_of(ARCHITECTURE, explicit).num_labels == 5


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"embed_dim": 0}, "embed_dim"),
        ({"embed_dim": "32"}, "embed_dim"),
        ({"window_size": True}, "window_size"),
        ({"num_channels": -1}, "num_channels"),
        ({"num_labels": 0}, "num_labels"),
        ({"image_size": [32]}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"patch_size": [2, 0]}, "patch_size"),
        ({"depths": []}, "depths"),
        ({"depths": 2}, "depths"),
        ({"depths": [2, 0, 2]}, "depths"),
        ({"num_heads": [2, 4]}, "num_heads"),
        ({"num_heads": [2, 4, 6]}, "num_heads"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"mlp_ratio": 0.01}, "mlp_ratio"),
        ({"window_size": 5}, "window_size"),
        ({"image_size": 31, "use_absolute_embeddings": True}, "use_absolute_embeddings"),
        ({"num_labels": None}, "num_labels"),  # transformers refuses it too
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_bad_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as error:
        describe_config({**TINY, **overrides}, source="cfg.json")
    assert str(error.value).startswith("cfg.json: ")


def test_bad_id2label_is_named() -> None:
    raw = {k: v for k, v in TINY.items() if k != "num_labels"}
    with pytest.raises(ValueError, match=r"cfg\.json: id2label must be a mapping"):
        describe_config({**raw, "id2label": ["a", "b"]}, source="cfg.json")
    assert describe_config({**raw, "id2label": {"0": "a", "1": "b", "2": "c"}}).num_labels == 3


def test_seq_len_must_be_the_patch_grid() -> None:
    with pytest.raises(ValueError, match="seq_len 64 differs from the 256 tokens"):
        describe_config(TINY, seq_len=64)
    assert describe_config(TINY, seq_len=256) == describe_config(TINY)


def test_odd_geometry_pads_partial_patches_and_windows() -> None:
    raw = {
        "model_type": "swin",
        "image_size": 30,
        "patch_size": 4,
        "window_size": 3,
        "embed_dim": 16,
        "depths": [1, 2],
        "num_heads": [2, 4],
    }
    description = describe_config(raw)
    assert description.seq_len == 8 * 8
    first, second = description.layers[1], description.layers[3]
    # Windows of 3x3 over the 8x8 map padded to 9x9, then the 4x4 map padded to 6x6.
    assert first.attention_flops_per_sample == 4.0 * 81 * 9 * 16
    assert second.attention_flops_per_sample == 4.0 * 36 * 9 * 32


def test_size_flags() -> None:
    assert ARCHITECTURE.size_keys == {"hidden": "embed_dim"}

"""BERT's and ViT's torch-free descriptions (``partita.formats.architectures``) against
transformers: the defaults a config file leaves out are transformers' own, so a raw config,
the same config filled in by transformers, and ``describe_model`` all describe one model."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import BertConfig, PretrainedConfig, ViTConfig

from partita.formats.architectures import Architecture, describe_with, view_of
from partita.formats.architectures import bert as bert_architecture
from partita.formats.architectures import vit as vit_architecture
from partita.models.api import describe_model
from partita.models.families import FAMILIES

CASES: list[tuple[Architecture, type[PretrainedConfig], dict[str, dict[str, Any]]]] = [
    (
        bert_architecture.ARCHITECTURE,
        BertConfig,
        {
            **bert_architecture.PRESETS,
            "minimal": {
                "model_type": "bert",
                "hidden_size": 128,
                "num_attention_heads": 2,
                "num_hidden_layers": 2,
            },
            "untied_one_segment": {
                "model_type": "bert",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 1,
                "tie_word_embeddings": False,
                "type_vocab_size": 1,
                "max_position_embeddings": 64,
            },
        },
    ),
    (
        vit_architecture.ARCHITECTURE,
        ViTConfig,
        {
            **vit_architecture.PRESETS,
            "minimal": {
                "model_type": "vit",
                "hidden_size": 96,
                "num_attention_heads": 3,
                "num_hidden_layers": 1,
            },
            # num_labels is derived: transformers stores id2label (string keys in a file).
            "labels_from_id2label": {
                "model_type": "vit",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 1,
                "image_size": 32,
                "patch_size": 8,
                "id2label": {"0": "cat", "1": "dog", "2": "bird"},
            },
            "labels_given": {
                "model_type": "vit",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_hidden_layers": 1,
                "image_size": 32,
                "patch_size": 8,
                "num_labels": 7,
            },
            "rectangular_no_qkv_bias": {
                "model_type": "vit",
                "hidden_size": 64,
                "num_attention_heads": 2,
                "num_hidden_layers": 2,
                "image_size": [32, 44],
                "patch_size": [8, 6],
                "num_channels": 1,
                "qkv_bias": False,
            },
        },
    ),
]

CONFIGS = [
    pytest.param(arch, config_class, raw, id=f"{arch.family}-{name}")
    for arch, config_class, configs in CASES
    for name, raw in configs.items()
]


def _filled_in(config_class: type[PretrainedConfig], raw: dict[str, Any]) -> dict[str, Any]:
    """The config as transformers has it: every field, its defaults included."""
    return config_class(**{k: v for k, v in raw.items() if k != "model_type"}).to_dict()


@pytest.mark.parametrize(("arch", "config_class", "raw"), CONFIGS)
def test_raw_config_describes_as_transformers_filled_one(
    arch: Architecture, config_class: type[PretrainedConfig], raw: dict[str, Any]
) -> None:
    filled = _filled_in(config_class, raw)
    description = describe_with(arch, raw)
    assert description == describe_with(arch, filled)
    assert description == describe_model(raw)


@pytest.mark.parametrize(("arch", "config_class", "raw"), CONFIGS)
def test_explicit_seq_len_describes_alike(
    arch: Architecture, config_class: type[PretrainedConfig], raw: dict[str, Any]
) -> None:
    seq = arch.default_seq_len(view_of(arch, raw))
    seq = seq if arch.family == "vit" else min(seq, 64)  # a ViT's is fixed by its image
    filled = _filled_in(config_class, raw)
    description = describe_with(arch, raw, seq_len=seq, name="m")
    assert description.seq_len == seq
    assert description == describe_with(arch, filled, seq_len=seq, name="m")
    assert description == describe_model(raw, seq_len=seq, name="m")


@pytest.mark.parametrize(
    ("arch", "config_class"),
    [(bert_architecture.ARCHITECTURE, BertConfig), (vit_architecture.ARCHITECTURE, ViTConfig)],
    ids=["bert", "vit"],
)
def test_defaults_are_transformers_defaults(
    arch: Architecture, config_class: type[PretrainedConfig]
) -> None:
    reference = config_class()
    for model_type, defaults in arch.defaults.items():
        view = view_of(arch, {"model_type": model_type})
        for key in defaults:
            assert getattr(view, key) == getattr(reference, key), key


def test_families_describe_through_the_architectures() -> None:
    for arch in (bert_architecture.ARCHITECTURE, vit_architecture.ARCHITECTURE):
        family = FAMILIES[arch.family]
        assert family.presets is arch.presets
        assert family.model_types == arch.model_types

"""The torch-free T5 description (``partita.formats.architectures.t5``) against transformers:
a raw config, the same config filled in by ``T5Config`` and ``describe_model`` agree."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import T5Config

from partita.formats.architectures import describe_with, view_of
from partita.formats.architectures.t5 import ARCHITECTURE, DEFAULTS, PRESETS
from partita.models.api import describe_model

MINIMAL: dict[str, dict[str, Any]] = {
    "sizes-only": {"model_type": "t5", "d_model": 64, "num_heads": 4, "d_ff": 128},
    "layers-only": {"model_type": "t5", "num_layers": 2, "vocab_size": 300},
    "d_kv-not-hidden-over-heads": {
        "model_type": "t5",
        "d_model": 48,
        "num_heads": 3,
        "d_kv": 20,
        "num_layers": 2,
    },
    "decoder-layers-absent": {"model_type": "t5", "num_layers": 3, "d_model": 32},
    "decoder-layers-none": {
        "model_type": "t5",
        "num_layers": 3,
        "num_decoder_layers": None,
        "d_model": 32,
    },
    "decoder-layers-given": {
        "model_type": "t5",
        "num_layers": 3,
        "num_decoder_layers": 1,
        "d_model": 32,
    },
    "gated-gelu": {"model_type": "t5", "feed_forward_proj": "gated-gelu", "num_layers": 2},
    "gated-silu": {"model_type": "t5", "feed_forward_proj": "gated-silu", "num_layers": 2},
    "plain-gelu": {"model_type": "t5", "feed_forward_proj": "gelu", "num_layers": 2},
    "tie-none": {"model_type": "t5", "tie_word_embeddings": None, "num_layers": 2},
    "buckets": {"model_type": "t5", "relative_attention_num_buckets": 8, "num_layers": 2},
}
CONFIGS = {**PRESETS, **MINIMAL}
SEQ_LEN = 24  # below every config's n_positions; None takes the default length


def _filled(raw: dict[str, Any]) -> dict[str, Any]:
    """The config as transformers reads it, every default in place."""
    return T5Config(**raw).to_dict()


@pytest.mark.parametrize("seq_len", [None, SEQ_LEN])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_raw_config_describes_as_transformers_filled_in(name: str, seq_len: int | None) -> None:
    raw = CONFIGS[name]
    description = describe_with(ARCHITECTURE, raw, seq_len=seq_len, name=name)
    assert description == describe_with(ARCHITECTURE, _filled(raw), seq_len=seq_len, name=name)
    assert description == describe_model(dict(raw), seq_len=seq_len, name=name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_describes_as_describe_model_by_name(name: str) -> None:
    assert describe_with(ARCHITECTURE, PRESETS[name], name=name) == describe_model(name)


def test_defaults_are_transformers_defaults() -> None:
    config = T5Config()
    view = view_of(ARCHITECTURE, {"model_type": "t5"})
    for key in DEFAULTS["t5"]:
        assert getattr(view, key) == getattr(config, key), key


@pytest.mark.parametrize("raw", [MINIMAL["decoder-layers-none"], MINIMAL["gated-silu"]])
def test_derived_fields_follow_transformers(raw: dict[str, Any]) -> None:
    config, view = T5Config(**raw), view_of(ARCHITECTURE, raw)
    for key in ("num_decoder_layers", "is_gated_act", "tie_word_embeddings"):
        assert getattr(view, key) == getattr(config, key), key


def test_untied_file_describes_as_transformers_filled_in() -> None:
    # T5 v1.1 / flan-t5 config.json files say tie_word_embeddings: false.
    raw = {**PRESETS["t5-tiny"], "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
    description = describe_with(ARCHITECTURE, raw)
    assert description == describe_with(ARCHITECTURE, _filled(raw))

"""T5 descriptions from a config alone, without torch or transformers."""

from __future__ import annotations

from typing import Any

import pytest

from partita.formats.architectures import (
    architecture_for,
    config_from_sizes,
    describe_config,
    describe_with,
    presets,
)
from partita.formats.architectures.t5 import ARCHITECTURE, PRESETS

TINY = PRESETS["t5-tiny"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("d_model", 0),
        ("num_heads", -2),
        ("d_kv", 0),
        ("d_ff", 1.5),
        ("vocab_size", None),
        ("num_layers", True),
        ("num_decoder_layers", 0),
        ("relative_attention_num_buckets", "32"),
        ("feed_forward_proj", "relu-gated"),
        ("feed_forward_proj", "gated-gelu-x"),
        ("feed_forward_proj", 3),
    ],
)
def test_bad_field_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"my.json: {field}"):
        describe_with(ARCHITECTURE, {**TINY, field: value}, source="my.json")


def test_missing_field_takes_transformers_default() -> None:
    raw = {key: value for key, value in TINY.items() if key != "d_ff"}
    assert describe_with(ARCHITECTURE, raw).ffn_size == 2048
    minimal = describe_with(ARCHITECTURE, {"model_type": "t5"}, seq_len=16)
    assert (minimal.hidden_size, minimal.num_heads, minimal.vocab_size) == (512, 8, 32128)
    assert minimal.source["encoder_layers"] == minimal.source["decoder_layers"] == "6"
    assert minimal.seq_len == 16


def test_decoder_layers_default_to_the_encoders() -> None:
    for raw in (
        {**TINY, "num_layers": 3, "num_decoder_layers": None},
        {"model_type": "t5", "num_layers": 3},
    ):
        described = describe_with(ARCHITECTURE, raw, seq_len=8)
        assert described.source["decoder_layers"] == "3"
        assert sum(layer.name.startswith("decoder.") for layer in described.layers) == 3
    given = describe_with(ARCHITECTURE, {**TINY, "num_decoder_layers": 1})
    assert [x.name for x in given.layers if x.name.startswith("decoder.")] == ["decoder.0"]


def test_gated_feed_forward_has_a_third_matrix() -> None:
    plain = describe_with(ARCHITECTURE, TINY)
    gated = describe_with(ARCHITECTURE, {**TINY, "feed_forward_proj": "gated-gelu"})
    d, f, blocks = 64, 128, 2 + 2  # t5-tiny: d_model, d_ff, encoder and decoder blocks
    assert gated.params - plain.params == blocks * d * f
    assert gated.source["feed_forward_proj"] == "gated-gelu"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_layers(name: str) -> None:
    config = PRESETS[name]
    described = describe_with(ARCHITECTURE, config, name=name)
    n_enc, n_dec = config["num_layers"], config["num_decoder_layers"]
    assert isinstance(n_enc, int) and isinstance(n_dec, int)
    assert len(described.layers) == n_enc + n_dec + 3
    kinds = [layer.kind for layer in described.layers]
    assert kinds == ["embedding", *["block"] * (n_enc + 1 + n_dec), "head"]
    types = [layer.layer_type for layer in described.layers]
    assert types[1] == "t5_encoder_first_block"
    assert types[n_enc + 1] == "t5_decoder_embedding"
    assert types[n_enc + 2] == "t5_decoder_first_block"
    assert described.seq_len == config["n_positions"]
    assert described.family == "t5" and described.name == name


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_vocabulary_is_shared_by_embedding_bridge_and_head(name: str) -> None:
    described = describe_with(ARCHITECTURE, PRESETS[name], seq_len=16)
    assert [x.name for x in described.layers if x.vocab_parallel] == ["decoder_embedding"]
    assert described.shared_vocabulary == ("embedding", "decoder_embedding", "head")
    head = described.layers[-1]
    assert head.loss_bytes_per_sample == head.output_bytes_per_sample > 0
    assert all(x.loss_bytes_per_sample == 0 for x in described.layers[:-1])
    assert described.source["tied_embeddings"] == "true"


def test_default_seq_len_is_n_positions_else_512() -> None:
    assert describe_with(ARCHITECTURE, TINY).seq_len == 32
    without = {key: value for key, value in TINY.items() if key != "n_positions"}
    assert describe_with(ARCHITECTURE, without).seq_len == 512


def test_registered_with_the_other_families() -> None:
    assert architecture_for("t5") is ARCHITECTURE
    assert all(presets()[name] == config for name, config in PRESETS.items())
    assert describe_config(TINY, name="t5-tiny") == describe_with(
        ARCHITECTURE, TINY, name="t5-tiny"
    )


def test_sizes_map_to_t5_keys() -> None:
    config = config_from_sizes(
        "t5", {"layers": 2, "hidden": 32, "heads": 2, "ffn": 64, "vocab": 99}
    )
    assert config == {
        "model_type": "t5",
        "num_layers": 2,
        "d_model": 32,
        "num_heads": 2,
        "d_ff": 64,
        "vocab_size": 99,
    }
    with pytest.raises(ValueError, match="--kv-heads: t5 has no such size"):
        config_from_sizes("t5", {"kv_heads": 2})

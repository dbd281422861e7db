"""LLaMA specifics beyond the generic family tests: config variants, masks, GQA sharding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from partita.models.api import build_model, describe_model, resolve_config, synthetic_batch
from partita.models.attention import eager_attention, set_attention_core
from partita.models.families import family_of
from partita.models.families.llama import PRESETS, build, rope_frequencies
from partita.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from partita.models.layered import Activations, LayeredModel

TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def _config(**overrides: Any) -> dict[str, Any]:
    return {**PRESETS["llama-tiny"], **overrides}


def _assert_equal_to_transformers(source: dict[str, Any], batch: Activations) -> None:
    config = resolve_config(source)
    family = family_of(config)
    torch.manual_seed(0)
    reference = family.reference_model(config)
    model = build_model(config)
    model.load_state_dict(family.from_hf_state_dict(reference.state_dict(), config))
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    ref_logits, ref_loss = family.reference_outputs(reference, batch)
    ref_loss.backward()
    torch.testing.assert_close(outputs["logits"], ref_logits, **TOLERANCE)
    torch.testing.assert_close(loss, ref_loss, **TOLERANCE)
    ref_grads = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}
    mapped = family.from_hf_state_dict(ref_grads, config)
    for key, param in model.named_parameters(remove_duplicate=False):
        torch.testing.assert_close(param.grad, mapped[key], **TOLERANCE, msg=key)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_bias": True, "mlp_bias": True},
        {"tie_word_embeddings": True},
        {"rope_theta": 500000.0},
        {"head_dim": 32},  # wider than hidden_size // heads
        {"num_key_value_heads": 1},  # multi-query
        {"num_key_value_heads": 4},  # plain multi-head
        {"pad_token_id": 0},  # the padding row gets no embedding gradient
    ],
)
def test_config_variants_equal_transformers(overrides: dict[str, Any]) -> None:
    source = _config(**overrides)
    batch = synthetic_batch(source, batch_size=2, seq_len=16)
    batch["input_ids"][0, :3] = 0
    _assert_equal_to_transformers(source, batch)


def test_padding_mask_and_positions_equal_transformers() -> None:
    batch = synthetic_batch("llama-tiny", batch_size=2, seq_len=16)
    mask = torch.ones_like(batch["input_ids"])
    mask[1, -5:] = 0  # right padding: every query still sees a real key
    batch["attention_mask"] = mask
    batch["position_ids"] = torch.arange(7, 23).expand(2, -1)
    _assert_equal_to_transformers(_config(), batch)


def test_padding_mask_changes_the_output() -> None:
    model = build_model("llama-tiny", seed=0)
    batch = synthetic_batch("llama-tiny", batch_size=2, seq_len=16)
    plain = model(batch)["logits"]
    mask = torch.ones_like(batch["input_ids"])
    mask[:, 3] = 0
    masked = model({**batch, "attention_mask": mask})["logits"]
    torch.testing.assert_close(masked[:, :3], plain[:, :3])  # causal: before the gap
    assert not torch.allclose(masked[:, 3:], plain[:, 3:])


def _shard_attention(model: LayeredModel, parts: int, x_bsh: torch.Tensor) -> torch.Tensor:
    """Column/row-parallel split of block 1's attention by slicing weights, summed back."""
    attn = model.layers[1].self_attn
    positions_bs = torch.arange(x_bsh.shape[1]).expand(x_bsh.shape[0], -1)
    total = torch.zeros_like(x_bsh)
    for rank in range(parts):
        shard = type(attn)(model.config)
        for name in ("q_proj", "k_proj", "v_proj"):
            full = getattr(attn, name).weight
            rows = full.shape[0] // parts
            getattr(shard, name).weight = torch.nn.Parameter(full[rank * rows : (rank + 1) * rows])
        cols = attn.o_proj.weight.shape[1] // parts
        shard.o_proj.weight = torch.nn.Parameter(
            attn.o_proj.weight[:, rank * cols : (rank + 1) * cols]
        )
        total = total + shard(x_bsh, positions_bs, None)
    return total


def test_gqa_attention_splits_by_heads_without_stored_counts() -> None:
    model = build_model("llama-tiny", seed=0)  # 4 query heads, 2 kv heads
    x_bsh = torch.randn(2, 16, 64)
    positions_bs = torch.arange(16).expand(2, -1)
    full = model.layers[1].self_attn(x_bsh, positions_bs, None)
    torch.testing.assert_close(_shard_attention(model, 2, x_bsh), full, rtol=1e-5, atol=1e-5)


def test_tied_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(_config(tie_word_embeddings=True), seed=0)
    loaded = load_hf_checkpoint(save_hf_checkpoint(model, tmp_path / "tied"))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key
    head = loaded.layers[-1].lm_head.weight
    assert head is loaded.layers[0].embed_tokens.weight


def test_half_precision_autocast_with_padding_stays_finite() -> None:
    model = build_model("llama-tiny", seed=0)
    batch = synthetic_batch("llama-tiny", batch_size=2, seq_len=16)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][1, -4:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)["logits"]
    assert torch.isfinite(logits).all()


def test_real_presets_use_llama2_sizes() -> None:
    seventy = describe_model("llama2-70b")
    assert (seventy.num_heads, seventy.num_kv_heads, seventy.seq_len) == (64, 8, 4096)
    assert len(seventy.blocks) == 80
    assert round(seventy.params / 1e9) == 69
    assert round(describe_model("llama2-7b").params / 1e9, 1) == 6.7


VARIANTS = ["llama-tiny", "mistral-tiny", "qwen2-tiny", "qwen3-tiny"]
# Scaled rope types, each with an original length below the test positions so scaling acts.
ROPE_SCALINGS = [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
    {"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.8, "beta_fast": 16.0},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    },
]


def _padded_batch(preset: str, seq_len: int = 16) -> Activations:
    batch = synthetic_batch(preset, batch_size=2, seq_len=seq_len)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    # Right padding shorter than the smallest window: every query still sees a real key
    # (a query seeing none gets arbitrary values, differently here and in transformers).
    batch["attention_mask"][1, -2:] = 0
    return batch


@pytest.mark.parametrize("preset", VARIANTS)
def test_each_model_type_equals_transformers_with_padding(preset: str) -> None:
    _assert_equal_to_transformers(resolve_config(preset).to_dict(), _padded_batch(preset))


@pytest.mark.parametrize("preset", VARIANTS)
@pytest.mark.parametrize("rope", ROPE_SCALINGS, ids=lambda rope: str(rope["rope_type"]))
def test_rope_scaling_equals_transformers(preset: str, rope: dict[str, Any]) -> None:
    source = {**PRESETS[preset], "rope_scaling": rope, "rope_theta": 10000.0}
    batch = synthetic_batch(source, batch_size=2, seq_len=16)
    batch["position_ids"] = torch.arange(40, 56).expand(2, -1)  # beyond the original length
    _assert_equal_to_transformers(source, batch)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_type": "mistral", "sliding_window": 3},
        {"model_type": "mistral", "sliding_window": None},
        {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 5},
        {"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 5},
        {"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 4},
        {"model_type": "qwen3", "attention_bias": True, "tie_word_embeddings": True},
        {"model_type": "qwen2", "head_dim": 32, "num_key_value_heads": 1},
    ],
)
def test_switches_equal_transformers(overrides: dict[str, Any]) -> None:
    source = _config(**overrides, max_window_layers=1)
    _assert_equal_to_transformers(source, _padded_batch(source))


def test_sliding_window_follows_transformers_layer_choice() -> None:
    qwen2 = build_model("qwen2-tiny")  # max_window_layers 1: only the second block slides
    assert [block.self_attn.window for block in qwen2.layers[1:-1]] == [None, 8]
    mistral = build_model("mistral-tiny")
    assert [block.self_attn.window for block in mistral.layers[1:-1]] == [8, 8]


def test_sliding_window_changes_the_output_beyond_the_window() -> None:
    batch = synthetic_batch("mistral-tiny", batch_size=2, seq_len=16)
    config = resolve_config("mistral-tiny")
    model = build_model(config, seed=0)
    config.sliding_window = None
    unwindowed = build_model(config, seed=0)
    windowed_logits, full_logits = model(batch)["logits"], unwindowed(batch)["logits"]
    torch.testing.assert_close(windowed_logits[:, :8], full_logits[:, :8])
    assert not torch.allclose(windowed_logits[:, 8:], full_logits[:, 8:])


@pytest.mark.parametrize("preset", ["mistral-tiny", "qwen2-tiny"])
def test_sliding_window_eager_equals_sdpa(preset: str) -> None:
    model = build_model(preset, seed=0)
    batch = _padded_batch(preset)
    sdpa_logits = model(batch)["logits"]
    set_attention_core(model, eager_attention)
    torch.testing.assert_close(model(batch)["logits"], sdpa_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", VARIANTS)
def test_checkpoint_round_trip_through_transformers(preset: str, tmp_path: Path) -> None:
    model = build_model(preset, seed=0)
    loaded = load_hf_checkpoint(save_hf_checkpoint(model, tmp_path / preset))
    assert loaded.config.model_type == model.config.model_type
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key


@pytest.mark.parametrize("rope", ROPE_SCALINGS, ids=lambda rope: str(rope["rope_type"]))
def test_rope_frequencies_are_computed_under_a_meta_device_context(rope: dict[str, Any]) -> None:
    config = resolve_config(_config(rope_scaling=rope))
    with torch.device("meta"):
        attention = build(config).layers[1].self_attn
    expected, scaling = rope_frequencies(config)
    assert attention.inv_freq_d.device.type == "cpu"
    assert torch.equal(attention.inv_freq_d, expected)
    assert attention.attention_scaling == scaling


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_rope_that_changes_with_sequence_length_is_refused(rope_type: str) -> None:
    rope = {"rope_type": rope_type, "factor": 2.0}
    if rope_type == "longrope":
        rope.update(short_factor=[1.0] * 8, long_factor=[2.0] * 8)
        rope["original_max_position_embeddings"] = 64
    with pytest.raises(ValueError, match=f"llama: rope scaling '{rope_type}' is unsupported"):
        build_model(_config(rope_scaling=rope))


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="num_key_value_heads 3 does not divide"):
        build_model(_config(num_key_value_heads=3))


def test_activation_other_than_silu_is_refused() -> None:
    with pytest.raises(ValueError, match="llama: hidden_act 'gelu' is unsupported"):
        describe_model(_config(hidden_act="gelu"))


def test_a_sliding_window_counts_less_attention_at_long_sequences() -> None:
    """Mistral-7B slides a 4096-token window: at its default 4096 tokens nothing changes, at
    16K its attention is counted at 7/16 of the dense product (the window's pairs against
    the causal triangle's, on the description's dense scale)."""
    config = resolve_config("mistral-7b")
    windowed = {s: describe_model(config, seq_len=s).blocks[0] for s in (4096, 16384)}
    config.sliding_window = None
    dense = {s: describe_model(config, seq_len=s).blocks[0] for s in (4096, 16384)}
    assert windowed[4096] == dense[4096]
    s, q_width = 16384, config.num_attention_heads * config.head_dim
    attention = 4 * s * s * q_width
    saved = dense[s].forward_flops_per_sample - windowed[s].forward_flops_per_sample
    assert (attention - saved) / attention == pytest.approx(7 / 16, rel=1e-3)

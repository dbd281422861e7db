"""T5 specifics: the gated (v1.1) variant, padding masks, the carried position bias, bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from partita.models.api import build_model, describe_model, resolve_config, synthetic_batch
from partita.models.families import family_of
from partita.models.families.t5 import PRESETS
from partita.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from partita.models.layered import Activations, LayeredModel

TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
# T5 v1.1: gated GELU, and saved with tie_word_embeddings false, which transformers reads as
# "do not rescale the decoder output" (the head stays tied to the shared table).
V1_1 = {**PRESETS["t5-tiny"], "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def _pair(overrides: dict[str, object]) -> tuple[LayeredModel, torch.nn.Module]:
    config = resolve_config({**PRESETS["t5-tiny"], **overrides})
    family = family_of(config)
    torch.manual_seed(0)
    reference = family.reference_model(config)
    model = build_model(config)
    model.load_state_dict(family.from_hf_state_dict(reference.state_dict(), config))
    return model, reference


def _padded(batch: Activations) -> Activations:
    mask = torch.ones_like(batch["input_ids"])
    mask[0, -7:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    return {**batch, "attention_mask": mask}


def _assert_equal_to_transformers(overrides: dict[str, object], batch: Activations) -> None:
    model, reference = _pair(overrides)
    family = family_of(model.config)
    outputs = model(batch)
    loss = model.loss(outputs, batch)
    loss.backward()
    ref_logits, ref_loss = family.reference_outputs(reference, batch)
    ref_loss.backward()
    torch.testing.assert_close(outputs["logits"], ref_logits, **TOLERANCE)
    torch.testing.assert_close(loss, ref_loss, **TOLERANCE)
    ref_grads = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}
    mapped = family.from_hf_state_dict(ref_grads, model.config)
    for key, param in model.named_parameters(remove_duplicate=False):
        torch.testing.assert_close(param.grad, mapped[key], **TOLERANCE, msg=key)


def test_gated_gelu_v1_1_equals_transformers() -> None:
    config = resolve_config(V1_1)
    assert config.is_gated_act and not config.scale_decoder_outputs
    _assert_equal_to_transformers(V1_1, synthetic_batch(V1_1, batch_size=2))


@pytest.mark.parametrize("overrides", [{}, V1_1], ids=["relu", "gated-gelu"])
def test_padding_mask_equals_transformers(overrides: dict[str, object]) -> None:
    batch = _padded(synthetic_batch("t5-tiny", batch_size=2))
    _assert_equal_to_transformers(overrides, batch)


def test_unequal_encoder_and_decoder_depths_equal_transformers() -> None:
    overrides = {"num_layers": 3, "num_decoder_layers": 1}
    _assert_equal_to_transformers(overrides, synthetic_batch("t5-tiny", batch_size=2))


def test_decoder_inputs_default_to_the_shifted_labels() -> None:
    model = build_model("t5-tiny", seed=0)
    batch = synthetic_batch("t5-tiny", batch_size=2)
    assert torch.equal(batch["decoder_input_ids"][:, 0], torch.zeros(2, dtype=torch.long))
    without = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    torch.testing.assert_close(model(without)["logits"], model(batch)["logits"], rtol=0, atol=0)


def test_position_bias_is_carried_and_its_gradient_crosses_a_cut() -> None:
    """A two-stage pipeline cut after each first block still trains the bias tables."""
    model = build_model("t5-tiny", seed=0)
    batch = synthetic_batch("t5-tiny", batch_size=2)
    model.loss(model(batch), batch).backward()
    whole = {k: p.grad.clone() for k, p in model.named_parameters()}
    for cut in (2, model.layer_index("decoder.0") + 1):
        model.zero_grad()
        sent = model.run_layers(dict(batch), 0, cut)
        assert any(key.endswith("position_bias") for key in sent)
        received = {
            k: v.detach().requires_grad_() if v.is_floating_point() else v for k, v in sent.items()
        }
        model.loss(model.run_layers(received, cut), batch).backward()
        floats = [k for k in sent if sent[k].is_floating_point()]
        torch.autograd.backward([sent[k] for k in floats], [received[k].grad for k in floats])
        for key, param in model.named_parameters():
            torch.testing.assert_close(param.grad, whole[key], **TOLERANCE, msg=key)


def test_first_blocks_own_the_bias_tables() -> None:
    config = resolve_config("t5-tiny")
    model = build_model(config)
    description = describe_model(config)
    layouts = family_of(config).tp_layouts(config)
    table = "self_attn.relative_attention_bias.weight"
    for layer, layer_type, module in zip(
        description.layers, model.layer_types, model.layers, strict=True
    ):
        owns = table in dict(module.named_parameters())
        assert owns == layer_type.endswith("first_block"), layer.name
        assert (table in layouts[layer_type].head_parameters) == owns
    shapes = {tuple(p.shape) for n, p in model.named_parameters() if n.endswith(table)}
    assert shapes == {(config.relative_attention_num_buckets, config.num_heads)}
    assert [layer.kind for layer in description.layers].count("block") == 2 + 1 + 2


def test_v1_1_checkpoint_round_trip(tmp_path: Path) -> None:
    model, _ = _pair(V1_1)
    save_hf_checkpoint(model, tmp_path / "out")
    loaded = load_hf_checkpoint(tmp_path / "out")
    assert not loaded.config.scale_decoder_outputs  # no rescale survives config.json
    batch = synthetic_batch(V1_1, batch_size=2)
    torch.testing.assert_close(loaded(batch)["logits"], model(batch)["logits"], rtol=0, atol=0)


def test_an_untied_head_checkpoint_is_refused() -> None:
    model, reference = _pair({})
    state = dict(reference.state_dict())
    state["lm_head.weight"] = state["shared.weight"] + 1
    with pytest.raises(ValueError, match="differs from the shared embedding"):
        family_of(model.config).from_hf_state_dict(state, model.config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": 0}, "num_heads must be positive"),
        ({"num_decoder_layers": 0}, "num_decoder_layers must be positive"),
        ({"d_kv": 0}, "d_kv must be positive"),
        ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj 'gated-tanh' is unsupported"),
        ({"relative_attention_max_distance": 8}, "relative_attention_num_buckets 16 must be"),
        ({"decoder_start_token_id": None, "pad_token_id": None}, "both unset"),
    ],
)
def test_bad_configs_raise_one_clear_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model({**PRESETS["t5-tiny"], **overrides})
    with pytest.raises(ValueError, match=message):
        describe_model({**PRESETS["t5-tiny"], **overrides})


def test_another_family_config_is_refused() -> None:
    with pytest.raises(ValueError, match="t5: expected a T5Config, got GPT2Config"):
        family_of(resolve_config("t5-tiny")).build(GPT2Config())


def test_decoder_attention_mask_is_refused() -> None:
    model = build_model("t5-tiny", seed=0)
    batch = synthetic_batch("t5-tiny", batch_size=2)
    with pytest.raises(ValueError, match="decoder_attention_mask is unsupported"):
        model({**batch, "decoder_attention_mask": torch.ones_like(batch["labels"])})


def test_real_presets_cost_what_t5_should() -> None:
    base = describe_model("t5-base")
    assert base.seq_len == 512
    assert base.params == 222_903_552  # the published t5-base parameter count
    # Decoder blocks have the cross-attention on top of an encoder block's work.
    encoder = next(layer for layer in base.layers if layer.layer_type == "t5_encoder_block")
    decoder = next(layer for layer in base.layers if layer.layer_type == "t5_decoder_block")
    s, d = 512, 768
    cross = 2 * s * 4 * d * d + 4 * s * s * d
    assert decoder.forward_flops_per_sample == encoder.forward_flops_per_sample + cross

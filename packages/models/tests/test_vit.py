"""ViT specifics: other geometries against transformers, bad configs and inputs."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import ViTConfig

from partita.models.api import build_model, describe_model
from partita.models.families import vit

EXACT = {"rtol": 1e-6, "atol": 1e-6}
TINY = {k: v for k, v in vit.PRESETS["vit-tiny"].items() if k != "model_type"}

GEOMETRIES = {
    # A rectangular image whose width the patches do not cover (the remainder is dropped).
    "rectangular_with_remainder": {"image_size": [32, 44], "patch_size": [8, 6]},
    "no_qkv_bias_tanh_gelu": {"qkv_bias": False, "hidden_act": "gelu_pytorch_tanh"},
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_geometry_equals_transformers(geometry: str) -> None:
    config = ViTConfig(**{**TINY, **GEOMETRIES[geometry]})
    torch.manual_seed(0)
    reference = vit.reference_model(config)
    model = vit.build(config)
    model.load_state_dict(vit.from_hf_state_dict(reference.state_dict(), config))
    batch = vit.synthetic_batch(config, 2, vit.FAMILY.default_seq_len(config), torch.Generator())
    outputs = model(batch)
    model.loss(outputs, batch).backward()
    ref_logits, ref_loss = vit.reference_outputs(reference, batch)
    ref_loss.backward()
    torch.testing.assert_close(outputs["logits"], ref_logits, **EXACT)
    mapped = vit.from_hf_state_dict({k: p.grad for k, p in reference.named_parameters()}, config)
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad, mapped[key], **EXACT, msg=key)


def test_description_counts_the_cls_token() -> None:
    description = describe_model("vit-base")
    assert description.seq_len == 14 * 14 + 1
    assert {layer.seq_len for layer in description.layers} == {197}
    assert (description.vocab_size, description.num_labels) == (0, 1000)
    embedding = description.layers[0]
    assert embedding.forward_flops_per_sample == 2 * 196 * (3 * 16 * 16) * 768


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_attention_heads": 5}, "num_attention_heads 5 does not divide hidden_size 64"),
        ({"num_labels": 1}, "num_labels must be at least 2"),
        ({"problem_type": "regression"}, "problem_type 'regression' is unsupported"),
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
        ({"patch_size": 64}, "patch_size 64 exceeds image_size"),
        ({"image_size": 0}, "image_size must be positive"),
    ],
)
def test_bad_config_is_one_clear_value_error(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        vit.check_config(ViTConfig(**{**TINY, **overrides}))


def test_images_of_another_size_are_refused() -> None:
    model = build_model("vit-tiny", seed=0)
    with pytest.raises(ValueError, match=re.escape("pixel_values must be [batch, 3, 32, 32]")):
        model({"pixel_values": torch.randn(1, 3, 48, 48)})


def test_seq_len_other_than_the_patch_count_is_refused() -> None:
    with pytest.raises(ValueError, match="seq_len 16 differs from the 17 tokens"):
        describe_model("vit-tiny", seq_len=16)


def test_half_precision_model_takes_float32_pixels() -> None:
    model = build_model("vit-tiny", seed=0).to(torch.bfloat16)
    logits = model({"pixel_values": torch.randn(2, 3, 32, 32)})["logits"]
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 10)

"""BERT specifics beyond the generic family tests: the batch, the mask, config variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from partita.models.api import build_model, describe_model, resolve_config, synthetic_batch
from partita.models.families import family_of
from partita.models.families.bert import PRESETS
from partita.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from partita.models.layered import Activations
from partita.models.losses import IGNORE_INDEX

TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def _config(**overrides: Any) -> dict[str, Any]:
    return {**PRESETS["bert-tiny"], **overrides}


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
        {"tie_word_embeddings": False},
        {"hidden_act": "gelu_new"},
        {"hidden_act": "relu", "type_vocab_size": 1},
    ],
)
def test_config_variants_equal_transformers(overrides: dict[str, Any]) -> None:
    source = _config(**overrides)
    _assert_equal_to_transformers(source, synthetic_batch(source, batch_size=2, seq_len=16))


def test_batch_without_mask_or_segments_equals_transformers() -> None:
    batch = synthetic_batch("bert-tiny", batch_size=2, seq_len=16)
    del batch["attention_mask"], batch["token_type_ids"]
    _assert_equal_to_transformers(_config(), batch)


def test_synthetic_batch_pads_the_last_sample_and_labels_about_15_percent() -> None:
    batch = synthetic_batch("bert-tiny", batch_size=4, seq_len=128, seed=3)
    again = synthetic_batch("bert-tiny", batch_size=4, seq_len=128, seed=3)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    mask, labels = batch["attention_mask"], batch["labels"]
    assert mask[:-1].all() and not mask[-1, -1] and mask[-1, 0]
    assert (batch["input_ids"][mask == 0] == 0).all()  # pad_token_id
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    picked = labels != IGNORE_INDEX
    assert 0.10 < picked.float().mean() < 0.20
    assert torch.equal(labels[picked], batch["input_ids"][picked])
    assert batch["token_type_ids"][:, 64:].all() and not batch["token_type_ids"][:, :64].any()


def test_padded_tokens_do_not_change_real_positions() -> None:
    model = build_model("bert-tiny", seed=0)
    batch = synthetic_batch("bert-tiny", batch_size=2, seq_len=32)
    logits = model(batch)["logits"]
    padded = batch["attention_mask"] == 0
    changed = {**batch, "input_ids": batch["input_ids"].masked_fill(padded, 7)}
    torch.testing.assert_close(model(changed)["logits"][~padded], logits[~padded])
    unmasked = {k: v for k, v in batch.items() if k != "attention_mask"}
    assert not torch.allclose(model(unmasked)["logits"][-1], logits[-1])


def test_untied_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(_config(tie_word_embeddings=False), seed=0)
    loaded = load_hf_checkpoint(save_hf_checkpoint(model, tmp_path / "untied"))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key


def test_half_precision_autocast_with_padding_stays_finite() -> None:
    model = build_model("bert-tiny", seed=0)
    batch = synthetic_batch("bert-tiny", batch_size=2, seq_len=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)["logits"]
    assert torch.isfinite(logits).all()


def test_real_presets_use_bert_sizes() -> None:
    base, large = describe_model("bert-base"), describe_model("bert-large")
    assert (base.seq_len, len(base.blocks), base.vocab_size) == (512, 12, 30522)
    assert (large.hidden_size, len(large.blocks), large.num_heads) == (1024, 24, 16)


def test_heads_must_divide_hidden_size() -> None:
    with pytest.raises(ValueError, match="num_attention_heads 5 does not divide hidden_size 64"):
        build_model(_config(num_attention_heads=5))


def test_sequence_longer_than_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="bert: seq_len 256 exceeds max_position_embeddings 128"):
        describe_model("bert-tiny", seq_len=256)


def test_decoder_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="bert: is_decoder and add_cross_attention"):
        build_model(_config(is_decoder=True))

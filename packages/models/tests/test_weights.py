"""Pretrained weights read piece by piece (``partita.models.weights``): the same values as the
whole checkpoint read at once, only the bytes of the piece asked for, plain refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from partita.models.api import resolve_config, synthetic_batch
from partita.models.families import FAMILIES, family_of
from partita.models.hf_io import load_hf_checkpoint
from partita.models.init import Box, build_empty, materialize
from partita.models.weights import PretrainedWeights, weights_file

FAMILY_NAMES = [*sorted(FAMILIES), "mistral", "qwen2", "qwen3"]


def _save_reference(preset: str, folder: Path, **kwargs: object) -> torch.nn.Module:
    """A transformers model of ``preset`` with its own random init, saved with safetensors."""
    config = resolve_config(preset)
    torch.manual_seed(0)
    reference = family_of(config).reference_model(config)
    reference.save_pretrained(folder, safe_serialization=True, **kwargs)
    return reference


def _pretrained(folder: Path) -> tuple[torch.nn.Module, PretrainedWeights]:
    config = resolve_config(folder)
    weights = PretrainedWeights(folder, config)
    return materialize(build_empty(config), seed=0, weights=weights), weights


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pieces_equal_the_whole_checkpoint_read_at_once(name: str, tmp_path: Path) -> None:
    _save_reference(f"{name}-tiny", tmp_path)
    model, _ = _pretrained(tmp_path)
    ours, whole = model.state_dict(), load_hf_checkpoint(tmp_path).state_dict()
    assert ours.keys() == whole.keys()
    for key in ours:
        assert torch.equal(ours[key], whole[key]), key


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny"])
def test_loss_equals_transformers_on_the_same_weights(preset: str, tmp_path: Path) -> None:
    reference = _save_reference(preset, tmp_path)
    model, _ = _pretrained(tmp_path)
    batch = synthetic_batch(preset, batch_size=2)
    _, ref_loss = family_of(model.config).reference_outputs(reference, batch)
    loss = model.loss(model(batch), batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)


def test_a_sharded_checkpoint_is_read_through_its_index(tmp_path: Path) -> None:
    _save_reference("llama-tiny", tmp_path, max_shard_size="100KB")
    assert weights_file(tmp_path) == "model.safetensors.index.json"
    model, weights = _pretrained(tmp_path)
    assert len(set(weights.files.values())) > 1
    whole = load_hf_checkpoint(tmp_path).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, whole[key]), key


def test_a_renamed_tensor_reads_only_the_bytes_of_its_piece(tmp_path: Path) -> None:
    _save_reference("llama-tiny", tmp_path)
    weights = PretrainedWeights(tmp_path, resolve_config(tmp_path))
    name = "layers.1.mlp.gate_proj.weight"
    assert name in weights.renamed
    rows, cols = weights.shapes[name]
    piece = torch.empty(rows // 2, cols)
    weights.fill(piece, name, Box((rows // 2, 0), (rows, cols)))
    assert weights.bytes_read == piece.numel() * 4
    whole = load_hf_checkpoint(tmp_path).state_dict()[name]
    assert torch.equal(piece, whole[rows // 2 :])


def test_a_transposed_tensor_reads_its_source_once_for_q_k_and_v(tmp_path: Path) -> None:
    _save_reference("gpt-tiny", tmp_path)
    weights = PretrainedWeights(tmp_path, resolve_config(tmp_path))
    assert "layers.1.attn.q_proj.weight" not in weights.renamed  # Conv1D: transposed
    for part in ("q", "k", "v"):
        name = f"layers.1.attn.{part}_proj.weight"
        weights.fill(torch.empty(weights.shapes[name]), name, Box.whole(weights.shapes[name]))
    fused = weights.meta["transformer.h.0.attn.c_attn.weight"]
    assert weights.bytes_read == fused.numel() * 4


def test_missing_weights_and_wrong_shapes_are_refused(tmp_path: Path) -> None:
    _save_reference("llama-tiny", tmp_path)
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        PretrainedWeights(tmp_path / "none", resolve_config(tmp_path))
    weights = PretrainedWeights(tmp_path, resolve_config(tmp_path))
    with pytest.raises(ValueError, match=r"does not provide layers\.9\.x"):
        weights.check({"layers.9.x": (1,)})
    name = "layers.0.embed_tokens.weight"
    with pytest.raises(ValueError, match=re.escape(f"tensor for {name} has shape")):
        weights.check({name: (3, 3)})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"has no tensor 'model\.layers\.2"):
        PretrainedWeights(tmp_path, resolve_config(tmp_path))

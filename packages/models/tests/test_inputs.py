"""Bad input gets one clear error; text data and the describe command work offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from partita.formats import ModelDescription, load
from partita.models.api import build_model, describe_model
from partita.models.config import load_config
from partita.models.hf_io import load_hf_checkpoint, save_hf_checkpoint
from partita.models.text_data import TextBatches, sample_text_path, tokenize_file


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'gpt-huge': not a preset \(.*gpt-tiny"):
        load_config("gpt-huge")


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'; supported families: gpt"):
        load_config({"model_type": "mamba", "hidden_size": 64})


def test_heads_must_divide_hidden_size() -> None:
    with pytest.raises(ValueError, match="n_head 5 does not divide n_embd 64"):
        build_model({"model_type": "gpt2", "n_embd": 64, "n_head": 5, "n_layer": 1})


def test_sequence_longer_than_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="seq_len 256 exceeds n_positions 128"):
        describe_model("gpt-tiny", seq_len=256)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a Hugging Face model directory \(no config.json\)"):
        load_config(tmp_path)


@pytest.fixture
def saved_gpt(tmp_path: Path) -> Path:
    return save_hf_checkpoint(build_model("gpt-tiny", seed=0), tmp_path / "gpt")


def test_missing_weights_file(saved_gpt: Path) -> None:
    (saved_gpt / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no model.safetensors or model.safetensors.index.json"):
        load_hf_checkpoint(saved_gpt)


def test_missing_tensor_is_named(saved_gpt: Path) -> None:
    tensors = load_file(str(saved_gpt / "model.safetensors"))
    del tensors["transformer.h.1.ln_2.bias"]
    save_file(tensors, str(saved_gpt / "model.safetensors"))
    with pytest.raises(ValueError, match=r"has no tensor 'transformer.h.1.ln_2.bias'"):
        load_hf_checkpoint(saved_gpt)


def test_shape_mismatch_is_named(saved_gpt: Path) -> None:
    config = json.loads((saved_gpt / "config.json").read_text())
    config["vocab_size"] = 1024
    (saved_gpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"tensor for layers.0.wte.weight has shape \(512, 64\) but"
    ):
        load_hf_checkpoint(saved_gpt)


def test_sharded_checkpoint_is_read(saved_gpt: Path) -> None:
    tensors = load_file(str(saved_gpt / "model.safetensors"))
    names = sorted(tensors)
    halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(saved_gpt / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (saved_gpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (saved_gpt / "model.safetensors").unlink()
    model = load_hf_checkpoint(saved_gpt)
    assert torch.equal(
        model.state_dict()["layers.1.ln_2.bias"], tensors["transformer.h.0.ln_2.bias"]
    )


def test_text_batches_from_the_shipped_sample() -> None:
    tokens = tokenize_file(sample_text_path(), kind="bytes", vocab_size=512)
    assert int(tokens.max()) < 256
    batches = TextBatches(tokens, seq_len=32, batch_size=4, seed=1)
    first = next(batches)
    assert first["input_ids"].shape == (4, 32)
    assert torch.equal(first["labels"], first["input_ids"])
    resumed = TextBatches(tokens, seq_len=32, batch_size=4, seed=1, position=1)
    assert torch.equal(next(batches)["input_ids"], next(resumed)["input_ids"])


def test_bpe_tokenizer_is_trained_locally_within_the_vocabulary() -> None:
    tokens = tokenize_file(sample_text_path(), kind="bpe", vocab_size=400)
    assert int(tokens.max()) < 400
    assert tokens.numel() < len(sample_text_path().read_bytes())  # merges happened


def test_text_too_short_for_a_batch(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    tokens = tokenize_file(short, kind="bytes", vocab_size=512)
    with pytest.raises(ValueError, match="too few for one batch of 2 x 32"):
        TextBatches(tokens, seq_len=32, batch_size=2)


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def test_describe_command_writes_a_valid_description(tmp_path: Path) -> None:
    out = tmp_path / "model.json"
    result = subprocess.run(
        [_partita(), "describe", "gpt-tiny", "--seq", "64", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    description = load(out, ModelDescription)
    assert description.seq_len == 64
    assert description.params == sum(p.numel() for p in build_model("gpt-tiny").parameters())
    assert "blocks.3" in result.stdout


def test_config_rejected_by_transformers_is_one_value_error() -> None:
    with pytest.raises(ValueError, match="the config dict: invalid llama config"):
        load_config({"model_type": "llama", "hidden_size": 66, "num_attention_heads": 4})

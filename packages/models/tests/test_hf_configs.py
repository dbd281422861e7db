"""Describing real config.json files, and refusing the ones we cannot build in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from partita.formats.cli import main
from partita.models.api import build_model, describe_model, resolve_config, synthetic_batch
from partita.models.families import family_of
from partita.models.presets import all_presets

HF_CONFIGS = Path(__file__).parent / "data" / "hf_configs"
# Parameter counts the model pages state (exactly, from the safetensors index): a check that
# the config files were copied right, independent of transformers.
PUBLISHED_PARAMS = {
    "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.2-1B": 1_235_814_400,
    "Mistral-7B-v0.1": 7_241_732_096,
    "Qwen2.5-7B": 7_615_616_512,
}


def _reference_params(source: str | Path) -> int:
    config = resolve_config(source)
    with torch.device("meta"):  # real sizes, no memory
        reference = family_of(config).reference_model(config)
    return sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_describe_of_a_real_config_counts_transformers_parameters(name: str) -> None:
    params = describe_model(HF_CONFIGS / name).params
    assert params == _reference_params(HF_CONFIGS / name) == PUBLISHED_PARAMS[name]


def test_partita_describe_reads_a_config_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qwen.json"
    code = main(["describe", str(HF_CONFIGS / "Qwen2.5-7B"), "--seq", "512", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["source"]["model_type"] == "qwen2"


def _optional_field_cases() -> list[tuple[str, dict[str, Any], str]]:
    """(case, config document, dropped key): every key but model_type of every tiny preset
    and of the real configs, dropped one at a time."""
    documents = {name: dict(cfg) for name, cfg in all_presets().items() if name.endswith("-tiny")}
    for directory in sorted(HF_CONFIGS.iterdir()):
        if directory.is_dir():
            documents[directory.name] = json.loads((directory / "config.json").read_text())
    return [
        (f"{name}-without-{key}", {k: v for k, v in doc.items() if k != key}, key)
        for name, doc in sorted(documents.items())
        for key in doc
        if key != "model_type"
    ]


@pytest.mark.parametrize(
    ("document", "key"),
    [pytest.param(doc, key, id=case) for case, doc, key in _optional_field_cases()],
)
def test_a_config_missing_a_field_is_described_or_refused_in_one_line(
    document: dict[str, Any], key: str, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(document))
    try:
        description = describe_model(tmp_path)
    except ValueError as error:  # any other exception fails the test with its traceback
        assert "\n" not in str(error), str(error)
        return
    assert description.params > 0


def test_t5_config_without_decoder_start_token_id_starts_from_padding(tmp_path: Path) -> None:
    document = {k: v for k, v in all_presets()["t5-tiny"].items() if k != "decoder_start_token_id"}
    (tmp_path / "config.json").write_text(json.dumps(document))
    model = build_model(tmp_path, seed=0)
    batch = synthetic_batch(tmp_path, batch_size=2, seq_len=8)
    outputs = model(batch)
    assert torch.isfinite(model.loss(outputs, batch))
    assert describe_model(tmp_path).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"model_type": "gemma"}, "unsupported model_type 'gemma'"),
        (
            {"model_type": "llama", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
            "llama: rope scaling 'dynamic' is unsupported",
        ),
        ({"model_type": "mistral", "hidden_act": "gelu"}, "llama: hidden_act 'gelu'"),
        (
            {"model_type": "qwen2", "num_attention_heads": 28, "num_key_value_heads": 8},
            "num_key_value_heads 8 does not divide num_attention_heads 28",
        ),
    ],
)
def test_unbuildable_configs_are_refused_in_one_line(
    document: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(document))
    assert main(["describe", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err

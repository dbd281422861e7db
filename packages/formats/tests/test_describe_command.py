"""``partita describe`` without torch: from sizes, a preset or a Hugging Face config.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import ModelDescription, load
from partita.formats.architectures import describe_config, presets
from partita.formats.cli import main

DATA = Path(__file__).parent / "data"

GPT3_175B = [
    "--family", "gpt", "--layers", "96", "--hidden", "12288", "--heads", "96",
    "--ffn", "49152", "--vocab", "51200", "--seq", "2048",
]  # fmt: skip


def test_gpt3_175b_from_its_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpt3.json"
    assert main(["describe", *GPT3_175B, "--name", "gpt3-175b", "--out", str(out)]) == 0
    description = load(out, ModelDescription)
    assert len(description.blocks) == 96 and description.seq_len == 2048
    # 12 h^2 per block plus biases and norms, the 51200 x h table and 2048 positions
    # (tied head): Brown et al. 2020 report 175.0B.
    assert description.params == pytest.approx(175.0e9, rel=0.005)
    assert "gpt3-175b (gpt)" in capsys.readouterr().out


def test_sizes_equal_the_preset_they_spell() -> None:
    """Llama 3 8B spelled as sizes and --set is its preset, field for field."""
    spelled = [
        "--family", "llama", "--layers", "32", "--hidden", "4096", "--heads", "32",
        "--kv-heads", "8", "--ffn", "14336", "--vocab", "128256", "--positions", "131072",
    ]  # fmt: skip
    code = (
        "import sys, argparse\n"
        "from partita.formats.describe_command import COMMAND, _config\n"
        "p = argparse.ArgumentParser(); COMMAND.add_arguments(p)\n"
        f"config, _, _ = _config(p.parse_args({spelled!r}))\n"
        "from partita.formats.architectures import describe_config, presets\n"
        "assert describe_config(config, name='x') == describe_config(presets()['llama3-8b'], "
        "name='x'), 'differs'\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_describe_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    code = (
        "import sys, argparse\n"
        "from partita.formats.describe_command import COMMAND\n"
        "for argv in ([*sys.argv[1:]], ['llama3-70b', '--seq', '8192'], ['--family', 'qwen3']):\n"
        "    p = argparse.ArgumentParser(); COMMAND.add_arguments(p)\n"
        "    assert COMMAND.run(p.parse_args(argv)) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    config = str(DATA / "hf_config_qwen")
    subprocess.run([sys.executable, "-c", code, config], check=True, capture_output=True)


def test_a_config_folder_is_read_with_its_window_off() -> None:
    """Qwen2.5-7B's own config.json: sliding_window given, use_sliding_window false."""
    from partita.formats.architectures import read_hf_config

    config = read_hf_config(DATA / "hf_config_qwen")
    description = describe_config(config, seq_len=8192)
    kernels = {b.attention_kernel_flops_per_sample for b in description.blocks}
    assert len(kernels) == 1  # no layer slides
    assert description.params == pytest.approx(7.62e9, rel=0.005)  # Qwen2.5-7B: 7.61B


def test_set_overrides_a_preset_field() -> None:
    base = describe_config(presets()["gpt2"])
    assert main(["describe", "gpt2", "--set", "n_layer=6"]) == 0
    smaller = describe_config({**presets()["gpt2"], "n_layer": 6})
    assert len(smaller.blocks) == 6 < len(base.blocks)


def test_a_long_sequence_grows_a_default_position_table(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    argv = ["describe", "--family", "gpt", "--layers", "2", "--seq", "4096", "--out", str(out)]
    assert main(argv) == 0
    assert load(out, ModelDescription).seq_len == 4096


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--family", "gpt", "--set", "n_embd=-3"], "--family: n_embd must be a positive integer"),
        (["--family", "gemma"], "--family: unsupported model_type 'gemma'"),
        (["--family", "gpt", "--kv-heads", "2"], "--kv-heads: gpt has no such size"),
        (["gpt2", "--layers", "3"], "--layers: size flags describe a model from --family"),
        (["gpt2", "--family", "gpt"], "give a model or --family with sizes, not both"),
        (["gpt2", "--set", "n_layer"], "--set 'n_layer': expected KEY=VALUE"),
        (["gpt2", "--seq", "4096"], "preset gpt2: seq_len 4096 exceeds n_positions 1024"),
        (["no-such-model"], "no-such-model: neither a preset"),
        ([], "give a preset name, a Hugging Face folder"),
    ],
)
def test_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "config.json: not valid JSON (line 1"),
        ('{"n_layer": 2}', "config.json: model_type: missing"),
        ('{"model_type": "llama", "rope_scaling": {"rope_type": "dynamic"}}', "rope scaling"),
        (
            '{"model_type": "qwen2", "num_attention_heads": 28, "num_key_value_heads": 8}',
            "num_key_value_heads 8 does not divide num_attention_heads 28",
        ),
    ],
)
def test_bad_config_files_are_one_line(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(text)
    assert main(["describe", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(tmp_path) in err[0], err


def test_missing_config_json_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}: no such file" in capsys.readouterr().err


def test_every_preset_is_listed_with_its_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "--list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == set(presets())
    assert lines["llama3-405b"].split()[1] == "405853.4"  # M parameters

"""``partita`` CLI, run as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import EXAMPLE_CLASSES, EXAMPLES

from partita.formats import plan
from partita.formats.cli import main


def _partita() -> list[str]:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None, "the partita console script is not installed beside python"
    return [script]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_partita(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_help_lists_the_show_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "show" in result.stdout


def test_the_module_runs_like_the_script() -> None:
    # ``python -m partita.formats.cli`` is how a torchrun the user starts can call partita.
    result = subprocess.run(
        [sys.executable, "-m", "partita.formats.cli", "show", str(EXAMPLES / "plan.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "ulysses" in result.stdout


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    # ``partita show ... | head -1``: stdout is a pipe whose reader is gone.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*_partita(), "show", str(EXAMPLES / "plan.json")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


SUMMARY_MARKERS = {
    "hardware_profile.json": ["all_reduce", "GB/s", "overlap slowdown"],
    "model_profile.json": ["gpt_block", "forward", "ckpt act/sample", "fp32, sdpa attention"],
    "model_description.json": ["blocks.3", "234,880 parameters"],
    "plan.json": ["layers  stage  tp  sp", "ulysses", "zero3", "predicted: iteration"],
    "run_report.json": [
        "(gloo, sdpa attention): completed, 5 step(s) of 5",
        "loss 6.2500 -> 5.8100",
        "rank",
    ],
    "checkpoint_manifest.json": ["after step 3 of 5", "data position 3", "loss 6.2500 -> 6.0300"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_show_prints_a_readable_summary(name: str) -> None:
    result = _run("show", str(EXAMPLES / name))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for marker in SUMMARY_MARKERS[name]:
        assert marker in result.stdout


def test_show_plan_lists_every_layer_with_its_stage() -> None:
    out = _run("show", str(EXAMPLES / "plan.json")).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:5] for row in rows] == [
        ["0", "0", "2", "megatron", "ddp"],
        ["1", "0", "2", "megatron", "ddp"],
        ["2", "1", "1", "none", "zero1"],
        ["3", "1", "2", "ulysses", "zero3"],
    ]


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_show_corrupt_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text((EXAMPLES / "plan.json").read_text()[:-40])
    line = _one_line_error(_run("show", str(bad)))
    assert line.startswith(f"partita show: error: {bad}: not valid JSON")


def test_show_newer_version_exits_2_naming_the_supported_version(tmp_path: Path) -> None:
    document = json.loads((EXAMPLES / "plan.json").read_text())
    document["version"] = 99
    future = tmp_path / "future.json"
    future.write_text(json.dumps(document))
    line = _one_line_error(_run("show", str(future)))
    assert f"version 99 is newer than the supported version {plan.VERSION} of partita.plan" in line


def test_show_checks_a_plan_against_model_and_world_size() -> None:
    plan, model = str(EXAMPLES / "plan.json"), str(EXAMPLES / "model_description.json")
    assert _run("show", plan, "--model", model, "--world-size", "4").returncode == 0
    line = _one_line_error(_run("show", plan, "--world-size", "8"))
    assert line == (
        f"partita show: error: {plan}: world_size: the plan is for 4 devices but 8 are running"
    )


def test_model_option_only_applies_to_plans() -> None:
    line = _one_line_error(_run("show", str(EXAMPLES / "run_report.json"), "--world-size", "4"))
    assert "apply to plans only" in line


def test_bad_arguments_get_one_line() -> None:
    line = _one_line_error(_run("show"))
    assert line.startswith("partita show: error: the following arguments are required: FILE")
    assert _one_line_error(_run("frobnicate")).startswith("partita: error: argument COMMAND")


def test_main_without_a_command_prints_help_and_returns_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err

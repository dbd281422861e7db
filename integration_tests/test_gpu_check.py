"""The GPU check (``benchmarks/gpu/check.sh``, docs/gpu.md) where there is no GPU: one line,
exit status 0, nothing written; and ``check.py``'s parts that need no GPU: the FLOP and MFU
formula, the peak by device name, reading ``partita simulate``'s summary, the plan variants,
the markdown summary, and stages that fail being recorded while the check goes on.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_SH = REPO_ROOT / "benchmarks" / "gpu" / "check.sh"
CHECK_PY = REPO_ROOT / "benchmarks" / "gpu" / "check.py"


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load_check()

SIMULATE_OUTPUT = """\
iteration 145.769 ms, 54.88 samples/s, bubble 0.0% of the iteration

  stage  devices        busy  bubble      params  grads     optim      acts    transient      peak  of memory
      0        1  145.769 ms  0.0 us  470.75 KiB  256 B  2.76 MiB  2.59 MiB  1022.01 KiB  6.81 MiB         0%
"""  # noqa: E501  (partita simulate's own line)

TORCHRUN_STDERR = """\
[rank0]:   File "trainer.py", line 188, in _autocast
[rank0]: AttributeError: 'PipelineTrainer' object has no attribute 'parallel'
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
partita.executor.worker FAILED
partita train: error: rank 0 exited with 1; the job was stopped (exit 1)
"""


def _plan(*, layers: int = 4, micro_batches: int = 1, ckpt: str = "none") -> dict[str, Any]:
    return {
        "format": "partita.plan",
        "version": 3,
        "world_size": 1,
        "mesh_axis_order": ["pp", "dp", "tp"],
        "global_batch_size": 8,
        "num_micro_batches": micro_batches,
        "pipeline": {"degree": 1, "schedule": "gpipe", "stage_num_layers": [layers]},
        "layers": [{"tp": 1, "sp": "none", "dp": "ddp", "ckpt": ckpt}] * layers,
        "vocab": {"tp": 1, "sp": False, "dp": "ddp"},
        "precision": "bf16",
        "provenance": {"created_by": "partita plan --space full"},
        "predictions": {
            "iteration_time_s": 0.1,
            "throughput_samples_per_s": 80.0,
            "peak_memory_bytes_per_stage": [1000],
        },
    }


def _check(tmp_path: Path, *, total_s: float = 60.0) -> Any:
    work = tmp_path / "work"
    work.mkdir()
    args = gpu_check.parse(["--out", str(tmp_path / "out"), "--allow-cpu"])
    return gpu_check.Check(
        out=tmp_path / "out",
        work=work,
        deadline=gpu_check.Deadline(started_at=gpu_check.time.time(), total_s=total_s),
        results=gpu_check.new_results(args, gpu_check.time.time()),
        log=lambda text: None,
    )


# ---------------------------------------------------------------------------------------
# Without CUDA


def test_check_sh_without_cuda_prints_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cwd, out, env_out = tmp_path / "cwd", tmp_path / "out", tmp_path / "env-out"
    cwd.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env["OUT"] = str(env_out)
    result = subprocess.run(
        ["bash", str(CHECK_SH), "--out", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu check: no CUDA device here (torch "), lines
    assert lines[0].endswith("; nothing measured")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]  # neither --out nor $OUT
    assert list(cwd.iterdir()) == []  # nor ./gpu-check


# ---------------------------------------------------------------------------------------
# Formulas and lookups


def test_model_flops_per_step_on_known_numbers() -> None:
    # 6 * 100 * (3 * 8) + 12 * 2 * 4 * 8^2 * 3 = 14,400 + 18,432
    flops = gpu_check.model_flops_per_step(params=100, num_layers=2, hidden=4, seq=8, batch=3)
    assert flops == 32_832
    # gpt2-xl (1,557,611,200 parameters, 48 blocks, hidden 1600) at seq 1024, batch 8
    xl = gpu_check.model_flops_per_step(
        params=1_557_611_200, num_layers=48, hidden=1600, seq=1024, batch=8
    )
    assert xl == 84_290_646_835_200


def test_mfu_and_measured_step() -> None:
    assert gpu_check.mfu(494.5e12, 1.0, 989e12) == pytest.approx(0.5)
    assert gpu_check.mfu(84.29e12, 0.2, 989e12) == pytest.approx(0.42614, rel=1e-4)
    # median after the 3 warm-up steps; all steps when there are no more
    assert gpu_check.measured_step_s([9.0, 5.0, 5.0, 1.0, 2.0, 3.0]) == 2.0
    assert gpu_check.measured_step_s([4.0, 2.0]) == 3.0
    with pytest.raises(ValueError):
        gpu_check.measured_step_s([])


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA RTX A1000", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_by_device_name(name: str, tflops: float | None) -> None:
    peak, source = gpu_check.peak_bf16_flops(name)
    if tflops is None:
        assert peak is None and name in source
    else:
        assert peak == tflops * 1e12 and "datasheet" in source


def test_memory_budget_keeps_a_margin() -> None:
    assert gpu_check.memory_budget_gib(80 * 2**30) == 72.0  # 10 %
    assert gpu_check.memory_budget_gib(10 * 2**30) == 8.0  # at least 2 GiB
    assert gpu_check.memory_budget_gib(2**30) == 0.0


def test_parse_simulation() -> None:
    parsed = gpu_check.parse_simulation(SIMULATE_OUTPUT)
    assert parsed["iteration_s"] == pytest.approx(0.145769)
    assert parsed["peak_bytes"] == pytest.approx(6.81 * 2**20)
    seconds = SIMULATE_OUTPUT.replace("iteration 145.769 ms", "iteration 1.250 s")
    assert gpu_check.parse_simulation(seconds)["iteration_s"] == 1.25
    with pytest.raises(ValueError, match="iteration"):
        gpu_check.parse_simulation("something else")


def test_error_line_names_the_rank_exception() -> None:
    line = gpu_check.error_line(TORCHRUN_STDERR)
    assert line == "AttributeError: 'PipelineTrainer' object has no attribute 'parallel'"
    said = "partita plan: error: no plan fits 1.00 GiB per device\n"
    assert gpu_check.error_line(said) == said.strip()
    assert gpu_check.error_line("all fine\n") is None


# ---------------------------------------------------------------------------------------
# Plans


def test_plan_variants_flip_ckpt_and_micro_batches_and_attention() -> None:
    plan = _plan()
    kept = copy.deepcopy(plan)
    variants = gpu_check.plan_variants(plan, attention="sdpa", other_attention="flash")
    names = [v.name for v in variants]
    assert names == ["searched", "ckpt on", "2 micro-batches", "4 micro-batches", "flash attention"]
    assert plan == kept  # the searched plan is not changed
    by_name = {v.name: v for v in variants}
    assert all(layer["ckpt"] == "full" for layer in by_name["ckpt on"].plan["layers"])
    assert by_name["4 micro-batches"].plan["num_micro_batches"] == 4
    assert "predictions" not in by_name["2 micro-batches"].plan  # the search's, not its own
    assert by_name["flash attention"].plan == plan
    assert by_name["flash attention"].attention == "flash"
    assert {v.attention for v in variants[:-1]} == {"sdpa"}

    checkpointed = gpu_check.plan_variants(
        _plan(ckpt="full", micro_batches=2),
        attention=None,
        other_attention=None,
        attention_skip="partita train has no --attention flag yet",
    )
    names = [v.name for v in checkpointed]
    assert names == ["searched", "ckpt off", "1 micro-batch", "4 micro-batches", "other attention"]
    assert checkpointed[-1].skip_reason == "partita train has no --attention flag yet"


def test_fallback_plan_is_a_plan() -> None:
    plan = gpu_check.fallback_plan(num_blocks=48, global_batch=8, precision="bf16")
    from partita.formats import Plan, loads, validate_plan

    validate_plan(loads(json.dumps(plan), Plan), world_size=1)
    assert gpu_check.ckpt_label(plan) == "all"


# ---------------------------------------------------------------------------------------
# Stages and the summary


def test_failing_stage_is_recorded_not_raised(tmp_path: Path) -> None:
    check = _check(tmp_path)
    failing = [
        sys.executable,
        "-c",
        "import sys; print('disk on fire', file=sys.stderr); sys.exit(3)",
    ]
    record = check.stage("boom", failing, timeout_s=30)
    assert record["status"] == "failed" and record["exit_code"] == 3
    assert record["stderr_tail"] == ["disk on fire"]
    assert record["command"].startswith("python3 -c ")
    saved = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert saved["stages"][0]["status"] == "failed"
    summary = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "### boom" in summary and "disk on fire" in summary and "exit code: 3" in summary

    with check.reading(
        check.stage("unreadable", [sys.executable, "-c", "print('{')"], timeout_s=30)
    ):
        json.loads(check.read(check.results["stages"][-1]["stdout"]))
    assert check.results["stages"][-1]["status"] == "failed"
    assert "JSONDecodeError" in check.results["stages"][-1]["error"]


def test_stage_past_its_timeout_is_killed_and_past_the_deadline_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 0.1)
    monkeypatch.setattr(gpu_check, "RESERVE_S", 0.0)
    check = _check(tmp_path)
    record = check.stage(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1
    )
    assert record["status"] == "timed out" and record["seconds"] < 30
    check.deadline.total_s = 0.0
    skipped = check.stage("late", [sys.executable, "-c", "pass"], timeout_s=30)
    assert skipped["status"] == "skipped" and "deadline" in skipped["reason"]


def test_failing_stages_let_the_check_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every partita command fails: each stage is recorded, the hardware numbers come from
    the direct measurement, and the runs are skipped for want of a plan."""
    monkeypatch.setattr(gpu_check, "PARTITA", [sys.executable, "-c", "import sys; sys.exit(2)"])
    check = _check(tmp_path, total_s=300)
    gpu_check.run_check(gpu_check.parse(["--allow-cpu"]), check)
    stages = {stage["name"]: stage for stage in check.results["stages"]}
    for name in ("partita train --help", "hardware profile", "model description", "model profile"):
        assert stages[name]["status"] == "failed" and stages[name]["exit_code"] == 2, name
    assert stages["device"]["status"] == "ok"
    assert stages["direct measurement"]["status"] == "ok"
    assert check.results["hardware"]["matmul_flops_per_s"]["bf16"] > 0
    assert stages["plan search"]["status"] == "skipped"
    assert stages["train"]["status"] == "skipped"
    assert check.results["runs"] == []


def _canned_results() -> dict[str, Any]:
    args = gpu_check.parse(["--out", "unused"])
    results = gpu_check.new_results(args, 1_800_000_000.0)
    results.update(
        complete=True,
        seconds=301.0,
        device={"name": "NVIDIA H100 80GB HBM3", "total_memory_bytes": 85_000_000_000},
        hardware={
            "source": "partita profile hardware --nproc 1",
            "bf16_matmul_tflops": 712.3,
            "memory_bandwidth_gbs": 2950.0,
        },
        peak={"flops_per_s": 989e12, "source": "H100 SXM dense bf16 peak, 989 TFLOP/s"},
        plan={"source": "partita plan", "text": "1 micro-batch(es) of 8, ckpt none, ddp, bf16"},
    )
    results["settings"]["memory_budget_gib"] = 71.24
    results["model"].update(
        params=1_557_611_200, num_layers=48, hidden=1600, seq=1024, global_batch=8
    )
    gpu_check._set_flops(results)
    results["runs"] = [
        {
            "name": "searched",
            "num_micro_batches": 1,
            "ckpt": "none",
            "attention_flag": "sdpa",
            "status": "ok",
            "predicted": {"iteration_s": 0.160, "peak_bytes": 60 * 2**30},
            "measured": {"step_s": 0.176, "peak_bytes": 63 * 2**30, "attention": "sdpa"},
        },
        {
            "name": "flash attention",
            "num_micro_batches": 1,
            "ckpt": "none",
            "status": "skipped",
            "skip_reason": "flash_attn is not importable here",
        },
    ]
    for run in results["runs"]:
        gpu_check.score(run, results)
    results["stages"] = [
        {
            "name": "device",
            "status": "ok",
            "seconds": 3.0,
            "command": "python3 check.py --probe device",
        },
        {
            "name": "train: 2 micro-batches",
            "status": "failed",
            "exit_code": 1,
            "seconds": 40.0,
            "command": "partita train --plan plans/2-micro-batches.json",
            "stderr_tail": ["partita train: error: rank 0 exited with 1"],
            "error_line": "AttributeError: 'PipelineTrainer' object has no attribute 'parallel'",
        },
    ]
    return results


def test_summary_markdown_from_canned_results() -> None:
    results = _canned_results()
    run = results["runs"][0]
    assert run["mfu"] == pytest.approx(84.290646835200e12 / 0.176 / 989e12)
    assert run["tokens_per_s"] == pytest.approx(8192 / 0.176)
    assert run["errors"]["step_s"] == pytest.approx(0.1)
    text = gpu_check.summary_markdown(results)
    assert text.startswith("# GPU check: gpt2-xl, seq 1024, bf16, one NVIDIA H100 80GB HBM3")
    assert "6 * N * T + 12 * L * h * s^2 * B" in text
    assert "84.3 TFLOP" in text
    assert "| searched | sdpa | 1 | none | 176.0 ms | 160.0 ms | +10.0% |" in text
    assert f"| {run['mfu'] * 100:.1f}% |" in text
    assert "skipped: flash_attn is not importable here" in text
    assert ">= 50%" in text and "points below" in text  # a comparison, not a failure
    assert "### train: 2 micro-batches" in text
    assert "exit code: 1" in text and "AttributeError" in text
    assert "Megatron-LM reports 47% MFU" in text
    assert "71.24 GiB" in text and "712.3 TFLOP/s" in text
    # an empty, incomplete results dict renders too (the summary is rewritten every stage)
    empty = gpu_check.new_results(gpu_check.parse([]), 1_800_000_000.0)
    assert "incomplete" in gpu_check.summary_markdown(empty)

"""Galvatron's profile files, imported by the profiler, drive the simulator: hand-written ones
(gpt-tiny, 4 GPUs) and the ones Galvatron ships (llama2-7b in bf16, 8 GPUs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from partita.formats import (
    HardwareProfile,
    LayerStrategy,
    ModelProfile,
    PipelineConfig,
    Plan,
    load,
    save,
)
from partita.models.api import describe_model
from partita.profiler.galvatron import ImportOptions, import_directory
from partita.simulator.simulation import simulate

GALVATRON = Path(__file__).resolve().parents[1] / "packages/profiler/tests/galvatron_fixtures"
FIXTURES = GALVATRON / "gpt-tiny"


def test_imported_galvatron_profiles_simulate_a_pipelined_tensor_parallel_plan(
    tmp_path: Path,
) -> None:
    report = import_directory(FIXTURES, ImportOptions())
    assert report.errors == [] and report.hardware and report.model
    save(report.hardware, tmp_path / "hardware_profile.json")
    save(report.model, tmp_path / "model_profile.json")
    hardware = load(tmp_path / "hardware_profile.json", HardwareProfile)
    model_profile = load(tmp_path / "model_profile.json", ModelProfile)
    model = describe_model("gpt-tiny")
    blocks = sum(1 for layer in model.layers if layer.kind == "block")
    plan = Plan(
        world_size=4,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=8,
        num_micro_batches=2,
        pipeline=PipelineConfig(
            degree=2, schedule="1f1b", stage_num_layers=(blocks // 2, blocks - blocks // 2)
        ),
        layers=tuple(LayerStrategy(tp=2, sp="megatron") for _ in range(blocks)),
        precision="bf16",
    )
    result = simulate(plan, hardware=hardware, model_profile=model_profile, model=model)
    assert result.iteration_time_s > 0
    assert len(result.stages) == 2
    assert all(stage.memory.total > 0 for stage in result.stages)
    assert result.warnings == ()


RUN_TIMEOUT_S = 240


def _partita(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def test_a_plan_searched_from_galvatron_s_shipped_bf16_profiles_is_bf16(tmp_path: Path) -> None:
    """Issue 21: the llama2-7b profiles in Galvatron's repository import, and ``partita plan``
    (no --precision) plans in their precision."""
    imported = _partita(
        "profile",
        "import-galvatron",
        str(GALVATRON / "shipped/llama2-7b"),
        "--out-dir",
        str(tmp_path),
    )
    assert imported.returncode == 0, imported.stderr
    assert "dtype bf16" in imported.stdout
    described = _partita(
        "describe", "llama2-7b", "--seq", "2048", "--out", str(tmp_path / "llama2-7b.json")
    )
    assert described.returncode == 0, described.stderr
    planned = _partita(
        "plan",
        "--model", str(tmp_path / "llama2-7b.json"),
        "--hardware", str(tmp_path / "hardware_profile.json"),
        "--model-profile", str(tmp_path / "model_profile.json"),
        "--global-batch", "8",
        "--out", str(tmp_path / "plan.json"),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    plan = load(tmp_path / "plan.json", Plan)
    assert plan.precision == "bf16"
    assert plan.world_size == 8

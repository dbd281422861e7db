"""Galvatron's profile files, imported by the profiler, drive the simulator (gpt-tiny, 4 GPUs)."""

from __future__ import annotations

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

FIXTURES = Path(__file__).resolve().parents[1] / "packages/profiler/tests/galvatron_fixtures"


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

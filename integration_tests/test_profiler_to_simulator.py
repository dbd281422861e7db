"""A hardware profile measured by ``partita profile hardware`` (4 gloo ranks) drives the
simulator: every collective a plan needs finds its measured entry, and the costs are the fits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import (
    HardwareProfile,
    LayerStrategy,
    PipelineConfig,
    Plan,
    VocabStrategy,
    load,
)

RUN_TIMEOUT_S = 240


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> HardwareProfile:
    out = tmp_path_factory.mktemp("hardware") / "hw.json"
    done = subprocess.run(
        [_partita(), "profile", "hardware", "--nproc", "4", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "LOCAL_RANK"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return load(out, HardwareProfile)


def _plan(*, strategy: LayerStrategy, pp: int, micro_batches: int) -> Plan:
    vocab_tp = strategy.tp if strategy.sp == "none" else 1
    per_stage = 4 // pp
    return Plan(
        world_size=4,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=8,
        num_micro_batches=micro_batches,
        pipeline=PipelineConfig(
            degree=pp, schedule="1f1b" if pp > 1 else "gpipe", stage_num_layers=(per_stage,) * pp
        ),
        layers=tuple(strategy for _ in range(4)),
        vocab=VocabStrategy(tp=vocab_tp, dp=strategy.dp),
    )


@pytest.mark.parametrize(
    ("strategy", "pp", "micro_batches"),
    [
        (LayerStrategy(tp=2, sp="megatron"), 1, 1),  # tp pairs consecutive, dp pairs strided
        (LayerStrategy(tp=1, dp="zero3"), 2, 2),  # p2p between stages, reduce-scatter/gather
        (LayerStrategy(tp=4, sp="none"), 1, 1),  # the whole world as one tp group
    ],
)
def test_measured_hardware_profile_drives_the_simulator(
    measured: HardwareProfile, strategy: LayerStrategy, pp: int, micro_batches: int
) -> None:
    from partita.models.api import describe_model
    from partita.simulator.cost import CostModel
    from partita.simulator.simulation import estimate, simulate
    from partita.simulator.specsheet import PRESETS, model_profile_from_description

    matmul = {c.dtype: c.flops_per_s for c in measured.compute}
    spec = PRESETS["cpu-gloo-local"].with_changes(
        devices_per_node=4, peak_flops_per_s=matmul, device_name=measured.device.name
    )
    model = describe_model("gpt-tiny")
    model_profile = model_profile_from_description(
        model, spec, dtype="fp32", tp_degrees=(1, 2, 4), micro_batches=(1, 2, 4, 8)
    )
    plan = _plan(strategy=strategy, pp=pp, micro_batches=micro_batches)
    result = simulate(plan, hardware=measured, model_profile=model_profile, model=model)
    assert result.iteration_time_s > 0
    assert result.warnings == ()  # every collective had its own measured entry
    seconds, memory = estimate(plan, hardware=measured, model_profile=model_profile, model=model)
    assert seconds > 0 and len(memory) == pp

    cost = CostModel(hardware=measured, model_profile=model_profile)
    for entry in measured.collectives:
        nbytes = entry.samples[-1].bytes
        expected = entry.latency_s + nbytes / entry.bandwidth_bytes_per_s
        got = cost.collective(
            entry.op,
            nbytes,
            group_size=entry.group_size,
            placement=entry.placement,
            scope=entry.scope,
        )
        assert got == pytest.approx(expected)
    assert cost.warnings == []

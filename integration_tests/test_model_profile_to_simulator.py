"""A model profile measured by ``partita profile model`` drives the simulator (gpt-tiny, CPU)."""

from __future__ import annotations

import pytest

from partita.formats import LayerStrategy, ModelProfile, PipelineConfig, Plan, load
from partita.formats.cli import main
from partita.models.api import describe_model
from partita.simulator.cost import CostModel
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import PRESETS, hardware_profile_from_spec

SEQ = 32


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> ModelProfile:
    out = tmp_path_factory.mktemp("profile") / "model_profile.json"
    argv = ["profile", "model", "--model", "gpt-tiny", "--seq", str(SEQ), "--batch-sizes", "1", "2"]
    assert main([*argv, "--tp", "1", "2", "--repeats", "3", "--out", str(out), "--quiet"]) == 0
    return load(out, ModelProfile)


@pytest.mark.parametrize(("tp", "sp"), [(1, "none"), (2, "none"), (2, "megatron"), (2, "ulysses")])
def test_the_simulator_accepts_a_measured_profile_for_a_uniform_plan(
    measured: ModelProfile, tp: int, sp: str
) -> None:
    hardware = hardware_profile_from_spec(PRESETS["cpu-gloo-local"])  # 2 CPU ranks
    model = describe_model("gpt-tiny", seq_len=SEQ)
    plan = Plan(
        world_size=2,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=4,
        num_micro_batches=2,
        pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(len(model.blocks),)),
        layers=tuple(LayerStrategy(tp=tp, sp=sp) for _ in model.blocks),
        precision="fp32",
    )
    result = simulate(plan, hardware=hardware, model_profile=measured, model=model)
    assert result.iteration_time_s > 0
    assert all(stage.memory.total > 0 for stage in result.stages)
    assert result.warnings == ()


def test_measured_shards_leave_tensor_parallel_communication_to_the_simulator(
    measured: ModelProfile,
) -> None:
    hardware = hardware_profile_from_spec(PRESETS["cpu-gloo-local"])
    cost = CostModel(hardware=hardware, model_profile=measured)
    block = describe_model("gpt-tiny", seq_len=SEQ).blocks[0]
    whole = cost.layer_times(block, tp=1, sp="none", micro_batch=2)
    shard = cost.layer_times(block, tp=2, sp="megatron", micro_batch=2)
    assert whole.includes_tp_comm and not shard.includes_tp_comm
    # Micro-batch 3 was not measured: the simulator extrapolates from 1 and 2.
    assert cost.layer_times(block, tp=1, sp="none", micro_batch=3).forward_s > 0
    memory = cost.layer_memory(block, tp=2, sp="megatron")
    assert memory.param_bytes < cost.layer_memory(block, tp=1, sp="none").param_bytes

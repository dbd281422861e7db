"""A model profile measured by ``partita profile model`` drives the simulator (CPU: gpt-tiny, and
t5-tiny, whose decoder-embedding bridge the simulator prices at the vocab strategy)."""

from __future__ import annotations

import pytest

from partita.formats import (
    LayerStrategy,
    ModelDescription,
    ModelProfile,
    PipelineConfig,
    Plan,
    VocabStrategy,
    load,
)
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


def _uniform_plan(
    model: ModelDescription, strategy: LayerStrategy, vocab: VocabStrategy | None = None
) -> Plan:
    """Two ranks, one stage, two micro-batches, ``strategy`` for every block."""
    return Plan(
        world_size=2,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=4,
        num_micro_batches=2,
        pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(len(model.blocks),)),
        layers=tuple(strategy for _ in model.blocks),
        vocab=vocab or VocabStrategy(),
        precision="fp32",
    )


@pytest.mark.parametrize(("tp", "sp"), [(1, "none"), (2, "none"), (2, "megatron"), (2, "ulysses")])
def test_the_simulator_accepts_a_measured_profile_for_a_uniform_plan(
    measured: ModelProfile, tp: int, sp: str
) -> None:
    hardware = hardware_profile_from_spec(PRESETS["cpu-gloo-local"])  # 2 CPU ranks
    model = describe_model("gpt-tiny", seq_len=SEQ)
    plan = _uniform_plan(model, LayerStrategy(tp=tp, sp=sp))
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


@pytest.fixture(scope="module")
def measured_t5(tmp_path_factory: pytest.TempPathFactory) -> ModelProfile:
    out = tmp_path_factory.mktemp("t5") / "model_profile.json"
    argv = ["profile", "model", "--model", "t5-tiny", "--seq", str(SEQ), "--batch-sizes", "1", "2"]
    argv += ["--tp", "1", "2", "--repeats", "1", "--warmup", "0", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return load(out, ModelProfile)


def test_a_measured_t5_profile_prices_a_uniform_megatron_plan(measured_t5: ModelProfile) -> None:
    """Blocks at tp 2 Megatron-SP, the vocabulary at tp 1: the bridge (decoder embedding) is
    looked up at (1, none), every other block at (2, megatron); a missing entry would raise."""
    hardware = hardware_profile_from_spec(PRESETS["cpu-gloo-local"])  # 2 CPU ranks
    model = describe_model("t5-tiny", seq_len=SEQ)
    plan = _uniform_plan(model, LayerStrategy(tp=2, sp="megatron"), VocabStrategy(tp=1))
    result = simulate(plan, hardware=hardware, model_profile=measured_t5, model=model)
    assert result.iteration_time_s > 0
    assert all(stage.memory.total > 0 for stage in result.stages)
    assert result.warnings == ()
    bridge = measured_t5.layer_type("t5_decoder_embedding")
    assert bridge is not None and {(m.tp, m.sp) for m in bridge.memory} == {
        (1, "none"),
        (2, "none"),
    }

"""``ckpt: selective-op``: which matmuls a block keeps and recomputes, and how it is priced
between ``none`` and ``full``."""

from __future__ import annotations

import dataclasses

import pytest

from partita.formats import LayerDescription, LayerMemory, ModelDescription, ModelProfile
from partita.formats.architectures import describe_config, presets
from partita.simulator.search.engine import SearchProblem, search
from partita.simulator.search.space import SearchSpace
from partita.simulator.selective_op import (
    block_matmuls,
    recomputed_flops_share,
    recomputed_matmuls,
    saved_elements_per_sample,
)
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    PRESETS,
    hardware_profile_from_spec,
    model_profile_from_description,
)
from partita.simulator.uniform_plan import uniform_plan


def _model(preset: str, seq: int = 1024) -> ModelDescription:
    return describe_config(presets()[preset], seq_len=seq, name=preset)


def _block(model: ModelDescription) -> LayerDescription:
    return model.blocks[0]


def test_a_llama_block_keeps_q_v_gate_and_down() -> None:
    block = _block(_model("llama3-8b"))
    h, kv, ffn = 4096, 1024, 14336
    matmuls = block_matmuls(block)
    assert matmuls is not None
    assert [(m.inner, m.width) for m in matmuls] == [
        (h, h),  # q
        (h, kv),  # k
        (h, kv),  # v
        (h, h),  # o
        (h, ffn),  # gate
        (h, ffn),  # up
        (ffn, h),  # down
    ]
    # TorchTitan's policy recomputes the 2nd, 4th and 6th: k, o and up.
    assert [(m.inner, m.width) for m in recomputed_matmuls(block)] == [
        (h, kv),
        (h, h),
        (h, ffn),
    ]
    share = recomputed_flops_share(block)
    weights = 2 * (h * h * 2 + h * kv * 2 + 3 * h * ffn) * block.seq_len
    assert share == pytest.approx(
        2 * (h * kv + h * h + h * ffn) * block.seq_len / block.forward_flops_per_sample
    )
    assert share < weights / block.forward_flops_per_sample / 2  # k, o, up: under half
    # Kept: the input, q, v, gate, down and the attention output.
    kept = h + h + kv + ffn + h + h
    assert saved_elements_per_sample(block, tp=1, sp="none") == kept * block.seq_len
    # Megatron-SP splits every kept tensor; without SP the input and down (row-parallel,
    # all-reduced) stay whole.
    assert saved_elements_per_sample(block, tp=4, sp="megatron") == kept / 4 * block.seq_len
    whole, split = h + h, h + kv + ffn + h
    assert saved_elements_per_sample(block, tp=4, sp="none") == (whole + split / 4) * (
        block.seq_len
    )


def test_a_gpt_block_has_two_feed_forward_matmuls() -> None:
    block = _block(_model("gpt2"))
    matmuls = block_matmuls(block)
    assert matmuls is not None and len(matmuls) == 6
    h = block.hidden_size
    assert [m.width for m in recomputed_matmuls(block)] == [h, h, h]  # k, o, the FFN's out


def test_layers_without_a_known_layout_are_not_guessed() -> None:
    model = _model("llama3-8b")
    assert block_matmuls(model.layers[0]) is None  # the embedding
    assert saved_elements_per_sample(model.layers[-1], tp=1, sp="none") is None  # the head
    odd = dataclasses.replace(_block(model), forward_flops_per_sample=1.0)
    assert block_matmuls(odd) is None and recomputed_matmuls(odd) == ()


def test_spec_sheet_profiles_price_it_between_none_and_full() -> None:
    model = _model("llama3-8b", seq=2048)
    profile = model_profile_from_description(model, PRESETS["a100-sxm-80g"])
    blocks = [lt for lt in profile.layer_types if lt.layer_type == model.blocks[0].layer_type]
    for memory in blocks[0].memory:
        assert memory.selective_saved_bytes_per_sample is not None
        assert (
            memory.checkpoint_activation_bytes_per_sample
            < memory.selective_saved_bytes_per_sample
            < memory.activation_bytes_per_sample
        )
    for timing in blocks[0].timings:
        assert timing.selective_recompute_s is not None
        assert 0 < timing.selective_recompute_s < timing.forward_s
    others = [lt for lt in profile.layer_types if lt is not blocks[0]]
    assert all(m.selective_saved_bytes_per_sample is None for lt in others for m in lt.memory)


def _simulated(ckpt: str, profile: ModelProfile | None = None) -> tuple[float, float]:
    model = _model("llama3-8b", seq=2048)
    spec = PRESETS["a100-sxm-80g"]
    plan = uniform_plan(
        f"tp=2,sp=megatron,dp=zero3,ckpt={ckpt},mb=2",
        model,
        world_size=8,
        global_batch=32,
        precision="bf16",
    )
    result = simulate(
        plan,
        hardware=hardware_profile_from_spec(spec),
        model_profile=profile or model_profile_from_description(model, spec),
        model=model,
        record_events=False,
    )
    return result.iteration_time_s, max(result.peak_memory_bytes)


def test_selective_op_trades_between_none_and_full() -> None:
    none, selective, full = (_simulated(m) for m in ("none", "selective-op", "full"))
    assert none[0] < selective[0] < full[0]
    assert none[1] > selective[1] > full[1]


def test_profiles_without_the_measurements_fall_back_to_shapes() -> None:
    """A version 4 profile (no selective fields) prices the mode from the description: the
    recomputed matmuls' share of the forward, the kept tensors by shape."""
    model = _model("llama3-8b", seq=2048)
    profile = model_profile_from_description(model, PRESETS["a100-sxm-80g"])

    def without(memory: LayerMemory) -> LayerMemory:
        return dataclasses.replace(memory, selective_saved_bytes_per_sample=None)

    old = dataclasses.replace(
        profile,
        layer_types=tuple(
            dataclasses.replace(
                lt,
                timings=tuple(
                    dataclasses.replace(t, selective_recompute_s=None) for t in lt.timings
                ),
                memory=tuple(without(m) for m in lt.memory),
            )
            for lt in profile.layer_types
        ),
    )
    measured, estimated = _simulated("selective-op", profile), _simulated("selective-op", old)
    # The same kept tensors by shape; less recomputation (no elementwise work) but some.
    assert estimated[1] == pytest.approx(measured[1], rel=1e-9)
    none = _simulated("none", old)
    assert none[0] < estimated[0] < measured[0]


def test_the_search_takes_it_on_request_where_none_does_not_fit() -> None:
    model = _model("llama3-8b", seq=2048)
    spec = PRESETS["a100-sxm-80g"].with_changes(devices_per_node=8)
    hardware = hardware_profile_from_spec(spec)
    profile = model_profile_from_description(model, spec)

    def best(recompute: tuple[str, ...], memory: float) -> set[str]:
        problem = SearchProblem(
            hardware=hardware,
            model_profile=profile,
            model=model,
            world_size=8,
            memory_bytes=memory,
            global_batch=32,
            space=SearchSpace(name="zero3", recompute=recompute),
            precision="bf16",
        )
        found = search(problem).best
        assert found is not None
        assert max(found.peak_memory_bytes) <= memory
        return {layer.ckpt for layer in found.plan.layers if layer.ckpt != "none"}

    # Between the uniform plans' peaks: none does not fit, selective-op does and is faster
    # than recomputing whole blocks.
    budget = 0.5 * (_zero3_peak(model, "none") + _zero3_peak(model, "selective-op"))
    assert "selective-op" in best(("none", "selective-op", "full"), budget)
    # Not searched unless asked for.
    assert SearchSpace().recompute == ("none", "attention", "full")
    assert "selective-op" not in best(SearchSpace().recompute, budget)


def _zero3_peak(model: ModelDescription, ckpt: str) -> float:
    spec = PRESETS["a100-sxm-80g"]
    plan = uniform_plan(
        f"dp=zero3,ckpt={ckpt},mb=4", model, world_size=8, global_batch=32, precision="bf16"
    )
    result = simulate(
        plan,
        hardware=hardware_profile_from_spec(spec),
        model_profile=model_profile_from_description(model, spec),
        model=model,
        record_events=False,
    )
    return max(result.peak_memory_bytes)


def test_a_measured_selective_forward_replaces_the_plain_one() -> None:
    """The policy sees every op: where the profile measured that forward, the layer's
    forward is it, not the plain one."""
    model = _model("llama3-8b", seq=2048)
    profile = model_profile_from_description(model, PRESETS["a100-sxm-80g"])
    slower = dataclasses.replace(
        profile,
        layer_types=tuple(
            dataclasses.replace(
                lt,
                timings=tuple(
                    dataclasses.replace(
                        t,
                        selective_forward_s=None
                        if t.selective_recompute_s is None
                        else 2 * t.forward_s,
                    )
                    for t in lt.timings
                ),
            )
            for lt in profile.layer_types
        ),
    )
    plain, measured = _simulated("selective-op", profile), _simulated("selective-op", slower)
    assert measured[0] > plain[0]
    assert _simulated("none", slower)[0] == pytest.approx(_simulated("none", profile)[0])

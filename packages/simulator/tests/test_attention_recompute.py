"""``ckpt: attention`` priced from the passes a profile timed as run (version 6), or, where
it did not, from the core's forward run again in the backward."""

from __future__ import annotations

import dataclasses

import pytest

from partita.formats import LayerTiming, ModelProfile
from partita.formats.architectures import describe_config, presets
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    PRESETS,
    hardware_profile_from_spec,
    model_profile_from_description,
)
from partita.simulator.uniform_plan import uniform_plan

MODEL = describe_config(presets()["gpt2"], seq_len=1024, name="gpt2")
SPEC = PRESETS["a100-sxm-80g"].with_changes(devices_per_node=1)
MICRO_BATCHES = 4
EXTRA_FORWARD, EXTRA_BACKWARD = 1e-3, 2e-3


def _iteration(ckpt: str, profile: ModelProfile) -> float:
    """One device, one stage: the step is the sum of its passes, nothing overlaps."""
    plan = uniform_plan(
        f"ckpt={ckpt},mb=1", MODEL, world_size=1, global_batch=MICRO_BATCHES, precision="bf16"
    )
    result = simulate(
        plan,
        hardware=hardware_profile_from_spec(SPEC),
        model_profile=profile,
        model=MODEL,
        record_events=False,
    )
    return result.iteration_time_s


def _with_attention_passes(profile: ModelProfile) -> ModelProfile:
    """Every block timed under ``ckpt: attention`` as its plain passes plus a fixed cost (a
    line through the points stays a line: the same cost at every micro-batch)."""

    def timed(t: LayerTiming) -> LayerTiming:
        if t.attention_forward_s is None and t.selective_recompute_s is None:
            return t  # not a block
        return dataclasses.replace(
            t,
            attention_checkpoint_forward_s=t.forward_s + EXTRA_FORWARD,
            attention_checkpoint_backward_s=t.backward_s + EXTRA_BACKWARD,
        )

    return dataclasses.replace(
        profile,
        layer_types=tuple(
            dataclasses.replace(lt, timings=tuple(timed(t) for t in lt.timings))
            for lt in profile.layer_types
        ),
    )


def test_measured_passes_replace_the_cores_forward_run_again() -> None:
    profile = model_profile_from_description(MODEL, SPEC)
    timed = _with_attention_passes(profile)
    blocks = len(MODEL.blocks)
    none = _iteration("none", profile)
    assert _iteration("none", timed) == pytest.approx(none, rel=1e-12)
    extra = blocks * MICRO_BATCHES * (EXTRA_FORWARD + EXTRA_BACKWARD)
    assert _iteration("attention", timed) == pytest.approx(none + extra, rel=1e-9)
    # Without them: the core's forward again in each block's backward, a share of the step.
    estimated = _iteration("attention", profile)
    assert none < estimated < none + extra


def test_one_field_alone_is_not_used() -> None:
    profile = model_profile_from_description(MODEL, SPEC)
    half = dataclasses.replace(
        profile,
        layer_types=tuple(
            dataclasses.replace(
                lt,
                timings=tuple(
                    dataclasses.replace(t, attention_checkpoint_forward_s=10 * t.forward_s)
                    for t in lt.timings
                ),
            )
            for lt in profile.layer_types
        ),
    )
    assert _iteration("attention", half) == pytest.approx(_iteration("attention", profile))

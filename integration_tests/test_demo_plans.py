"""The demo's one-line plan names say what each plan recomputes and how it pipelines."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

from partita.formats import LayerStrategy, PipelineConfig, Plan

DEMO = Path(__file__).resolve().parents[1] / "demo" / "demo_plans.py"


def _demo_plans():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("demo_plans", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_plan_names_tell_recompute_modes_and_chunks_apart() -> None:
    demo = _demo_plans()
    plan = Plan(
        world_size=2,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=4,
        num_micro_batches=2,
        pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(4,)),
        layers=(LayerStrategy(),) * 4,
    )
    names = {
        ckpt: demo.describe_plan(replace(plan, layers=(LayerStrategy(ckpt=ckpt),) * 4))
        for ckpt in ("none", "attention", "selective-op", "full")
    }
    assert names == {
        "none": "ddp, x2 micro-batches",
        "attention": "ddp ckpt-attention, x2 micro-batches",
        "selective-op": "ddp ckpt-selective-op, x2 micro-batches",
        "full": "ddp ckpt, x2 micro-batches",
    }
    interleaved = replace(
        plan,
        pipeline=PipelineConfig(
            degree=2, schedule="interleaved-1f1b", stage_num_layers=(1, 1, 1, 1), chunks=2
        ),
    )
    assert demo.describe_plan(interleaved) == (
        "ddp, pp2 interleaved-1f1b (2 chunks per rank), x2 micro-batches"
    )

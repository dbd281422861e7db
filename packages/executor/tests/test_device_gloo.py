"""Every plan kind on gloo with the default device set to ``meta`` after the first step (so a
tensor made without naming the rank's device fails the step), and under bf16 and fp16 against
one process under the same precision: DDP, ZeRO-1/2/3, TP, Megatron SP, Ulysses, vocab SP,
full, selective (attention) and selective-op checkpointing (the last also under Megatron SP),
GPipe, 1F1B, interleaved 1F1B, ZB-H1 and a layer-wise plan on GPT, a T5 pipeline, and a GPipe
pipeline of each other family (LLaMA, BERT, ViT, Swin).

fp32 cases must equal one process as tightly as the equality suite (losses rtol 1e-5,
parameters ``allclose(1e-5, 1e-5)``). Mixed precision cannot: a sharded matmul rounds its
partial products to bf16/fp16 before they are summed across ranks, where one process sums
them in fp32 inside one kernel, so each layer's output differs by about one rounding of the
compute dtype (bf16: 2^-8 = 4e-3 relative; fp16: 2^-11 = 5e-4). Averaged over a batch's
tokens that moves the loss far less: measured, the losses agree within 7.9e-5 (bf16) and
6e-6 (fp16) for the language models and 5.6e-4 / 3e-5 for ViT and Swin (whose
classification losses are small, so relative errors are larger); the bounds are rtol 1e-3
(bf16) and 1e-4 (fp16). Parameters are bounded by 2 lr a step (measured up to 5.2e-3 after 5
steps, T5 in bf16): AdamW divides each gradient by its own running magnitude, so an element
whose exact gradient is about zero (attention key biases) moves by up to about lr either way
on rounding noise alone, and two runs can take opposite ways. The loss bound is what catches
a wrong sum here; the fp32 cases check parameters tightly.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from gloo_cases import launch_cases, run_launch
from plan_cases import BLOCKS, make_plan

from partita.formats import (
    LayerStrategy,
    PipelineConfig,
    Plan,
    VocabStrategy,
    dumps,
    validate_plan,
)
from partita.models.api import describe_model

STEPS = 4
WORLD = 2
HERE = Path(__file__).resolve().parent
LR = 1e-3
MIXED_LOSS_RTOL = {"bf16": 1e-3, "fp16": 1e-4}


def _uniform(model: str, layer: LayerStrategy, vocab: VocabStrategy, **kw: object) -> Plan:
    plan = make_plan(
        model, world=WORLD, layers=tuple(layer for _ in range(BLOCKS[model])), vocab=vocab, **kw
    )
    assert plan is not None
    return plan


def _plans() -> dict[str, tuple[str, Plan]]:
    gpt = "gpt-tiny"
    layerwise = (LayerStrategy(), LayerStrategy(tp=2, sp="megatron"), LayerStrategy(dp="zero3"))
    layerwise += (LayerStrategy(tp=2, ckpt="full"),)
    return {
        "ddp": (gpt, _uniform(gpt, LayerStrategy(), VocabStrategy())),
        "zero1": (gpt, _uniform(gpt, LayerStrategy(dp="zero1"), VocabStrategy(dp="zero1"))),
        "zero2": (gpt, _uniform(gpt, LayerStrategy(dp="zero2"), VocabStrategy(dp="zero2"))),
        "zero3": (gpt, _uniform(gpt, LayerStrategy(dp="zero3"), VocabStrategy(dp="zero3"))),
        "tp2": (gpt, _uniform(gpt, LayerStrategy(tp=2), VocabStrategy(tp=2))),
        "megatron-sp2": (gpt, _uniform(gpt, LayerStrategy(tp=2, sp="megatron"), VocabStrategy())),
        "ulysses2": (gpt, _uniform(gpt, LayerStrategy(tp=2, sp="ulysses"), VocabStrategy())),
        "ckpt": (gpt, _uniform(gpt, LayerStrategy(ckpt="full"), VocabStrategy())),
        "gpipe-pp2-m2": (gpt, make_plan(gpt, world=WORLD, pp=2, micro_batches=2)),  # type: ignore[dict-item]
        "1f1b-pp2-m4": (
            gpt,
            make_plan(gpt, world=WORLD, pp=2, schedule="1f1b", micro_batches=4),  # type: ignore[dict-item]
        ),
        "ckpt-attention": (gpt, _uniform(gpt, LayerStrategy(ckpt="attention"), VocabStrategy())),
        "ckpt-selective-op": (
            gpt,
            _uniform(gpt, LayerStrategy(ckpt="selective-op"), VocabStrategy()),
        ),
        "ckpt-selective-op-megatron-sp2": (
            gpt,
            _uniform(gpt, LayerStrategy(tp=2, sp="megatron", ckpt="selective-op"), VocabStrategy()),
        ),
        "vocab-sp2": (
            gpt,
            _uniform(gpt, LayerStrategy(tp=2, sp="megatron"), VocabStrategy(tp=2, sp=True)),
        ),
        "interleaved-pp2-c2-m4": (
            gpt,
            make_plan(  # type: ignore[dict-item]
                gpt, world=WORLD, pp=2, schedule="interleaved-1f1b", chunks=2, micro_batches=4
            ),
        ),
        "zb-h1-pp2-m4": (
            gpt,
            make_plan(gpt, world=WORLD, pp=2, schedule="zb-h1", micro_batches=4),  # type: ignore[dict-item]
        ),
        "layerwise": (gpt, make_plan(gpt, world=WORLD, layers=layerwise)),  # type: ignore[dict-item]
        "t5-1f1b-pp2": (
            "t5-tiny",
            make_plan("t5-tiny", world=WORLD, pp=2, schedule="1f1b", micro_batches=2),  # type: ignore[dict-item]
        ),
    }


def _family_pipelines() -> dict[str, tuple[str, Plan]]:
    """A 2-stage GPipe pipeline of 2 micro-batches for the families without one above."""
    out = {}
    for family in ("llama", "bert", "vit", "swin"):
        model = f"{family}-tiny"
        blocks = len(describe_model(model).blocks)
        plan = Plan(
            world_size=WORLD,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=8,
            num_micro_batches=2,
            pipeline=PipelineConfig(
                degree=2, schedule="gpipe", stage_num_layers=(blocks - blocks // 2, blocks // 2)
            ),
            layers=tuple(LayerStrategy() for _ in range(blocks)),
        )
        validate_plan(plan, world_size=WORLD, model=describe_model(model))
        out[f"{family}-gpipe-pp2"] = (model, plan)
    return out


PLANS = {**_plans(), **_family_pipelines()}
# Every plan kind in both precisions (GPT, T5), and a pipeline of every other family.
MIXED = tuple(PLANS)


def _case(name: str, model: str, plan: Plan, **extra: object) -> dict:
    return {"name": name, "model": model, "plan": dumps(plan), "steps": STEPS, **extra}


def _cases() -> list[dict]:
    cases = [_case(f"fp32/{name}", model, plan) for name, (model, plan) in PLANS.items()]
    for precision in ("bf16", "fp16"):
        for name in MIXED:
            model, plan = PLANS[name]
            cases.append(_case(f"{precision}/{name}", model, replace(plan, precision=precision)))
    return cases


CASES = _cases()
CASES_BY_NAME = {case["name"]: case for case in CASES}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return launch_cases(HERE / "device_worker.py", WORLD, tmp_path_factory.mktemp("dev"), CASES)


@pytest.mark.parametrize("name", [n for n in PLANS])
def test_every_plan_kind_makes_its_tensors_on_the_ranks_device(
    results: dict[str, dict], name: str
) -> None:
    outcome = results[f"fp32/{name}"]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["missing"] == []
    assert outcome["loss_error"] <= 1e-5, (outcome["losses"], outcome["reference"])
    assert outcome["param_error"] <= 1.0, f"{outcome['param_error']:.2f} x atol"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", MIXED)
def test_mixed_precision_follows_one_process_under_the_same_precision(
    results: dict[str, dict], name: str, precision: str
) -> None:
    outcome = results[f"{precision}/{name}"]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["missing"] == []
    assert outcome["skipped_steps"] == 0
    assert outcome["loss_error"] <= MIXED_LOSS_RTOL[precision], json.dumps(outcome)[:400]
    # excess_error is in units of atol 1e-5; 0.5 x lr is 50 such units.
    # excess_error is in units of atol 1e-5: 2 lr a step is 200 such units a step.
    assert outcome["param_error"] <= 2 * STEPS * LR / 1e-5, f"{outcome['param_error']:.1f}"
    # ZeRO-2/3 layers gather their weights in the compute precision, not as fp32 masters.
    dp_modes = {
        layer["dp"] for layer in json.loads(CASES_BY_NAME[f"{precision}/{name}"]["plan"])["layers"]
    }
    if dp_modes & {"zero2", "zero3"}:
        assert outcome["gathered_dtypes"] == [{"bf16": "bfloat16", "fp16": "float16"}[precision]]
    else:
        assert outcome["gathered_dtypes"] == []


def test_a_receive_made_without_the_ranks_device_fails_the_guarded_step(tmp_path: Path) -> None:
    # A failed receive leaves its peer waiting, so the case has a launch of its own with a
    # short process-group timeout.
    model, plan = PLANS["gpipe-pp2-m2"]
    case = {**_case("sabotaged", model, plan, sabotage="receive_without_device"), "steps": 2}
    done = run_launch(HERE / "device_worker.py", WORLD, tmp_path, [case], timeout_s=10)
    assert done.returncode != 0
    assert "meta" in done.stderr, done.stderr[-2000:]

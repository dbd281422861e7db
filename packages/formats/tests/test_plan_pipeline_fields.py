"""Plan version 3's pipeline fields: chunks per rank, the virtual-stage layout, ckpt modes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from support import EXAMPLES

from partita.formats import FormatError, LayerStrategy, Plan, loads
from partita.formats.summaries import summarize


def _plan(**pipeline: Any) -> dict[str, Any]:
    document = json.loads((EXAMPLES / "plan.json").read_text())
    document["pipeline"].update(pipeline)
    return document


def _load(document: dict[str, Any]) -> Plan:
    return loads(json.dumps(document), Plan, source="plan.json")


def test_interleaved_virtual_stages_go_round_the_ranks() -> None:
    plan = _load(_plan(schedule="interleaved-1f1b", chunks=2, stage_num_layers=[1, 1, 1, 1]))
    assert plan.pipeline.num_virtual_stages == 4
    assert [plan.virtual_stage_of_layer(i) for i in range(4)] == [0, 1, 2, 3]
    assert [plan.stage_of_layer(i) for i in range(4)] == [0, 1, 0, 1]
    assert plan.pipeline.virtual_stages_of_rank(1) == (1, 3)
    assert plan.pipeline.layer_ranges() == (range(0, 1), range(1, 2), range(2, 3), range(3, 4))
    text = summarize(plan)
    assert "schedule interleaved-1f1b, 2 chunks per rank" in text
    assert "stage.chunk" in text and "1.1" in text


@pytest.mark.parametrize(
    ("pipeline", "error"),
    [
        (
            {"chunks": 2, "stage_num_layers": [1, 1, 1, 1]},
            "plan.json: pipeline.chunks: only the interleaved-1f1b schedule runs several "
            "chunks per rank, got 2 under 1f1b",
        ),
        (
            {"schedule": "interleaved-1f1b"},
            "plan.json: pipeline.chunks: interleaved-1f1b needs at least 2 chunks per rank, got 1",
        ),
        (
            {"schedule": "interleaved-1f1b", "chunks": 2},
            "plan.json: pipeline.stage_num_layers: expected 4 virtual stages (pipeline.degree 2 "
            "x pipeline.chunks 2), got 2",
        ),
        (
            {"schedule": "zb-h1", "stage_num_layers": [3, 1, 0]},
            "plan.json: pipeline.stage_num_layers[2]: must be >= 1, got 0",
        ),
    ],
)
def test_pipeline_fields_that_do_not_fit_are_named(pipeline: dict[str, Any], error: str) -> None:
    with pytest.raises(FormatError) as raised:
        _load(_plan(**pipeline))
    assert str(raised.value) == error


def test_interleaving_needs_whole_rounds_of_micro_batches() -> None:
    document = _plan(schedule="interleaved-1f1b", chunks=2, stage_num_layers=[1, 1, 1, 1])
    document.update(num_micro_batches=1, global_batch_size=8)
    document["layers"] = [{**layer, "tp": 1} for layer in document["layers"]]
    document["vocab"]["tp"] = 1
    with pytest.raises(FormatError, match=r"num_micro_batches: interleaved-1f1b needs the "):
        _load(document)


def test_zb_h1_plan_loads_and_ckpt_modes_are_named() -> None:
    document = _plan(schedule="zb-h1")
    document["layers"][0]["ckpt"] = "attention"
    plan = _load(document)
    assert plan.layers[0].ckpt == "attention" and plan.layers[0].recomputes
    assert not LayerStrategy().recomputes
    with pytest.raises(
        ValueError, match="ckpt: expected one of none, attention, selective-op, full, got True"
    ):
        LayerStrategy(ckpt=True)  # type: ignore[arg-type]


def test_vocab_sp_is_refused_for_patch_models_naming_the_field() -> None:
    from partita.formats import PipelineConfig, VocabStrategy, validate_plan
    from partita.formats.architectures import describe_config, presets

    for family in ("vit-tiny", "swin-tiny"):
        model = describe_config(presets()[family], name=family)
        blocks = len(model.blocks)
        plan = Plan(
            world_size=2,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=2,
            num_micro_batches=1,
            pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(blocks,)),
            layers=(LayerStrategy(),) * blocks,
            vocab=VocabStrategy(tp=2, sp=True),
        )
        with pytest.raises(FormatError) as raised:
            validate_plan(plan, model=model)
        kind = model.family
        assert str(raised.value) == (
            f"vocab.sp: {kind} models have no sequence-parallel embedding and head "
            "(patch embedding and pooled head)"
        )
        validate_plan(dataclasses.replace(plan, vocab=VocabStrategy(tp=2)), model=model)

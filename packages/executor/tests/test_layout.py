"""Which plans the trainer refuses (before any group), and where layers are placed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from partita.executor.layout import check_nested
from partita.executor.setups import layer_stages
from partita.executor.trainer import check_supported
from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy
from partita.models.api import build_model


def _plan(
    layers: tuple[LayerStrategy, ...],
    *,
    world: int = 4,
    pp: int = 1,
    stages: tuple[int, ...] | None = None,
    vocab: VocabStrategy | None = None,
    order: tuple[str, ...] = ("pp", "dp", "tp"),
) -> Plan:
    return Plan(
        world_size=world,
        mesh_axis_order=order,  # type: ignore[arg-type]
        global_batch_size=8,
        num_micro_batches=1,
        pipeline=PipelineConfig(
            degree=pp, schedule="1f1b", stage_num_layers=stages or (len(layers),)
        ),
        layers=layers,
        vocab=vocab or VocabStrategy(),
    )


UNIFORM_TP2 = tuple(LayerStrategy(tp=2) for _ in range(4))


def test_every_plan_kind_is_supported_by_the_one_trainer() -> None:
    mixed = (LayerStrategy(), LayerStrategy(tp=2), LayerStrategy(dp="zero3"), LayerStrategy())
    check_supported(_plan(UNIFORM_TP2))
    check_supported(_plan(mixed))
    check_supported(replace(_plan(UNIFORM_TP2), num_micro_batches=2))
    # One degree everywhere: any mesh order (a stage's ranks follow from the one grid).
    one_degree = _plan(
        UNIFORM_TP2, pp=2, stages=(2, 2), vocab=VocabStrategy(tp=2), order=("dp", "pp", "tp")
    )
    check_supported(one_degree)


def test_several_tp_degrees_need_pp_dp_tp_order() -> None:
    mixed = (LayerStrategy(), LayerStrategy(tp=2), LayerStrategy(), LayerStrategy())
    with pytest.raises(ValueError, match=r"^mesh_axis_order: .*\[pp, dp, tp\]"):
        check_supported(_plan(mixed, order=("pp", "tp", "dp")))


def test_degrees_that_do_not_nest_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^layers\[\]\.tp: degrees 2 and 3 do not nest"):
        check_nested(_plan((LayerStrategy(),), world=6), {1, 2, 3})


def test_sequence_parallel_vocab_is_refused_only_for_patch_models() -> None:
    plan = _plan(UNIFORM_TP2, vocab=VocabStrategy(tp=2, sp=True))
    check_supported(plan)
    check_supported(plan, "gpt")
    with pytest.raises(ValueError, match=r"^vocab\.sp: vit models"):
        check_supported(plan, "vit")


def test_embedding_on_the_first_stage_head_on_the_last() -> None:
    model = build_model("gpt-tiny", seed=0)  # embedding, 4 blocks, head
    plan = _plan(tuple(LayerStrategy() for _ in range(4)), pp=3, world=3, stages=(1, 2, 1))
    assert layer_stages(model, plan) == [0, 0, 1, 1, 2, 2]

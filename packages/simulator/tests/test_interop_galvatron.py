"""Galvatron's strategy files <-> partita.plan: Galvatron's own files (fixtures) import as they
say, export back to the same settings, a Partita plan survives export then import, and what one
side cannot say is refused by name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from partita.formats import LayerStrategy, ModelDescription, PipelineConfig, Plan, VocabStrategy
from partita.formats.architectures import describe_config, presets
from partita.simulator.interop import galvatron
from partita.simulator.interop.galvatron import (
    export_strategy,
    import_strategy,
    parse_file_name,
    read_strategy,
    run_settings,
    unsupported,
)

FIXTURES = Path(__file__).resolve().parent / "galvatron_strategy_fixtures"
LLAMA2 = "galvatron_config_llama2-7b_1nodes_8gpus_per_node_36GB_bf16.json"
TP2 = "galvatron_config_llama-7b_1nodes_8gpus_per_node_36GB_bf16_tpconsec_off.json"
PP2 = "galvatron_config_llama-7b_1nodes_8gpus_per_node_24GB_bf16_tpconsec_off.json"
BLOCKS = 32


@pytest.fixture(scope="module")
def llama() -> ModelDescription:
    # Galvatron's llama-7b and llama2-7b have the same shape: 32 blocks, hidden 4096.
    return describe_config(presets()["llama2-7b"], seq_len=2048, name="llama2-7b")


def _load(name: str) -> dict[str, object]:
    data = json.loads((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def _semantics(config: dict[str, object]) -> dict[str, object]:
    """The parsed values of a strategy file, absent keys at the runtime's defaults."""
    parsed: dict[str, object] = {}
    for key, value in config.items():
        listed = isinstance(value, str) and key not in ("pipeline_type", "default_dp_type")
        parsed[key] = [int(x) for x in str(value).split(",")] if listed else value
    parsed.setdefault("cp_sizes_enc", [1] * len(str(config["tp_sizes_enc"]).split(",")))
    return parsed


def test_file_name_facts() -> None:
    facts = parse_file_name(f"some/dir/{LLAMA2}")
    assert (facts.model, facts.world_size, facts.memory_gb, facts.precision) == (
        "llama2-7b",
        8,
        36,
        "bf16",
    )
    old = parse_file_name("galvatron_config_llama-7b_2nodes_8gpus_36864GB.json")
    assert (old.world_size, old.memory_gb, old.precision) == (16, 36864, None)
    assert parse_file_name("plan.json") == galvatron.FileName()


def test_galvatron_s_llama2_7b_plan_imports_as_the_file_says(llama: ModelDescription) -> None:
    imported = read_strategy(_load(LLAMA2), llama, source=LLAMA2)
    plan = imported.plan
    # World size and precision come from the file name.
    assert (plan.world_size, plan.precision) == (8, "bf16")
    assert plan.pipeline == PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(32,))
    assert (plan.global_batch_size, plan.num_micro_batches) == (16, 1)
    assert plan.mesh_axis_order == ("pp", "dp", "tp")
    # tp 1 everywhere, every layer ZeRO-3 (dp_types_enc 1), the first 20 recomputed.
    assert plan.layers == tuple(
        LayerStrategy(tp=1, sp="none", dp="zero3", ckpt="full" if i < 20 else "none")
        for i in range(BLOCKS)
    )
    # vtp 2 with vsp 1: the sequence split over 2 devices, parameters whole: data parallel.
    assert plan.vocab == VocabStrategy(tp=1, sp=False, dp="zero3")
    assert any("vsp 1" in note for note in imported.notes)
    assert plan.provenance.tools == {"galvatron": galvatron.VERSION}


def test_tensor_parallel_and_pipelined_files_import(llama: ModelDescription) -> None:
    tp2 = import_strategy(_load(TP2), llama, source=TP2)
    assert {x.tp for x in tp2.layers} == {2}
    assert {x.sp for x in tp2.layers} == {"megatron"}  # Galvatron's sequence_parallel default
    assert [x.dp for x in tp2.layers] == ["zero3"] * 29 + ["zero2"] * 3
    assert [x.ckpt for x in tp2.layers] == ["full"] * 6 + ["none"] * 26
    assert tp2.vocab == VocabStrategy(tp=4, sp=True, dp="zero3")

    pp2 = import_strategy(_load(PP2), llama, source=PP2, sequence_parallel=False)
    assert pp2.pipeline == PipelineConfig(degree=2, schedule="1f1b", stage_num_layers=(16, 16))
    assert (pp2.num_micro_batches, pp2.micro_batch_size) == (2, 8)
    assert set(pp2.layers) == {LayerStrategy(tp=4, sp="none", dp="zero2", ckpt="full")}
    assert pp2.vocab == VocabStrategy(tp=1, sp=False, dp="zero2")


@pytest.mark.parametrize("name", [LLAMA2, TP2, PP2])
def test_export_of_an_imported_file_says_what_the_file_says(
    name: str, llama: ModelDescription
) -> None:
    original = _load(name)
    exported = export_strategy(import_strategy(original, llama, source=name), llama)
    assert json.loads(json.dumps(exported)) == exported
    expected = _semantics(original)
    if name == LLAMA2:
        # The one difference: Partita has no sequence-split vocabulary, so the embedding and
        # head come back as the data parallelism that does the same work (see the notes).
        assert (expected["vtp"], expected["vsp"]) == (2, 1)
        expected.update(vtp=1, vsp=0)
    assert _semantics(exported) == expected


def _layer_wise_plan(order: tuple[str, ...] = ("pp", "dp", "tp")) -> Plan:
    layers = [
        LayerStrategy(tp=1, sp="none", dp="zero3", ckpt="full"),
        LayerStrategy(tp=2, sp="megatron", dp="zero2", ckpt="full"),
        LayerStrategy(tp=2, sp="ulysses", dp="zero3", ckpt="none"),
        LayerStrategy(tp=4, sp="megatron", dp="zero2", ckpt="none"),
    ]
    return Plan(
        world_size=16,
        mesh_axis_order=order,  # type: ignore[arg-type]
        global_batch_size=32,
        num_micro_batches=4,
        pipeline=PipelineConfig(degree=2, schedule="gpipe", stage_num_layers=(12, 20)),
        layers=tuple(layers[i % 4] for i in range(BLOCKS)),
        # Galvatron lays the embedding's tp ranks adjacent: under strided blocks, tp 1.
        vocab=VocabStrategy(tp=2 if order[-1] == "tp" else 1, sp=order[-1] == "tp", dp="zero3"),
        precision="bf16",
    )


@pytest.mark.parametrize("order", [("pp", "dp", "tp"), ("pp", "tp", "dp")])
def test_a_partita_plan_survives_export_then_import(
    order: tuple[str, ...], llama: ModelDescription
) -> None:
    plan = _layer_wise_plan(order)
    assert unsupported(plan) == []
    exported = export_strategy(plan, llama)
    assert exported["tp_consecutive_flags"] == ",".join(
        "0" if order[-1] == "dp" and x.tp > 1 else "1" for x in plan.layers
    )
    assert run_settings(plan) == {"mixed_precision": "bf16", "sequence_parallel": True}
    name = galvatron.file_name(plan, model_name="llama2-7b", memory_gb=40, gpus_per_node=8)
    assert name == "galvatron_config_llama2-7b_2nodes_8gpus_per_node_40GB_bf16.json"
    back = import_strategy(json.loads(json.dumps(exported)), llama, source=name)
    assert replace(back, provenance=plan.provenance) == plan


def test_what_galvatron_cannot_run_is_named(llama: ModelDescription) -> None:
    plan = _layer_wise_plan()
    layers = list(plan.layers)
    layers[5] = replace(layers[5], ckpt="attention")
    layers[0] = replace(layers[0], dp="zero1")
    layers[1] = replace(layers[1], sp="none")
    odd = replace(
        plan,
        layers=tuple(layers),
        vocab=VocabStrategy(tp=2, sp=True, dp="ddp"),
        pipeline=PipelineConfig(
            degree=2, schedule="interleaved-1f1b", stage_num_layers=(8, 8, 8, 8), chunks=2
        ),
    )
    problems = unsupported(odd)
    text = " | ".join(problems)
    assert "interleaved-1f1b" in text
    assert "layers 5: ckpt attention" in text
    assert "layers[0]: zero1" in text
    assert "ddp and zero2 both used" in text
    assert "Megatron-SP in" in text and "layers 1" in text
    assert len(problems) == 5
    with pytest.raises(ValueError, match=r"Galvatron cannot run this plan: .*interleaved-1f1b"):
        export_strategy(odd, llama)
    zb = replace(plan, pipeline=replace(plan.pipeline, schedule="zb-h1"))
    assert unsupported(zb) == [
        "pipeline.schedule zb-h1: Galvatron runs gpipe and pipedream_flush (1F1B) only"
    ]
    outer_dp = replace(plan, mesh_axis_order=("dp", "pp", "tp"))
    assert "pp outermost" in unsupported(outer_dp)[0]
    strided = replace(plan, mesh_axis_order=("pp", "tp", "dp"))
    assert "vocab.tp 2 under mesh_axis_order [pp, tp, dp]" in unsupported(strided)[0]


def _error(data: dict[str, object], llama: ModelDescription, **kwargs: object) -> str:
    with pytest.raises(ValueError) as caught:
        import_strategy(data, llama, source=LLAMA2, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{LLAMA2}: ")
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"pp_deg": None}, "pp_deg: missing"),
        ({"global_bsz": "16"}, "global_bsz: expected an integer, got '16'"),
        ({"tp_sizes_enc": "1,1"}, "tp_sizes_enc: 2 layers, but model 'llama2-7b' has 32"),
        ({"tp_sizes_enc": ",".join(["3"] * 32)}, "tp_sizes_enc: layer 0: 3 does not divide"),
        ({"dp_types_enc": ",".join(["2"] * 32)}, "dp_types_enc: item 0: expected one of 0, 1"),
        ({"use_sp": "0,x"}, "use_sp: item 1: expected an integer, got 'x'"),
        ({"checkpoint": "1,1"}, "checkpoint: expected 32 values, got 2"),
        ({"chunks": 3}, "chunks: 3 micro-batches do not divide global_bsz 16"),
        ({"pp_division": "30"}, "pp_division: expected 1 stages"),
        ({"pipeline_type": "1f1b"}, "pipeline_type: expected one of gpipe, pipedream_flush"),
        ({"default_dp_type": "zero1"}, "default_dp_type: expected one of ddp, zero2, zero3"),
        ({"vtp": 3}, "vtp: 3 does not divide the 8 devices"),
        ({"cp_sizes_enc": ",".join(["2"] * 32)}, "cp_sizes_enc: layer 0: context parallelism"),
        ({"ep_sizes_enc": ",".join(["4"] * 32)}, "ep_sizes_enc: layer 0: expert parallelism"),
        ({"throughput": 3.5}, "throughput: not a key of Galvatron's strategy files"),
    ],
)
def test_malformed_files_name_the_file_and_key(
    change: dict[str, object], expected: str, llama: ModelDescription
) -> None:
    data = _load(LLAMA2)
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    assert expected in _error(data, llama)


def test_world_size_and_precision_come_from_the_name_or_the_caller(
    llama: ModelDescription,
) -> None:
    data = _load(LLAMA2)
    with pytest.raises(ValueError, match=r"^plan\.json: world size: .*--world-size"):
        import_strategy(data, llama, source="plan.json", precision="bf16")
    with pytest.raises(ValueError, match=r"^plan\.json: precision: .*--precision"):
        import_strategy(data, llama, source="plan.json", world_size=8)
    plan = import_strategy(data, llama, source="plan.json", world_size=16, precision="fp16")
    assert (plan.world_size, plan.precision) == (16, "fp16")
    assert "pp_deg: 3 stages do not divide the 8 devices" in _error({**data, "pp_deg": 3}, llama)


def test_non_consecutive_tensor_parallelism(llama: ModelDescription) -> None:
    data = _load(TP2)
    strided = {**data, "tp_consecutive_flags": ",".join(["0"] * 32), "vtp": 1}
    plan = import_strategy(strided, llama, source=TP2)
    assert plan.mesh_axis_order == ("pp", "tp", "dp")
    # Galvatron lays the embedding's tp ranks adjacent: one mesh cannot hold both.
    assert "embedding's (vtp 4) are adjacent" in _error({**strided, "vtp": 4}, llama)
    mixed = {**data, "tp_consecutive_flags": ",".join(["0"] * 4 + ["1"] * 28)}
    assert "layers 4-31 have adjacent tp ranks and layers 0-3 strided" in _error(mixed, llama)


def test_another_layout_is_refused_by_name(llama: ModelDescription) -> None:
    data = _load("other_layout_llama-7b_1nodes_8gpus_36864GB.json")
    with pytest.raises(ValueError, match=r"pp_size: not a key of Galvatron's strategy files"):
        import_strategy(data, llama, source="other.json", world_size=8, precision="bf16")

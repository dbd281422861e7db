"""Interleaved 1F1B, ZB-H1 and the families not pipelined elsewhere, on gloo: losses and
parameters equal one process.

Cases (global batch 8; ``STEPS`` AdamW steps, lr 1e-3, eps 1e-6; the comparison of
``test_pipeline_gloo``: every step's loss within rtol 1e-5, every parameter within
``allclose(rtol=1e-5, atol=1e-5)``):

- ``interleaved/``: interleaved 1F1B with 2 chunks (GPT: the checkpoint cases' plan, LLaMA,
  T5) and 4 chunks (GPT with 8 blocks) on 2 ranks, 2 chunks on 4 stages; on 4 ranks (2 stages
  of 2) tensor parallelism, both sequence parallelisms, ZeRO-1/3 and ``ckpt`` "full" and
  "attention" mixed layer by layer, and T5's vocabulary table tied between two chunks of one
  rank;
- ``zb/``: ZB-H1 (the backward split in B and W) on 2 and 4 stages, with the same mixes and
  ZeRO-2;
- ``families/``: BERT, ViT and Swin under 1F1B and GPipe on 2 and 4 stages (BERT and ViT with
  4 blocks for 4 stages: their tiny presets have 2 and 3);
- ``attention-ckpt/``: ``ckpt`` "attention" under tensor parallelism and Ulysses, no pipeline;
- ``selective-op/``: ``ckpt`` "selective-op" under DDP, Megatron-SP, ZeRO-3 (2 data-parallel
  ranks), a 2-stage 1F1B pipeline, a layer-wise plan mixing it with "full" and "attention"
  under tp, both sequence parallelisms and ZeRO, and ZB-H1 (whose W recomputes the layer a
  second time);
- ``checkpoint/``: a checkpoint saved under an interleaved plan resumed under a plain one and
  in one plain process, and one saved under a plain plan resumed under an interleaved one
  (``checkpoint_worker``: 4 steps, saved after 2).

The LLaMA and GPT cases that need more blocks than the presets' use the preset's config with
more layers. Each world size is one torchrun launch (``schedules_worker``); a sabotaged case
in ``test_pipeline_gloo`` shows that the comparison can fail.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from gloo_cases import equality_failures, launch_cases
from plan_cases import make_plan

from partita.executor.setups import layer_stages, layer_virtual_stages
from partita.executor.trainer import check_supported
from partita.formats import LayerStrategy, Plan, VocabStrategy, dumps
from partita.models.api import ModelSource, resolve_config
from partita.models.init import build_empty

STEPS = 3
HERE = Path(__file__).resolve().parent
L = LayerStrategy


def _more_blocks(preset: str, **layers: int) -> dict:
    return {**resolve_config(preset).to_dict(), **layers}


GPT8 = _more_blocks("gpt-tiny", n_layer=8)
LLAMA4 = _more_blocks("llama-tiny", num_hidden_layers=4)
BERT4 = _more_blocks("bert-tiny", num_hidden_layers=4)
VIT4 = _more_blocks("vit-tiny", num_hidden_layers=4)


def _plan(model: ModelSource, **settings: object) -> Plan:
    plan = make_plan(model, **settings)  # type: ignore[arg-type]
    assert plan is not None, settings
    return plan


def _case(name: str, model: ModelSource, **settings: object) -> dict:
    plan = _plan(model, **settings)
    return {"name": name, "model": model, "plan": dumps(plan), "steps": STEPS}


def _interleaved(world: int, chunks: int = 2, **settings: object) -> dict[str, object]:
    return {"world": world, "schedule": "interleaved-1f1b", "chunks": chunks, **settings}


def _zb(world: int, **settings: object) -> dict[str, object]:
    return {"world": world, "schedule": "zb-h1", **settings}


CKPT4 = tuple(L(ckpt=c) for c in ("full", "attention", "none", "attention"))  # type: ignore[arg-type]
SEL = (L(ckpt="selective-op"),)
CKPT4_SEL = tuple(L(ckpt=c) for c in ("attention", "selective-op", "none", "selective-op"))  # type: ignore[arg-type]
WORLD2 = [
    _case("interleaved/gpt8/c4-m4", GPT8, **_interleaved(2, 4, pp=2, micro_batches=4)),
    _case(
        "interleaved/llama4/c2-m4-ckpt",
        LLAMA4,
        **_interleaved(2, pp=2, micro_batches=4, layers=CKPT4),
    ),
    _case("interleaved/t5-tiny/c2-m2", "t5-tiny", **_interleaved(2, pp=2, micro_batches=2)),
    _case("zb/gpt-tiny/m4-ckpt", "gpt-tiny", **_zb(2, pp=2, micro_batches=4, layers=CKPT4)),
    _case("zb/llama-tiny/m2", "llama-tiny", **_zb(2, pp=2, micro_batches=2)),
    _case(
        "zb/t5-tiny/m4-ckpt-attention",
        "t5-tiny",
        **_zb(2, pp=2, micro_batches=4, layers=tuple(L(ckpt="attention") for _ in range(5))),
    ),
    _case(
        "families/bert-tiny/1f1b-pp2-m2",
        "bert-tiny",
        world=2,
        pp=2,
        schedule="1f1b",
        micro_batches=2,
    ),
    _case("families/vit-tiny/gpipe-pp2-m2", "vit-tiny", world=2, pp=2, micro_batches=2),
    _case(
        "families/swin-tiny/1f1b-pp2-m4",
        "swin-tiny",
        world=2,
        pp=2,
        schedule="1f1b",
        micro_batches=4,
    ),
    _case(
        "attention-ckpt/gpt-tiny/ulysses2",
        "gpt-tiny",
        world=2,
        layers=tuple(L(tp=2, sp="ulysses", ckpt="attention") for _ in range(4)),
    ),
    _case(
        "attention-ckpt/llama-tiny/tp2",
        "llama-tiny",
        world=2,
        micro_batches=2,
        layers=(L(tp=2, ckpt="attention"), L(tp=2, sp="megatron", ckpt="attention")),
        vocab=VocabStrategy(tp=2),
    ),
    _case(
        "attention-ckpt/t5-tiny/ulysses2",
        "t5-tiny",
        world=2,
        layers=tuple(L(tp=2, sp="ulysses", ckpt="attention") for _ in range(5)),
    ),
    _case("selective-op/gpt-tiny/ddp2", "gpt-tiny", world=2, micro_batches=2, layers=SEL * 4),
    _case(
        "selective-op/llama-tiny/megatron-sp2",
        "llama-tiny",
        world=2,
        layers=tuple(L(tp=2, sp="megatron", ckpt="selective-op") for _ in range(2)),
    ),
    _case(
        "selective-op/t5-tiny/zero3",
        "t5-tiny",
        world=2,
        layers=tuple(L(dp="zero3", ckpt="selective-op") for _ in range(5)),
        vocab=VocabStrategy(dp="zero3"),
    ),
    _case(
        "selective-op/llama4/1f1b-pp2-m4",
        LLAMA4,
        world=2,
        pp=2,
        schedule="1f1b",
        micro_batches=4,
        layers=SEL * 4,
    ),
    _case(
        "selective-op/gpt-tiny/layerwise",
        "gpt-tiny",
        world=2,
        micro_batches=2,
        layers=(
            L(tp=2, sp="ulysses", ckpt="selective-op"),
            L(dp="zero3", ckpt="full"),
            L(tp=2, sp="megatron", ckpt="attention"),
            L(dp="zero1", ckpt="selective-op"),
        ),
    ),
    # The second stage's W runs its whole backward again: the layer is recomputed twice.
    _case(
        "selective-op/gpt-tiny/zb-m4", "gpt-tiny", **_zb(2, pp=2, micro_batches=4, layers=CKPT4_SEL)
    ),
]
MIX4 = (
    L(tp=2, sp="megatron", ckpt="full"),
    L(dp="zero1"),
    L(dp="zero3", ckpt="attention"),
    L(tp=2, sp="ulysses", ckpt="attention"),
)
WORLD4 = [
    _case(
        "interleaved/gpt-tiny/pp2-c2-tp-sp-zero-ckpt",
        "gpt-tiny",
        **_interleaved(4, pp=2, micro_batches=2, layers=MIX4, vocab=VocabStrategy(tp=2)),
    ),
    _case(
        "interleaved/llama4/pp2-c2-tp2-zero3",
        LLAMA4,
        **_interleaved(
            4,
            pp=2,
            micro_batches=4,
            layers=(L(dp="zero3"), L(tp=2), L(tp=2, dp="zero3", ckpt="full"), L(dp="zero1")),
            vocab=VocabStrategy(dp="zero3"),
        ),
    ),
    # The bridge (decoder embedding) and the head share one table on rank 1, in two chunks.
    _case(
        "interleaved/t5-tiny/pp2-c2-zero1-tied-across-chunks",
        "t5-tiny",
        **_interleaved(
            4,
            pp=2,
            micro_batches=2,
            layers=tuple(L(dp=d) for d in ("zero1", "ddp", "zero1", "zero3", "ddp")),  # type: ignore[arg-type]
            vocab=VocabStrategy(dp="zero1"),
        ),
    ),
    _case("interleaved/gpt8/pp4-c2-m4", GPT8, **_interleaved(4, pp=4, micro_batches=4)),
    _case(
        "zb/gpt-tiny/pp2-tp-zero-ckpt",
        "gpt-tiny",
        **_zb(
            4,
            pp=2,
            micro_batches=4,
            layers=(
                L(tp=2, sp="megatron"),
                L(dp="zero3", ckpt="full"),
                L(dp="zero1", ckpt="attention"),
                L(dp="zero2"),
            ),
            vocab=VocabStrategy(dp="zero3"),
        ),
    ),
    _case(
        "zb/llama-tiny/pp2-ulysses-zero3",
        "llama-tiny",
        **_zb(
            4,
            pp=2,
            micro_batches=2,
            layers=(L(tp=2, sp="ulysses", ckpt="attention"), L(dp="zero3")),
            vocab=VocabStrategy(tp=2),
        ),
    ),
    _case(
        "zb/t5-tiny/pp2-tp2-zero1",
        "t5-tiny",
        **_zb(
            4,
            pp=2,
            micro_batches=2,
            layers=tuple(L(tp=2, dp="zero1") for _ in range(5)),
            vocab=VocabStrategy(tp=2),
        ),
    ),
    _case("zb/gpt-tiny/pp4-m4", "gpt-tiny", **_zb(4, pp=4, micro_batches=4)),
    _case("families/bert4/1f1b-pp4-m4", BERT4, world=4, pp=4, schedule="1f1b", micro_batches=4),
    _case("families/vit4/gpipe-pp4-m2", VIT4, world=4, pp=4, micro_batches=2),
    _case(
        "families/swin-tiny/1f1b-pp4-m4",
        "swin-tiny",
        world=4,
        pp=4,
        schedule="1f1b",
        micro_batches=4,
    ),
]


def _checkpoint_cases() -> list[dict]:
    """Saved under an interleaved plan, resumed under a plain one (and in one process); saved
    under a plain plan, resumed under an interleaved one."""
    interleaved = _plan("gpt-tiny", **_interleaved(2, pp=2, micro_batches=2, layers=CKPT4))
    plain = _plan("gpt-tiny", world=2, pp=2, schedule="1f1b", micro_batches=2)

    def save(name: str, plan: Plan) -> dict:
        return {
            "role": "save",
            "name": name,
            "model": "gpt-tiny",
            "label": "gpt-tiny",
            "plan": dumps(plan),
        }

    def load(source: dict, plan: Plan | None, suffix: str) -> dict:
        return {
            **source,
            "role": "load" if plan is not None else "one_process",
            "name": f"{source['name']}>{suffix}",
            "source": source["name"],
            "plan": dumps(plan) if plan is not None else source["plan"],
        }

    saved_interleaved = save("checkpoint/interleaved-c2", interleaved)
    saved_plain = save("checkpoint/1f1b", plain)
    return [
        saved_interleaved,
        saved_plain,
        load(saved_interleaved, plain, "1f1b"),
        load(saved_interleaved, None, "one-process"),
        load(saved_plain, interleaved, "interleaved-c2"),
    ]


CHECKPOINTS = _checkpoint_cases()
CASES = {2: WORLD2 + CHECKPOINTS, 4: WORLD4}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    found: dict[int, dict[str, dict]] = {}

    def get(world: int) -> dict[str, dict]:
        if world not in found:
            root = tmp_path_factory.mktemp(f"schedules{world}")
            cases = [{**c, "root": str(root)} for c in CASES[world]]
            found[world] = launch_cases(HERE / "schedules_worker.py", world, root, cases)
        return found[world]

    return get


def test_case_grid() -> None:
    plans = [json.loads(c["plan"]) for world in CASES for c in CASES[world]]
    schedules = {(p["pipeline"]["schedule"], p["pipeline"]["chunks"]) for p in plans}
    assert {("interleaved-1f1b", 2), ("interleaved-1f1b", 4), ("zb-h1", 1)} <= schedules
    layers = [layer for p in plans for layer in p["layers"]]
    assert {layer["ckpt"] for layer in layers} == {"none", "attention", "selective-op", "full"}
    assert {layer["dp"] for layer in layers} == {"ddp", "zero1", "zero2", "zero3"}
    assert {layer["sp"] for layer in layers} == {"none", "megatron", "ulysses"}
    families = {resolve_config(c["model"]).model_type for w in CASES for c in CASES[w]}
    assert families >= {"gpt2", "llama", "t5", "bert", "vit", "swin"}


@pytest.mark.parametrize("world", sorted(CASES))
def test_gloo_interleaved_zero_bubble_and_family_pipelines_equal_one_process(
    results,
    world: int,  # type: ignore[no-untyped-def]
) -> None:
    failures = equality_failures(results(world), [case["name"] for case in CASES[world]])
    assert not failures, json.dumps(failures, indent=1)


def test_interleaved_needs_micro_batches_in_multiples_of_the_stages() -> None:
    plan = _plan("gpt-tiny", **_interleaved(2, pp=2, micro_batches=2))
    check_supported(plan)
    odd = replace(plan, num_micro_batches=1)
    with pytest.raises(ValueError, match=r"^pipeline\.schedule: interleaved 1F1B needs"):
        check_supported(odd)


def test_the_layers_go_round_the_ranks_once_per_chunk() -> None:
    model = build_empty(resolve_config(GPT8))
    plan = _plan(GPT8, **_interleaved(2, pp=2, micro_batches=2))
    # embedding, 8 blocks two by two over virtual stages 0..3, head
    assert layer_virtual_stages(model, plan) == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert layer_stages(model, plan) == [0, 0, 0, 1, 1, 0, 0, 1, 1, 1]

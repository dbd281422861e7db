"""A sequence-parallel embedding and head (``vocab.sp``) on gloo: losses and parameters equal
one process; the families that cannot run it are refused before any process starts.

Under ``vocab.sp`` (vocab.tp 2) the embedding reduce-scatters its vocab-parallel lookups
along the sequence and the head all-gathers its sequence-split input (``tensor_parallel``).
Cases (global batch 8; ``STEPS`` AdamW steps, lr 1e-3, eps 1e-6; the comparison of
``test_pipeline_gloo``: every step's loss within rtol 1e-5, every parameter within
``allclose(rtol=1e-5, atol=1e-5)``):

- world 2: GPT, LLaMA, BERT and T5 with blocks under tp 2 Megatron-SP (the same layout as the
  embedding's output and the head's input: no redistribution), GPT and LLaMA with blocks
  under tp 1 (data parallel: redistributed on both sides), GPT with Ulysses blocks;
- world 4: GPT and LLaMA on 2 stages of 2 ranks (1F1B, interleaved 1F1B with 2 chunks,
  ZB-H1), and GPT on one stage of 4 ranks where vocab tp 2 x dp 2 meets blocks under tp 1
  and tp 2 mixed (DDP and ZeRO-2; the embedding and head under ZeRO-3).

One torchrun launch per world size (``equality_worker``). A sabotaged GPT case (the partial
gradients of sequence-parallel layers left unsummed, the position table's and the final
norm's among them) must fail, so the comparison does see them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from gloo_cases import equality_failures, launch_cases
from plan_cases import make_plan, num_blocks

from partita.executor.setups import layer_setups
from partita.executor.trainer import check_supported
from partita.formats import LayerStrategy, Plan, VocabStrategy, dumps
from partita.models.api import build_model, describe_model

STEPS = 3
HERE = Path(__file__).resolve().parent
L = LayerStrategy
SP2 = VocabStrategy(tp=2, sp=True)
MEGATRON2 = L(tp=2, sp="megatron")


def _plan(model: str, **settings: object) -> Plan:
    plan = make_plan(model, **settings)  # type: ignore[arg-type]
    assert plan is not None, (model, settings)
    return plan


def _case(name: str, model: str, vocab: VocabStrategy = SP2, **settings: object) -> dict:
    plan = _plan(model, vocab=vocab, **settings)
    return {"name": name, "model": model, "plan": dumps(plan), "steps": STEPS}


def _uniform(model: str, layer: LayerStrategy) -> tuple[LayerStrategy, ...]:
    return tuple(layer for _ in range(num_blocks(model)))


WORLD2 = [
    *(
        _case(f"{m}/megatron2", m, world=2, layers=_uniform(m, MEGATRON2))
        for m in ("gpt-tiny", "llama-tiny", "bert-tiny", "t5-tiny")
    ),
    *(_case(f"{m}/tp1", m, world=2) for m in ("gpt-tiny", "llama-tiny")),
    _case(
        "gpt-tiny/ulysses2", "gpt-tiny", world=2, layers=_uniform("gpt-tiny", L(tp=2, sp="ulysses"))
    ),
]
WORLD4 = [
    _case(
        "gpt-tiny/pp2-megatron2-1f1b-m2",
        "gpt-tiny",
        world=4,
        pp=2,
        schedule="1f1b",
        micro_batches=2,
        layers=_uniform("gpt-tiny", MEGATRON2),
    ),
    _case(
        "gpt-tiny/pp2-c2-megatron2-interleaved-m4",
        "gpt-tiny",
        world=4,
        pp=2,
        schedule="interleaved-1f1b",
        chunks=2,
        micro_batches=4,
        layers=_uniform("gpt-tiny", MEGATRON2),
    ),
    _case(
        "llama-tiny/pp2-megatron2+tp1-zb-m2",
        "llama-tiny",
        world=4,
        pp=2,
        schedule="zb-h1",
        micro_batches=2,
        layers=(MEGATRON2, L(dp="zero1")),
    ),
    _case(
        "gpt-tiny/dp2-tp1+megatron2-zero2-vocab-zero3",
        "gpt-tiny",
        vocab=VocabStrategy(tp=2, sp=True, dp="zero3"),
        world=4,
        layers=(L(), MEGATRON2, L(dp="zero2"), MEGATRON2),
    ),
]
SABOTAGED = {**WORLD2[0], "name": "sabotaged", "sabotage": "skip_partial_gradient_sum"}
CASES = {2: [*WORLD2, SABOTAGED], 4: WORLD4}
_RESULTS: dict[int, dict[str, dict]] = {}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    def get(world: int) -> dict[str, dict]:
        if world not in _RESULTS:
            folder = tmp_path_factory.mktemp(f"vocab_sp{world}")
            _RESULTS[world] = launch_cases(HERE / "equality_worker.py", world, folder, CASES[world])
        return _RESULTS[world]

    return get


@pytest.mark.parametrize("world", sorted(CASES))
def test_gloo_sequence_parallel_vocab_equals_one_process(results, world: int) -> None:  # type: ignore[no-untyped-def]
    names = [case["name"] for case in CASES[world] if case["name"] != "sabotaged"]
    failures = equality_failures(results(world), names, steps=STEPS)
    assert not failures, json.dumps(failures, indent=1)


def test_world2_gloo_comparison_fails_when_partial_gradients_are_not_summed(results) -> None:  # type: ignore[no-untyped-def]
    outcome = results(2)["sabotaged"]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["param_error"] > 10.0


# -- without processes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("vit-tiny", "patch embedding and pooled head"),
        ("swin-tiny", "patch embedding and pooled head"),
    ],
)
def test_patch_models_refuse_sequence_parallel_vocab_before_launch(model: str, reason: str) -> None:
    family = describe_model(model).family
    plan = replace(_plan("gpt-tiny", world=2), vocab=SP2)
    with pytest.raises(ValueError) as error:
        check_supported(plan, family)
    assert str(error.value) == (
        f"vocab.sp: {family} models have no sequence-parallel embedding and head ({reason})"
    )
    # Without a split there is nothing to refuse (sp is a no-op at vocab.tp 1).
    check_supported(replace(plan, vocab=VocabStrategy(sp=True)), family)


def test_partita_train_refuses_sequence_parallel_vocab_of_swin_before_launch(
    tmp_path: Path,
) -> None:
    from argparse import Namespace

    from partita.executor.train_command import _check_before_launch, _Job

    plan = tmp_path / "plan.json"
    split = _plan("swin-tiny", world=2, vocab=VocabStrategy(tp=2))
    plan.write_text(dumps(replace(split, vocab=SP2)))  # the model checks refuse it on load
    job = _Job(str(plan), "swin-tiny", 1, "synthetic", 1e-3, 0, 1, tmp_path / "run")
    args = Namespace(nproc=None, attention="auto")
    with pytest.raises(ValueError, match=r"plan\.json: vocab\.sp: swin models have no "):
        _check_before_launch(args, job)


class _Groups:
    def for_tp(self, tp: int) -> str:
        return f"groups(tp={tp})"


def test_embedding_and_head_run_megatron_sp_and_t5_bridge_stays_whole() -> None:
    model = build_model("t5-tiny", seed=0)
    plan = _plan("t5-tiny", world=2, layers=_uniform("t5-tiny", L(tp=2, sp="ulysses")), vocab=SP2)
    setups = {s.name: s for s in layer_setups(model, plan, _Groups())}  # type: ignore[arg-type]
    assert (setups["embedding"].tp, setups["embedding"].sp) == (2, "megatron")
    assert (setups["head"].tp, setups["head"].sp) == (2, "megatron")
    assert (setups["decoder_embedding"].tp, setups["decoder_embedding"].sp) == (2, "none")
    assert setups["encoder.0"].sp == "ulysses"

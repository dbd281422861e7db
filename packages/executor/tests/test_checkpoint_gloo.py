"""Checkpoints on gloo: saved under one plan, resumed under another plan and world size.

Each save case trains 4 AdamW steps (lr 1e-3, eps 1e-6) under its plan, checkpointing after
steps 2 and 4. Each load case resumes the checkpoint after step 2 under its own plan (4 ranks,
2 ranks, or one plain process with no process group) and trains steps 3 and 4. Resumed runs
must equal one process that was never interrupted (losses within rtol 1e-5, parameters within
``allclose(rtol=1e-5, atol=1e-5)``, as in the equality suite); resumed under the plan that
saved them they must equal the uninterrupted run bit for bit. A model with dropout shows that
the random generators are restored: bit for bit with them, different without.

Launch order: 4 ranks (save and resume), then 2 ranks (resume the 4-rank checkpoints, save
and resume its own, and one plain process resuming checkpoints of both).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from gloo_cases import launch_cases
from plan_cases import make_plan, random_plan, uniform

from partita.executor.checkpoint import checkpoint_folder, complete_checkpoints, verify_checkpoint
from partita.executor.export_command import export_hf
from partita.formats import LayerStrategy, Plan, VocabStrategy, dumps
from partita.models.api import resolve_config
from partita.models.hf_io import load_hf_checkpoint

HERE = Path(__file__).resolve().parent
RANDOM_SEED = 20261202
DDP, ZERO3 = LayerStrategy(), LayerStrategy(dp="zero3")
DROPOUT_GPT = {**resolve_config("gpt-tiny").to_dict(), "attn_pdrop": 0.1}


def _save(name: str, model: str | dict, plan: Plan) -> dict:
    # The name the run records (a config mapping has none: its case's prefix stands in).
    label = model if isinstance(model, str) else name.split("/")[0]
    return {"role": "save", "name": name, "model": model, "label": label, "plan": dumps(plan)}


def _load(source: dict, plan: Plan | None, suffix: str, **extra: object) -> dict:
    """Resume ``source``'s checkpoint under ``plan`` (None: the plan that saved it)."""
    same = plan is None
    return {
        "role": "load",
        "name": f"{source['name']}>{suffix}",
        "model": source["model"],
        "label": source["label"],
        "source": source["name"],
        "plan": source["plan"] if same else dumps(plan),
        **({"same_as": source["name"]} if same else {}),
        **extra,
    }


def _valid(plan: Plan | None) -> Plan:
    assert plan is not None
    return plan


rng = random.Random(RANDOM_SEED)
GPT_TP2 = _save(
    "gpt/tp2-dp2-megatron",
    "gpt-tiny",
    uniform("gpt-tiny", world=4, layer=LayerStrategy(tp=2, sp="megatron"), vocab=VocabStrategy()),
)
GPT_ZERO3 = _save(
    "gpt/zero3-dp4",
    "gpt-tiny",
    uniform("gpt-tiny", world=4, layer=ZERO3, vocab=VocabStrategy(dp="zero3")),
)
GPT_PP_TP_ZERO2 = _save(
    "gpt/pp2-tp2-zero2",
    "gpt-tiny",
    uniform(
        "gpt-tiny",
        world=4,
        layer=LayerStrategy(tp=2, dp="zero2"),
        vocab=VocabStrategy(tp=2, dp="zero2"),
        pp=2,
        schedule="1f1b",
        micro_batches=2,
    ),
)
LLAMA_ULYSSES = _save(
    "llama/ulysses2-zero1",
    "llama-tiny",
    uniform(
        "llama-tiny",
        world=4,
        layer=LayerStrategy(tp=2, sp="ulysses", dp="zero1"),
        vocab=VocabStrategy(dp="zero1"),
    ),
)
T5_PP_ZERO3 = _save(
    "t5/pp2-zero3",
    "t5-tiny",
    uniform(
        "t5-tiny", world=4, layer=ZERO3, vocab=VocabStrategy(dp="zero3"), pp=2, micro_batches=2
    ),
)
GPT_RANDOM = _save("gpt/random-w4", "gpt-tiny", random_plan(rng, 4, "gpt-tiny"))
DROPOUT = _save(
    "gpt-dropout/tp2-dp2",
    DROPOUT_GPT,
    uniform("gpt-tiny", world=4, layer=LayerStrategy(tp=2), vocab=VocabStrategy(tp=2)),
)
LLAMA_W2 = _save(
    "llama/pp2-zero2-w2",
    "llama-tiny",
    uniform(
        "llama-tiny",
        world=2,
        layer=LayerStrategy(dp="zero2"),
        vocab=VocabStrategy(),
        pp=2,
        micro_batches=2,
    ),
)

SAVES4 = [GPT_TP2, GPT_ZERO3, GPT_PP_TP_ZERO2, LLAMA_ULYSSES, T5_PP_ZERO3, GPT_RANDOM, DROPOUT]
CASES4 = [
    *SAVES4,
    *(_load(s, None, "same-plan") for s in SAVES4),
    _load(DROPOUT, None, "same-plan-generators-lost", scramble_rng=True),
    _load(
        GPT_TP2,
        uniform("gpt-tiny", world=4, layer=ZERO3, vocab=VocabStrategy(dp="zero3")),
        "zero3-dp4",
    ),
    _load(GPT_PP_TP_ZERO2, random_plan(rng, 4, "gpt-tiny"), "random-w4"),
    _load(
        T5_PP_ZERO3,
        uniform(
            "t5-tiny", world=4, layer=LayerStrategy(tp=2, sp="megatron"), vocab=VocabStrategy(tp=2)
        ),
        "megatron-sp2-w4",
    ),
    _load(
        LLAMA_ULYSSES,
        uniform(
            "llama-tiny", world=4, layer=LayerStrategy(dp="zero2"), vocab=VocabStrategy(), pp=2
        ),
        "pp2-zero2-w4",
    ),
]


def _one_process(source: dict) -> dict:
    # The plan is only the launch's: the case trains in one plain process on rank 0.
    plan = uniform(source["model"], world=2, layer=DDP, vocab=VocabStrategy())
    return {
        "role": "one_process",
        "name": f"{source['name']}>one-process",
        "model": source["model"],
        "label": source["label"],
        "source": source["name"],
        "plan": dumps(plan),
    }


CASES2 = [
    # The example: saved with 4 ranks as tp2 x dp2, resumed with 2 ranks as pp2.
    _load(GPT_TP2, _valid(make_plan("gpt-tiny", world=2, pp=2, micro_batches=2)), "pp2-w2"),
    _load(
        GPT_ZERO3,
        uniform(
            "gpt-tiny", world=2, layer=LayerStrategy(tp=2, sp="ulysses"), vocab=VocabStrategy()
        ),
        "ulysses2-w2",
    ),
    _load(
        GPT_PP_TP_ZERO2,
        uniform(
            "gpt-tiny", world=2, layer=LayerStrategy(dp="zero1"), vocab=VocabStrategy(dp="zero1")
        ),
        "zero1-dp2",
    ),
    _load(
        LLAMA_ULYSSES,
        _valid(make_plan("llama-tiny", world=2, pp=2, schedule="1f1b", micro_batches=4)),
        "pp2-1f1b-w2",
    ),
    _load(
        T5_PP_ZERO3,
        uniform(
            "t5-tiny", world=2, layer=LayerStrategy(tp=2, sp="megatron"), vocab=VocabStrategy(tp=2)
        ),
        "megatron-sp2-w2",
    ),
    _load(GPT_RANDOM, random_plan(rng, 2, "gpt-tiny"), "random-w2"),
    LLAMA_W2,
    _load(LLAMA_W2, None, "same-plan"),
    *(_one_process(s) for s in (GPT_TP2, GPT_PP_TP_ZERO2, T5_PP_ZERO3, LLAMA_W2)),
]
EXACT = [c["name"] for c in CASES4 + CASES2 if c["label"] != "gpt-dropout"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("checkpoints")
    found: dict[str, dict] = {}
    for world, cases in ((4, CASES4), (2, CASES2)):
        cases = [{**c, "root": str(root)} for c in cases]
        found.update(launch_cases(HERE / "checkpoint_worker.py", world, root, cases))
    found["root"] = {"path": str(root)}
    return found


def test_case_grid() -> None:
    loads = [c for c in CASES4 + CASES2 if c["role"] != "save"]
    worlds = {json.loads(c["plan"])["world_size"] for c in loads if c["role"] == "load"}
    assert worlds == {2, 4}
    assert {c["model"] for c in loads if isinstance(c["model"], str)} == {
        "gpt-tiny",
        "llama-tiny",
        "t5-tiny",
    }
    # Every 4-rank checkpoint is resumed at 2 ranks too, but the dropout one (not comparable).
    assert {c["source"] for c in CASES2 if c["role"] == "load"} >= {
        s["name"] for s in SAVES4 if s is not DROPOUT
    }


@pytest.mark.parametrize("name", EXACT)
def test_gloo_resumed_runs_equal_one_process(results: dict[str, dict], name: str) -> None:
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["missing"] == []
    assert outcome["loss_error"] <= 1e-5, (outcome["losses"], outcome["reference"])
    assert outcome["param_error"] <= 1.0, f"{outcome['param_error']:.2f} x atol"


@pytest.mark.parametrize("name", [c["name"] for c in CASES4 + CASES2 if "same_as" in c])
def test_gloo_resumed_under_the_saving_plan_is_bit_identical(
    results: dict[str, dict], name: str
) -> None:
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    if name.endswith("generators-lost"):
        # With dropout, a run that did not get its generators back draws other masks.
        assert not outcome["bitwise_losses"], outcome["losses"]
    else:
        assert outcome["bitwise_losses"] and outcome["bitwise_params"], outcome["losses"]


@pytest.mark.parametrize("source", [T5_PP_ZERO3, GPT_TP2], ids=lambda s: s["name"])
def test_export_writes_the_trained_parameters_as_a_hugging_face_directory(
    results: dict[str, dict], source: dict, tmp_path: Path
) -> None:
    run_dir = Path(results["root"]["path"]) / source["name"]
    assert (checkpoint_folder(run_dir, 4) / "manifest.json").is_file()
    export_hf(run_dir, tmp_path / "hf")  # the run's latest checkpoint: after step 4
    exported = dict(load_hf_checkpoint(tmp_path / "hf").named_parameters())
    trained = torch.load(run_dir / "final_params.pt", weights_only=True)
    assert sorted(exported) == sorted(trained)
    for name, tensor in trained.items():
        assert torch.equal(exported[name].detach(), tensor), name


@pytest.mark.parametrize("source", [GPT_PP_TP_ZERO2, LLAMA_W2], ids=lambda s: s["name"])
def test_the_manifest_records_the_file_every_rank_wrote(
    results: dict[str, dict], source: dict
) -> None:
    run_dir = Path(results["root"]["path"]) / source["name"]
    world = json.loads(source["plan"])["world_size"]
    folders = complete_checkpoints(run_dir)
    assert [f.name for f in folders] == ["step-00000002", "step-00000004"]
    for folder in folders:
        names = [f.name for f in verify_checkpoint(folder).files]
        on_disk = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
        assert names == on_disk
        assert on_disk == sorted(
            [".metadata", "plan.json", *(f"__{r}_0.distcp" for r in range(world))]
        )

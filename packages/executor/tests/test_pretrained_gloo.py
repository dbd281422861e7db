"""Training from a Hugging Face folder's weights (``--init pretrained``) on gloo: step 0's
loss equals transformers' on the same weights and batch under every plan kind (tp, both
sequence parallelisms, pipeline cuts, checkpointing, ZeRO-1/2/3) and the LLaMA family's
variants, and follows it in bf16; each rank reads about its share of the file, and what the
run writes loads back in transformers."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from gloo_cases import launch_cases

from partita.formats import (
    LayerStrategy,
    PipelineConfig,
    Plan,
    RunReport,
    TrainingSettings,
    VocabStrategy,
    content_hash,
    dumps,
    load,
    save,
    validate_plan,
)
from partita.models.api import describe_model, resolve_config, synthetic_batch
from partita.models.families import family_of

WORKER = Path(__file__).with_name("pretrained_worker.py")
# A rank's bytes: its quarter of the split matrices and tables, plus the norms every rank of
# a stage reads whole (a few KiB of the tiny models).
SHARE_BOUND = 0.3


def _save_pretrained(preset: str, folder: Path) -> Path:
    """``preset`` as transformers initialises it, its norms scaled up so that its loss is far
    from a fresh initialisation's (about ln V), saved with safetensors."""
    config = resolve_config(preset)
    torch.manual_seed(0)
    model = family_of(config).reference_model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "ln_f.weight")):
                param.mul_(30.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _plan(
    folder: Path,
    layer: LayerStrategy,
    *,
    pp: int = 1,
    vocab: VocabStrategy | None = None,
    precision: str = "fp32",
) -> Plan:
    description = describe_model(folder)
    count = sum(layer.kind == "block" for layer in description.layers)
    stages = (count // 2, count - count // 2) if pp == 2 else (count,)
    plan = Plan(
        world_size=4,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=4,
        num_micro_batches=pp,  # one micro-batch per stage: 4 data-parallel ranks take 1 each
        pipeline=PipelineConfig(degree=pp, schedule="1f1b", stage_num_layers=stages),
        layers=tuple(layer for _ in range(count)),
        vocab=vocab or VocabStrategy(),
        precision=precision,  # type: ignore[arg-type]
    )
    validate_plan(plan, world_size=4, model=description)
    return plan


def _tp2_pp2(folder: Path) -> Plan:
    return _plan(folder, LayerStrategy(tp=2), pp=2, vocab=VocabStrategy(tp=2))


# Every plan kind the suite covers, started from a folder's weights: (preset, plan).
KINDS: dict[str, tuple[str, Callable[[Path], Plan]]] = {
    "llama-tiny/tp2-pp2": ("llama-tiny", _tp2_pp2),
    # GPT-2: Conv1D weights read whole, transposed.
    "gpt-tiny/tp2-pp2": ("gpt-tiny", _tp2_pp2),
    "llama-tiny/zero3-ckpt": (
        "llama-tiny",
        lambda f: _plan(f, LayerStrategy(dp="zero3", ckpt="full"), vocab=VocabStrategy(dp="zero3")),
    ),
    "llama-tiny/megatron-sp2-zero1": (
        "llama-tiny",
        lambda f: _plan(
            f, LayerStrategy(tp=2, sp="megatron", dp="zero1"), vocab=VocabStrategy(tp=2)
        ),
    ),
    "llama-tiny/ulysses2-zero2": (
        "llama-tiny",
        lambda f: _plan(f, LayerStrategy(tp=2, sp="ulysses", dp="zero2")),
    ),
    # Tied head on the other stage than its table, biased q/k/v, one sliding block.
    "qwen2-tiny/tp2-pp2": ("qwen2-tiny", _tp2_pp2),
    "qwen3-tiny/tp2-zero3-ckpt": (
        "qwen3-tiny",
        lambda f: _plan(f, LayerStrategy(tp=2, dp="zero3", ckpt="full"), vocab=VocabStrategy(tp=2)),
    ),
    "mistral-tiny/ulysses2-pp2": (
        "mistral-tiny",
        lambda f: _plan(f, LayerStrategy(tp=2, sp="ulysses"), pp=2),
    ),
}
# bf16 compute from fp32 weights: step 0 within bf16's rounding of transformers' fp32 loss.
BF16_LOSS_RTOL = 2e-2


def _transformers_loss(folder: Path, plan: Plan, *, seed: int = 0) -> float:
    """transformers' own loss on the batch the trainer makes for step 0
    (``Trainer.global_batch``)."""
    config = resolve_config(folder)
    family = family_of(config)
    reference = type(family.reference_model(config)).from_pretrained(folder, local_files_only=True)
    batch = synthetic_batch(config, batch_size=plan.global_batch_size, seed=seed * 100_003)
    with torch.no_grad():
        return float(family.reference_outputs(reference, batch)[1])


def _tensor_bytes(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return sum(handle.get_tensor(k).nbytes for k in handle.keys())  # noqa: SIM118


def test_each_rank_reads_its_share_and_step_0_equals_transformers(tmp_path: Path) -> None:
    cases, plans, folders = [], {}, {}
    for preset in sorted({preset for preset, _ in KINDS.values()}):
        folders[preset] = _save_pretrained(preset, tmp_path / preset)
    for name, (preset, make) in KINDS.items():
        plans[name] = make(folders[preset])
        cases.append(
            {"name": name, "model": str(folders[preset]), "plan": dumps(plans[name]), "steps": 1}
        )
    bf16 = replace(_tp2_pp2(folders["llama-tiny"]), precision="bf16")
    cases.append(
        {"name": "bf16", "model": str(folders["llama-tiny"]), "plan": dumps(bf16), "steps": 1}
    )
    results = launch_cases(WORKER, 4, tmp_path, cases)
    far_from_fresh = {}
    for name, plan in plans.items():
        result = results[name]
        assert "error" not in result, (name, result.get("error"))
        expected = _transformers_loss(folders[KINDS[name][0]], plan)
        far_from_fresh[name] = abs(expected - math.log(512))
        assert abs(result["losses"][0] - expected) <= 1e-6 * abs(expected), (name, result, expected)
    # The weights matter: a fresh initialisation's loss (about ln V) is far from these.
    assert min(far_from_fresh.values()) > 1.0, far_from_fresh
    expected = _transformers_loss(folders["llama-tiny"], bf16)
    assert abs(results["bf16"]["losses"][0] - expected) <= BF16_LOSS_RTOL * expected
    # LLaMA's tensors are all renames: every rank reads its slices only.
    total = _tensor_bytes(folders["llama-tiny"])
    read = results["llama-tiny/tp2-pp2"]["bytes"]
    assert all(0 < b <= SHARE_BOUND * total for b in read), (read, total)
    assert sum(read) >= total  # every tensor read by some rank


def _partita(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return subprocess.run(
        [script, *arguments], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_partita_train_starts_from_a_folders_weights_and_exports(tmp_path: Path) -> None:
    """The done-when of issue 25: a pretrained tiny LLaMA fine-tunes from its weights under
    tp 2 x pp 2 on 4 gloo ranks; its step-0 loss is transformers'."""
    folder = _save_pretrained("llama-tiny", tmp_path / "hf")
    plan = save(_tp2_pp2(folder), tmp_path / "tp2xpp2.json")
    run = tmp_path / "run"
    arguments = ["--model", str(folder), "--plan", str(plan), "--nproc", "4", "--steps", "2"]
    done = _partita("train", *arguments, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[0] == (
        f"partita train: weights from {folder} (model.safetensors, 21 tensors)"
    )
    report = load(run / "run_report.json", RunReport)
    assert report.settings is not None and report.settings.init == "pretrained"
    expected = _transformers_loss(folder, load(plan, Plan))
    loss = report.steps[0].loss
    assert loss is not None and abs(loss - expected) <= 1e-6 * abs(expected), (loss, expected)
    exported = _partita("export", str(run), "--out", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    config = resolve_config(folder)
    model_class = type(family_of(config).reference_model(config))
    start = model_class.from_pretrained(folder, local_files_only=True).state_dict()
    tuned, info = model_class.from_pretrained(
        tmp_path / "out", local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start[k])]
    assert moved  # two steps of AdamW moved the pretrained weights


def test_init_pretrained_needs_a_folder_with_weights(tmp_path: Path) -> None:
    folder = _save_pretrained("llama-tiny", tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    plan = save(_tp2_pp2(folder), tmp_path / "plan.json")
    done = _partita("train", "--model", str(folder), "--plan", str(plan), "--init", "pretrained")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"partita train: error: --init pretrained: {folder} is not a folder holding "
        "model.safetensors or model.safetensors.index.json"
    ]


@pytest.mark.parametrize("missing", ["model.layers.1.mlp.up_proj.weight"])
def test_a_checkpoint_missing_a_tensor_is_refused_before_launch(
    tmp_path: Path, missing: str
) -> None:
    from safetensors.torch import load_file, save_file

    folder = _save_pretrained("llama-tiny", tmp_path / "hf")
    tensors = load_file(folder / "model.safetensors")
    del tensors[missing]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    plan = save(_tp2_pp2(folder), tmp_path / "plan.json")
    done = _partita("train", "--model", str(folder), "--plan", str(plan))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"partita train: error: {folder / 'model.safetensors'}: the checkpoint has no tensor "
        f"{missing!r}"
    ]


def test_a_resumed_run_keeps_its_init(tmp_path: Path) -> None:
    folder = _save_pretrained("llama-tiny", tmp_path / "hf")
    run = tmp_path / "run"
    plan = save(_tp2_pp2(folder), run / "plan.json")
    report = RunReport(
        model=str(folder),
        plan_sha256=content_hash(load(plan, Plan)),
        world_size=4,
        backend="gloo",
        device="cpu",
        status="failed",
        unit="tokens",
        steps=(),
        peak_memory=(),
        memory_method="",
        error="rank 1 was killed by signal 9",
        settings=TrainingSettings(steps=2, lr=1e-3, init="pretrained"),
    )
    save(report, run / "run_report.json")
    done = _partita("train", "--resume", str(run), "--init", "random")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "partita train: error: --init: a resumed run keeps its own (init pretrained)"
    ]

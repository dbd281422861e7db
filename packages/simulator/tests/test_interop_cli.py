"""``partita export-plan`` and ``partita import-plan`` end to end, on the files the peers ship."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import LayerStrategy, Plan, load, save
from partita.simulator.model_source import load_model_description
from partita.simulator.uniform_plan import uniform_plan

HERE = Path(__file__).resolve().parent
TRAINERS = HERE / "interop_fixtures"
GALVATRON = HERE / "galvatron_strategy_fixtures"
GALVATRON_LLAMA2 = GALVATRON / "galvatron_config_llama2-7b_1nodes_8gpus_per_node_36GB_bf16.json"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300, check=False)


def _layerwise_llama(tmp_path: Path) -> Path:
    """llama2-7b on 8 H100s, ZeRO-1 with half the blocks fully recomputed, the others with
    their attention recomputed: no trainer states it in one strategy."""
    model = load_model_description("llama2-7b")
    plan = uniform_plan(
        "tp=2,dp=zero1,ckpt=full,mb=1", model, world_size=8, global_batch=32, precision="bf16"
    )
    layers = tuple(
        layer if index % 2 else dataclasses.replace(layer, ckpt="attention")
        for index, layer in enumerate(plan.layers)
    )
    return save(dataclasses.replace(plan, layers=layers), tmp_path / "layerwise.json")


def test_a_layerwise_plan_exports_as_the_fastest_one_strategy_plan_with_its_slowdown(
    tmp_path: Path,
) -> None:
    plan = _layerwise_llama(tmp_path)
    out = tmp_path / "megatron.sh"
    result = _run(
        "export-plan", str(plan), "--to", "megatron", "--model", "llama2-7b",
        "--cluster", "h100-sxm", "--nodes", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "--tensor-model-parallel-size 2" in text and "--use-distributed-optimizer" in text
    assert "--bf16" in text
    # Two candidates (each block strategy on every block); the report names the change.
    assert "of 2 candidate(s)" in result.stdout
    assert "(the plan is layer-wise)" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("predicted from"))
    assert "slower" in line or "faster" in line


def test_a_uniform_plan_the_trainer_expresses_exports_unchanged(tmp_path: Path) -> None:
    model = load_model_description("llama3-8b")
    # TorchTitan's tensor parallelism splits the sequence of the norms, the embedding and
    # the head too (Megatron-SP, vocab SP); its data parallelism is FSDP2.
    plan = uniform_plan(
        "tp=2,pp=2,sp=megatron,dp=zero3,ckpt=full,mb=1", model, world_size=16, global_batch=64,
        precision="bf16",
    )  # fmt: skip
    plan = dataclasses.replace(plan, vocab=dataclasses.replace(plan.vocab, sp=True))
    path = save(plan, tmp_path / "plan.json")
    result = _run(
        "export-plan", str(path), "--to", "torchtitan", "--model", "llama3-8b",
        "--cluster", "h100-sxm", "--nodes", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[parallelism]" in result.stdout and "tensor_parallel_degree = 2" in result.stdout
    assert "changed:" not in result.stdout
    assert "(0.0% slower)" in result.stdout


def test_deepspeed_gets_the_nearest_plan_it_expresses_and_says_what_changed(
    tmp_path: Path,
) -> None:
    # DeepSpeed's JSON has no pipeline (a PipelineModule is code): pp 2 becomes data parallel.
    model = load_model_description("llama2-7b")
    plan = uniform_plan("pp=2,dp=zero1,mb=1", model, world_size=8, global_batch=32)
    path = save(plan, tmp_path / "plan.json")
    out = tmp_path / "ds.json"
    result = _run(
        "export-plan", str(path), "--to", "deepspeed", "--model", "llama2-7b", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(out.read_text())
    assert config["zero_optimization"]["stage"] == 1
    assert config["train_batch_size"] == 32
    assert any(line.strip().startswith("changed:") and "pp" in line
               for line in result.stdout.splitlines())  # fmt: skip
    assert "slowdown not predicted" in result.stdout  # no profiles given


def test_torchtitans_own_config_imports_and_compares_with_the_search(tmp_path: Path) -> None:
    out = tmp_path / "current.json"
    result = _run(
        "import-plan", str(TRAINERS / "torchtitan_llama3_8b.toml"), "--from", "torchtitan",
        "--model", "llama3-8b", "--world-size", "64", "--precision", "bf16",
        "--cluster", "a100-sxm-80g", "--nodes", "8", "--search", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load(out, Plan)
    assert plan.world_size == 64 and plan.pipeline.degree == 1
    assert {layer.dp for layer in plan.layers} == {"zero3"}  # FSDP over every rank
    assert "your current setup, predicted from spec sheet a100-sxm-80g" in result.stdout
    assert load(tmp_path / "current.searched.json", Plan).world_size == 64
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("searched plan") and "against your current setup" in verdict


def test_megatrons_own_launch_script_imports(tmp_path: Path) -> None:
    out = tmp_path / "gpt.json"
    script = TRAINERS / "megatron_train_llama3_8b_h100_fp8.sh"
    result = _run(
        "import-plan", str(script), "--from", "megatron", "--model", "llama3-8b",
        "--world-size", "8", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load(out, Plan).world_size == 8
    assert "not predicted" in result.stdout


def test_galvatrons_shipped_strategy_round_trips_through_a_plan(tmp_path: Path) -> None:
    plan_file = tmp_path / "galvatron.json"
    result = _run(
        "import-plan", str(GALVATRON_LLAMA2), "--from", "galvatron", "--model", "llama2-7b",
        "--out", str(plan_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load(plan_file, Plan)
    assert plan.world_size == 8 and plan.precision == "bf16"  # from the file's name
    back = tmp_path / "back.json"
    result = _run(
        "export-plan", str(plan_file), "--to", "galvatron", "--model", "llama2-7b",
        "--out", str(back),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shipped, written = json.loads(GALVATRON_LLAMA2.read_text()), json.loads(back.read_text())
    for key in ("pp_deg", "tp_sizes_enc", "dp_types_enc", "checkpoint", "global_bsz", "chunks"):
        assert str(written[key]) == str(shipped[key]), key


def test_what_galvatron_cannot_hold_is_one_line(tmp_path: Path) -> None:
    model = load_model_description("llama2-7b")
    plan = uniform_plan(
        "pp=2,schedule=interleaved-1f1b,chunks=2", model, world_size=8, global_batch=32
    )
    path = save(plan, tmp_path / "plan.json")
    result = _run("export-plan", str(path), "--to", "galvatron", "--model", "llama2-7b")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Galvatron cannot express" in lines[0], result.stderr
    assert "interleaved" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("import-plan", "missing.sh", "--from", "megatron", "--model", "gpt2", "--out", "x.json"),
         "missing.sh: cannot read"),
        (("import-plan", str(GALVATRON_LLAMA2), "--from", "galvatron", "--model", "llama2-7b",
          "--search", "--out", "x.json"), "--search needs --cluster"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    args = tuple(str(tmp_path / a) if a == "x.json" else a for a in args)
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "x.json").exists()  # refused before anything is written


def test_every_block_keeps_the_strategy_the_trainer_was_given(tmp_path: Path) -> None:
    # A uniform plan that DeepSpeed expresses as it is: nothing listed as changed.
    model = load_model_description("llama2-7b")
    plan = uniform_plan("dp=zero2,ckpt=full,mb=1", model, world_size=8, global_batch=32)
    path = save(plan, tmp_path / "plan.json")
    result = _run("export-plan", str(path), "--to", "deepspeed", "--model", "llama2-7b")
    assert result.returncode == 0, result.stderr
    assert "changed:" not in result.stdout
    assert set(plan.layers) == {LayerStrategy(dp="zero2", ckpt="full")}

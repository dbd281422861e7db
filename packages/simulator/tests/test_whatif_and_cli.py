"""What-if studies and the `partita simulate` / `partita whatif` commands."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic as syn

from partita.formats import LayerStrategy, load, save
from partita.simulator.specsheet import load_cluster_spec
from partita.simulator.whatif import Study, scale_plan

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"


def _study(**kw):  # type: ignore[no-untyped-def]
    plan = syn.plan(
        world=8, stages=(2, 2), micro_batches=4, global_batch=64, strategy=LayerStrategy(tp=2)
    )
    cluster = load_cluster_spec("h100-sxm").with_changes(num_nodes=1)
    # 1 TFLOP per sample and layer: compute-bound, so more devices help.
    model = syn.description(4, flops_per_sample=1e12)
    return Study(plan=plan, models=[model], cluster=cluster, **kw)


def test_scale_plan_changes_only_data_parallelism() -> None:
    plan = syn.plan(world=8, stages=(2, 2), micro_batches=4, global_batch=32)
    bigger = scale_plan(plan, world_size=16)
    assert (bigger.world_size, bigger.devices_per_stage, bigger.layers) == (16, 8, plan.layers)
    with pytest.raises(ValueError, match=r"world size 6 is not a multiple|does not divide"):
        scale_plan(plan, world_size=6)


def test_more_devices_more_throughput_and_less_memory() -> None:
    points = _study().run({"world_size": [8, 16, 32]})
    assert [p.world_size for p in points] == [8, 16, 32]
    rates = [p.prediction.throughput_samples_per_s for p in points]  # type: ignore[union-attr]
    memory = [p.prediction.peak_memory_bytes for p in points]  # type: ignore[union-attr]
    assert rates[0] < rates[1] < rates[2]
    assert memory[0] >= memory[1] >= memory[2]


def test_faster_network_never_slows_down() -> None:
    points = _study().run(
        {"world_size": [16], "inter_bandwidth_x": [1, 4], "devices_per_node": [4]}
    )
    slow, fast = (p.prediction.iteration_time_s for p in points)  # type: ignore[union-attr]
    assert fast <= slow


def test_impossible_points_are_reported_not_raised() -> None:
    points = _study().run({"world_size": [8, 10]})
    assert points[0].error is None
    assert points[1].prediction is None
    assert "world_size 10" in str(points[1].error)


def test_memory_axis_decides_what_fits() -> None:
    points = _study().run({"memory_gb": [80, 1e-6]})
    assert [p.fits for p in points] == [True, False]


def test_unknown_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown what-if axis 'gpus'"):
        _study().run({"gpus": [8]})


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_partita(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_simulate_command_writes_trace_and_plots(tmp_path: Path) -> None:
    result = _run(
        "simulate",
        "--plan",
        str(EXAMPLES / "plan.json"),
        "--hardware",
        str(EXAMPLES / "hardware_profile.json"),
        "--model-profile",
        str(EXAMPLES / "model_profile.json"),
        "--model",
        str(EXAMPLES / "model_description.json"),
        "--trace",
        str(tmp_path / "trace.json"),
        "--plot",
        str(tmp_path / "timeline.png"),
        "--memory-plot",
        str(tmp_path / "memory.png"),
    )
    assert result.returncode == 0, result.stderr
    assert "samples/s" in result.stdout and "bubble" in result.stdout
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"F0", "B3", "send F0"} <= names
    for png in ("timeline.png", "memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_command_bad_plan_is_one_line(tmp_path: Path) -> None:
    plan = load(EXAMPLES / "plan.json")
    save(
        type(plan)(
            **{**plan.__dict__, "world_size": 8, "pipeline": plan.pipeline, "global_batch_size": 16}
        ),
        tmp_path / "plan8.json",
    )
    result = _run(
        "simulate",
        "--plan",
        str(tmp_path / "plan8.json"),
        "--hardware",
        str(EXAMPLES / "hardware_profile.json"),
        "--model-profile",
        str(EXAMPLES / "model_profile.json"),
        "--model",
        str(EXAMPLES / "model_description.json"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "partita simulate: error: the plan is for 8 devices but the hardware profile "
        "'example 4-rank gloo CPU host' has 4 (1 node(s) x 4)"
    ]


def test_whatif_command_table_json_and_plot(tmp_path: Path) -> None:
    plan = syn.plan(world=8, stages=(2, 2), micro_batches=4, global_batch=64)
    save(plan, tmp_path / "plan.json")
    save(syn.description(4), tmp_path / "model.json")
    result = _run(
        "whatif",
        "--plan",
        str(tmp_path / "plan.json"),
        "--model",
        str(tmp_path / "model.json"),
        "--cluster",
        "h100-sxm",
        "--world-sizes",
        "8,16,32",
        "--json",
        str(tmp_path / "p.json"),
        "--plot",
        str(tmp_path / "throughput.png"),
    )
    assert result.returncode == 0, result.stderr
    points = json.loads((tmp_path / "p.json").read_text())
    assert [p["world_size"] for p in points] == [8, 16, 32]
    assert all(p["prediction"] is not None for p in points)
    assert (tmp_path / "throughput.png").stat().st_size > 5000
    assert "per device" in result.stdout


# --- planning a preset from a spec sheet, with no file (issue 25) -------------------------------


def test_presets_are_described_without_torch() -> None:
    from partita.simulator.model_source import load_model_description, preset_names

    names = preset_names()
    asked = {"llama3-8b", "llama3-70b", "llama3-405b", "mistral-7b", "qwen2.5-7b", "qwen2.5-72b"}
    assert asked <= set(names)
    llama3 = load_model_description("llama3-70b")
    assert (llama3.num_heads, llama3.num_kv_heads, llama3.vocab_size) == (64, 8, 128256)
    assert 70.5e9 < llama3.params < 70.6e9
    with pytest.raises(ValueError, match=r"^--model llama9: neither a description file nor a"):
        load_model_description("llama9")


def test_plan_searches_a_preset_from_a_spec_sheet_alone(tmp_path: Path) -> None:
    result = _run(
        "plan",
        "--model",
        "llama3-8b",
        "--cluster",
        "h100-sxm",
        "--world-size",
        "8",
        "--global-batch",
        "32",
        "--out",
        str(tmp_path / "plan.json"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "searching llama3-8b on 8 devices from spec sheet h100-sxm (bf16)"
    )
    plan = load(tmp_path / "plan.json")
    # A GPU spec sheet plans bf16, and the budget is the device's 80 GB.
    assert plan.precision == "bf16" and plan.world_size == 8 and len(plan.layers) == 32
    assert "(budget 74.51 GiB)" in result.stdout
    simulated = _run(
        "simulate", "--plan", str(tmp_path / "plan.json"), "--model", "llama3-8b",
        "--cluster", "h100-sxm",
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    assert "samples/s" in simulated.stdout
    studied = _run(
        "whatif", "--plan", str(tmp_path / "plan.json"), "--model", "llama3-8b",
        "--cluster", "h100-sxm", "--memory-gb", "40,80", "--json", str(tmp_path / "w.json"),
    )  # fmt: skip
    assert studied.returncode == 0, studied.stderr
    fits = [p["prediction"]["peak_memory_bytes"] <= p["prediction"]["device_memory_bytes"]
            for p in json.loads((tmp_path / "w.json").read_text())]  # fmt: skip
    assert fits == [False, True]  # the plan searched for 80 GB does not fit 40


def test_plan_needs_profiles_or_a_cluster_not_both(tmp_path: Path) -> None:
    common = ["plan", "--model", "llama3-8b", "--world-size", "8", "--global-batch", "8"]
    common += ["--out", str(tmp_path / "p.json")]
    neither = _run(*common)
    both = _run(*common, "--cluster", "h100-sxm", "--hardware", "h.json")
    assert neither.returncode == both.returncode == 2
    assert neither.stderr.strip().splitlines() == [
        "partita plan: error: give --hardware H and --model-profile M (measured), or --cluster "
        "NAME|FILE (a spec sheet)"
    ]
    assert both.stderr.strip().splitlines() == [
        "partita plan: error: give either --cluster or --hardware with --model-profile, not both"
    ]
    assert not (tmp_path / "p.json").exists()


# --- spec-sheet planning end to end (issue 21, part 4) ------------------------------------------


def test_uniform_writes_one_strategy_for_every_layer_and_predicts_it(tmp_path: Path) -> None:
    out = tmp_path / "uniform.json"
    result = _run(
        "plan", "--model", "llama3-70b", "--cluster", "h100-sxm", "--nodes", "8",
        "--global-batch", "256", "--uniform", "tp=8,pp=8,sp=megatron,ckpt=full,mb=1",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = load(out)
    assert plan.world_size == 64 and plan.precision == "bf16"  # 8 nodes of 8, a GPU's bf16
    assert plan.pipeline.degree == 8 and plan.pipeline.stage_num_layers == (10,) * 8
    assert set(plan.layers) == {LayerStrategy(tp=8, sp="megatron", ckpt="full")}
    assert plan.num_micro_batches == 256  # one sample each, the whole batch on dp 1
    assert plan.provenance.created_by.startswith("partita plan --uniform")
    assert "predicted from spec sheet h100-sxm (bf16):" in result.stdout
    assert "bubble" in result.stdout


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("tp=8,pp=8,foo=1", "--uniform: unknown key 'foo' (known: tp, pp, mb, vocab_tp, chunks, "
         "sp, dp, vocab_dp, schedule, ckpt)"),
        ("tp=8,sp=ring", "--uniform: sp: expected one of none, megatron, ulysses, got 'ring'"),
        ("tp=0", "--uniform: tp: expected a positive integer, got '0'"),
        ("tp=3", "--uniform: tp 3 x pp 1 does not divide the 64 devices"),
        ("tp=8,pp=8,mb=3", "--uniform: mb 3 does not divide the local batch 256 (global batch "
         "256 over 1 data-parallel ranks)"),
        ("tp=16,pp=4", "--uniform 'tp=16,pp=4': layers[0].tp: tensor-parallel degree 16 does not "
         "divide num_kv_heads 8 of layer 'blocks.0'"),
    ],
)  # fmt: skip
def test_a_bad_uniform_strategy_is_one_line(tmp_path: Path, strategy: str, message: str) -> None:
    result = _run(
        "plan", "--model", "llama3-70b", "--world-size", "64", "--global-batch", "256",
        "--uniform", strategy, "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"partita plan: error: {message}"]
    assert not (tmp_path / "p.json").exists()


def test_cluster_takes_inline_json_and_nodes(tmp_path: Path) -> None:
    inline = '{"preset": "a100-sxm-80g", "num_nodes": 2}'
    result = _run(
        "plan", "--model", "gpt2", "--cluster", inline, "--global-batch", "64",
        "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "searching gpt2 on 16 devices from spec sheet a100-sxm-80g (bf16)"
    )
    broken = _run(
        "plan", "--model", "gpt2", "--cluster", inline[:-1], "--global-batch", "64",
        "--out", str(tmp_path / "q.json"),
    )  # fmt: skip
    assert broken.returncode == 2
    assert broken.stderr.startswith("partita plan: error: --cluster (inline JSON): not valid JSON")
    nodes = _run(
        "plan", "--model", "gpt2", "--cluster", "a100-sxm-80g", "--nodes", "4",
        "--global-batch", "64", "--out", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert nodes.returncode == 0, nodes.stderr
    assert load(tmp_path / "r.json").world_size == 32


def test_a_precision_that_differs_from_the_measured_profile_is_refused(tmp_path: Path) -> None:
    measured = ["--hardware", str(EXAMPLES / "hardware_profile.json"),
                "--model-profile", str(EXAMPLES / "model_profile.json"),
                "--model", str(EXAMPLES / "model_description.json")]  # fmt: skip
    searched = _run(
        "plan", *measured, "--global-batch", "8", "--precision", "bf16",
        "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert searched.returncode == 2
    assert searched.stderr.strip().splitlines() == [
        f"partita plan: error: --precision bf16 differs from the model profile "
        f"{EXAMPLES / 'model_profile.json'}, measured in fp32: profile the model in bf16, or "
        "plan in fp32"
    ]
    plan = load(EXAMPLES / "plan.json")
    save(dataclasses.replace(plan, precision="bf16"), tmp_path / "bf16.json")
    simulated = _run("simulate", "--plan", str(tmp_path / "bf16.json"), *measured)
    assert simulated.returncode == 2
    assert "precision bf16 differs from the model profile" in simulated.stderr
    studied = _run(
        "whatif", "--plan", str(EXAMPLES / "plan.json"), "--model", "gpt2",
        "--cluster", "h100-sxm", "--dtype", "bf16",
    )  # fmt: skip
    assert studied.returncode == 2
    assert studied.stderr.strip().splitlines() == [
        "partita whatif: error: --dtype bf16 differs from the plan's precision fp32: give the "
        "plan's, or a plan of that precision"
    ]


def test_whatif_shows_the_bubble_every_stage_and_the_warnings(tmp_path: Path) -> None:
    plan = syn.plan(world=8, stages=(2, 2), micro_batches=4, global_batch=64)
    save(plan, tmp_path / "plan.json")
    save(syn.description(4), tmp_path / "model.json")
    result = _run(
        "whatif", "--plan", str(tmp_path / "plan.json"), "--model", str(tmp_path / "model.json"),
        "--cluster", "h100-sxm", "--world-sizes", "8,16", "--json", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert "bubble" in header and "peak mem by stage" in header
    points = json.loads((tmp_path / "p.json").read_text())
    for point in points:
        prediction = point["prediction"]
        assert len(prediction["stage_peak_bytes"]) == 2
        assert max(prediction["stage_peak_bytes"]) == prediction["peak_memory_bytes"]
        assert 0 < prediction["bubble_fraction"] < 1
        assert "(stage " in result.stdout


def test_runners_up_are_distinct_plans_with_distinct_labels(tmp_path: Path) -> None:
    from partita.simulator.search_report import describe_plan

    result = _run(
        "plan", "--model", "llama3-8b", "--cluster", "h100-sxm", "--global-batch", "32",
        "--out", str(tmp_path / "p.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("runners-up:\n")[1].split("\n\n")[0].splitlines()[1:]
    labels = [line.rsplit("  ", 3)[0].strip() for line in lines]
    assert len(labels) == len(set(labels)) >= 2, lines
    assert describe_plan(load(EXAMPLES / "plan.json")).startswith("pp2 ")


def test_uniform_gives_extra_blocks_to_the_middle_stages() -> None:
    """As the search splits them: the first and last stages also hold the embedding and the
    head, so blocks that do not divide go to the middle."""
    from partita.formats.architectures import describe_config, presets
    from partita.simulator.uniform_plan import uniform_plan

    model = describe_config({**presets()["gpt2"], "n_layer": 10})
    plan = uniform_plan("pp=4", model, world_size=4, global_batch=4, precision="fp32")
    assert plan.pipeline.stage_num_layers == (2, 3, 3, 2)

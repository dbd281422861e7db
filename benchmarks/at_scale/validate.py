"""Spec-sheet predictions against published large-scale runs that nobody here tuned.

For every row of ``published_runs.json`` (TorchTitan's FSDP2 results on 64 A100 and 8-128
H100, Megatron-LM's weak-scaling Table 1 on 32-3072 A100; gathered with their sources and
verbatim quotes), this builds the model description, writes the run's strategy as a uniform
plan, simulates it on the GPU's spec sheet (``partita.simulator.specsheet``; one
calibration per GPU kind, no row special-cased) and compares the prediction with the
published figure in the published unit: tokens/s per GPU (TorchTitan), achieved TFLOP/s per
GPU by Megatron's own formula (Megatron), and peak memory where published.

    python benchmarks/at_scale/validate.py [--split validation|held_out|all] \
        [--json runs/at-scale.json] [--markdown docs/fidelity/at-scale.md]

Time error is signed: ``predicted / published - 1`` of the iteration time (positive: the
prediction is slower than the run). What a row's configuration cannot say in a Partita
plan (Megatron's interleaved schedule, TorchTitan's selective checkpointing) is mapped to
the nearest plan and named in the row's ``approximations``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from partita.formats import ModelDescription, Plan
from partita.formats.architectures import describe_config, presets
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    PRESETS,
    ClusterSpec,
    hardware_profile_from_spec,
    model_profile_from_description,
)
from partita.simulator.uniform_plan import uniform_plan

HERE = Path(__file__).resolve().parent
GIB = 2**30
# TorchTitan's H100s (the source's own words): "96GB HBM2e with 2.4 TB/sec peak memory
# bandwidth ... the default 500W power limit", and their peak is "between SXM and NVL" (989.5
# and 835 dense bf16 TFLOP/s on NVIDIA's data sheets): the midpoint, the one reading of
# "between" that favours neither end. Nothing here is fitted to the rows.
H100_PEAK = (989.5e12 + 835e12) / 2
H100_96G_500W = PRESETS["h100-sxm"].with_changes(
    name="h100-sxm-96g-hbm2e-500w",
    device_name="NVIDIA H100 96GB HBM2e (Grand Teton, 500 W)",
    memory_bytes=96 * 10**9,
    memory_bandwidth_bytes_per_s=2.4e12,
    peak_flops_per_s={"fp32": 67e12, "bf16": H100_PEAK, "fp16": H100_PEAK},
)
LLAMA_PRESETS = {
    "Llama 3 8B": "llama3-8b",
    "Llama 3.1 8B": "llama3-8b",
    "Llama 3 70B": "llama3-70b",
    "Llama 2 13B": "llama2-13b",
    "Llama 2 70B": "llama2-70b",
    "Llama 3.1 70B": "llama3-70b",
    "Llama 3.1 405B": "llama3-405b",
}
DP_MODES = {"fsdp": "zero3", "zero3": "zero3", "ddp": "ddp"}


def _not_expressible(row: dict[str, Any]) -> str | None:
    """Why a row's run cannot be written as a Partita plan or priced, or None."""
    parallel, software = row["parallel"], row["software"]
    if (parallel.get("cp") or 1) > 1:
        return "context parallelism is not a Partita plan option"
    if software.get("torch_compile") or software.get("float8"):
        return "torch.compile and Float8 are not priced"
    if parallel.get("model_parallel_size") and parallel.get("tp") is None:
        return "the source states the model-parallel size, not its tp x pp split"
    if (parallel.get("dp_mode") or "ddp") not in DP_MODES:
        return f"data-parallel mode {parallel['dp_mode']!r} has no Partita equivalent"
    return None


@dataclasses.dataclass
class Case:
    row: dict[str, Any]
    model: ModelDescription
    plan: Plan
    spec: ClusterSpec
    approximations: list[str]
    # The run's attention kernel: fused (what PyTorch SDPA runs, TorchTitan's) or the scores
    # materialised (Megatron-LM in 2021, before FlashAttention).
    attention: str = "sdpa"


def build_case(row: dict[str, Any]) -> Case:
    """The description, plan and cluster of ``row``; ValueError when it cannot be built."""
    why = _not_expressible(row)
    if why is not None:
        raise ValueError(why)
    approximations: list[str] = []
    model_row, parallel, hardware = row["model"], row["parallel"], row["hardware"]
    seq = model_row.get("seq_len")
    if seq is None:
        seq = 8192  # TorchTitan's Llama 3 presets; the H100 file does not print it
        approximations.append("seq_len 8192 assumed (not stated)")
    if row["source"].startswith("megatron"):
        derived = row.get("derived", {})
        h, layers = model_row["hidden"], model_row["layers"]
        config = {
            "model_type": "gpt2",
            "n_embd": h,
            "n_layer": layers,
            "n_head": model_row["heads"],
            "n_inner": derived.get("ffn", 4 * h),
            "n_positions": seq,
            "vocab_size": model_row["vocab"],
        }
        model = describe_config(config, seq_len=seq, name=row["id"])
    else:
        preset = LLAMA_PRESETS.get(model_row["name"].split(" (")[0])
        if preset is None:
            raise ValueError(f"no preset for {model_row['name']!r}")
        model = describe_config(presets()[preset], seq_len=seq, name=row["id"])
    gpus = hardware["num_gpus"]
    tp, pp = parallel.get("tp") or 1, parallel.get("pp") or 1
    dp = gpus // (tp * pp)
    ckpt = parallel.get("activation_checkpointing") or "none"
    every_other = False  # TorchTitan's layer SAC: every second block checkpointed whole
    if ckpt == "selective" and parallel.get("selective_ac_option") == "layer":
        approximations.append("selective layer = every 2nd block checkpointed")
        every_other, ckpt = True, "full"
    elif ckpt == "selective":  # TorchTitan's "op" policy: the plan's own ckpt mode
        ckpt = "selective-op"
    dp_mode = DP_MODES[parallel.get("dp_mode") or "ddp"]
    global_batch = parallel.get("global_batch_size") or (parallel["local_batch_size"] * dp)
    micro = parallel.get("micro_batch_size")
    if micro is None:
        micro = parallel.get("local_batch_size") if pp == 1 else 1
        if pp > 1:
            approximations.append("micro-batch 1 assumed (not stated)")
    if micro is None:
        micro = global_batch // dp
    if "interleaved" in str(parallel.get("pp_schedule") or "") and pp > 1:
        approximations.append("interleaved 1F1B priced as 1F1B (virtual stages not stated)")
    strategy = f"tp={tp},pp={pp},dp={dp_mode},ckpt={ckpt},mb={micro}"
    plan = uniform_plan(
        strategy, model, world_size=gpus, global_batch=global_batch, precision="bf16"
    )
    if every_other:
        # torchtitan's _apply_layer_sac wraps block k (counted from 1) when k % 2 == 0, the
        # default selective_ac_option "2" ("every nth layer").
        layers = tuple(
            dataclasses.replace(layer, ckpt="full" if i % 2 == 1 else "none")
            for i, layer in enumerate(plan.layers)
        )
        plan = dataclasses.replace(plan, layers=layers)
    base = H100_96G_500W if hardware["gpu"].startswith("H100") else PRESETS["a100-sxm-80g"]
    per_node = hardware.get("gpus_per_node") or 8
    spec = base.with_changes(devices_per_node=per_node, num_nodes=max(1, gpus // per_node))
    attention = "sdpa"
    if row["source"].startswith("megatron"):
        attention = "eager"
        approximations.append("attention scores materialised (2021: before FlashAttention)")
    return Case(row, model, plan, spec, approximations, attention)


def megatron_flops_per_iteration(model: ModelDescription, batch: int) -> float:
    """Narayanan et al. 2021, eq. 3: 96 B s l h^2 (1 + s/6h + V/16lh), recomputation
    included: the FLOPs their "achieved teraFLOP/s" counts."""
    h, s, v = model.hidden_size, model.seq_len, model.vocab_size
    layers = len(model.blocks)
    return 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))


def evaluate(case: Case) -> dict[str, Any]:
    hardware = hardware_profile_from_spec(case.spec)
    profile = model_profile_from_description(
        case.model,
        case.spec,
        dtype="bf16",
        attention=case.attention,  # type: ignore[arg-type]
    )
    result = simulate(
        case.plan, hardware=hardware, model_profile=profile, model=case.model, record_events=False
    )
    time_s = result.iteration_time_s
    gpus = case.plan.world_size
    batch = case.plan.global_batch_size
    published = case.row["published"]
    out: dict[str, Any] = {
        "id": case.row["id"],
        "split": case.row["split"],
        "gpus": gpus,
        "plan": _strategy_line(case.plan),
        "approximations": case.approximations,
        "predicted_iteration_s": time_s,
        "predicted_peak_gib": max(result.peak_memory_bytes) / GIB,
        "bubble": sum(s.bubble_s for s in result.stages) / (len(result.stages) * time_s),
    }
    if published.get("tokens_per_s_per_gpu") is not None:
        rate = batch * case.model.seq_len / time_s / gpus
        out |= {"unit": "tokens/s/GPU", "published": published["tokens_per_s_per_gpu"]}
        out["predicted"] = rate
    elif published.get("tflops_per_gpu") is not None:
        rate = megatron_flops_per_iteration(case.model, batch) / time_s / gpus / 1e12
        out |= {"unit": "TFLOP/s/GPU", "published": published["tflops_per_gpu"]}
        out["predicted"] = rate
    else:
        raise ValueError("no throughput published")
    # A rate error turned into the iteration time's: slower predicted, positive.
    out["time_error"] = out["published"] / out["predicted"] - 1
    if published.get("memory_gib") is not None:
        out["published_memory_gib"] = published["memory_gib"]
        out["memory_error"] = out["predicted_peak_gib"] / published["memory_gib"] - 1
    return out


def _strategy_line(plan: Plan) -> str:
    layer = plan.layers[0]
    dp = plan.world_size // (layer.tp * plan.pipeline.degree)
    mb = plan.global_batch_size // (dp * plan.num_micro_batches)
    checkpointed = sum(x.recomputes for x in plan.layers)
    modes = {x.ckpt for x in plan.layers} - {"none"}
    mode = "full" if modes == {"full"} else "/".join(sorted(modes))
    ckpt = {0: "", len(plan.layers): f" ckpt {mode}"}.get(
        checkpointed, f" ckpt {mode} {checkpointed}/{len(plan.layers)}"
    )
    return (
        f"tp{layer.tp} pp{plan.pipeline.degree} dp{dp} {layer.dp}"
        f"{ckpt} mb{mb} x{plan.num_micro_batches}"
    )


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(r["time_error"]) for r in results if "time_error" in r]
    memory = [abs(r["memory_error"]) for r in results if "memory_error" in r]
    return {
        "rows": len(results),
        "mean_abs_time_error": statistics.fmean(errors) if errors else None,
        "max_abs_time_error": max(errors) if errors else None,
        "rows_over_20_percent": sum(e > 0.2 for e in errors),
        "mean_abs_memory_error": statistics.fmean(memory) if memory else None,
    }


def markdown(results: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "| row | GPUs | plan | unit | published | predicted | time error "
        "| memory (pub / pred GiB) | approximations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = (
            f"{r['published_memory_gib']:.1f} / {r['predicted_peak_gib']:.1f} "
            f"({r['memory_error']:+.0%})"
            if "memory_error" in r
            else f"- / {r['predicted_peak_gib']:.1f}"
        )
        lines.append(
            f"| {r['id']} | {r['gpus']} | {r['plan']} | {r['unit']} | {r['published']:g} | "
            f"{r['predicted']:.0f} | {r['time_error']:+.1%} | {memory} | "
            f"{'; '.join(r['approximations']) or '-'} |"
        )
    lines += [
        "",
        f"Rows: {summary['rows']}; mean absolute time error "
        f"{summary['mean_abs_time_error']:.1%}, largest {summary['max_abs_time_error']:.1%}, "
        f"{summary['rows_over_20_percent']} row(s) over 20%.",
    ]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- validate.py table: begin -->", "<!-- validate.py table: end -->"


def write_table(path: Path, table: str) -> None:
    """Put ``table`` between the markers of ``path`` (the prose around it is kept), or write a
    new file holding only the table."""
    block = f"{BEGIN}\n{table}{END}\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
        return
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1].lstrip("\n")
    path.write_text(head + block + tail)


def table_in(path: Path) -> str:
    """The table between the markers of ``path``."""
    return path.read_text().split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="validation", choices=("validation", "held_out", "all"))
    parser.add_argument("--rows", default=str(HERE / "published_runs.json"))
    parser.add_argument("--json", help="write every row's comparison here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)
    rows = json.loads(Path(args.rows).read_text())["rows"]
    chosen = [r for r in rows if args.split == "all" or r["split"] == args.split]
    results, skipped = [], []
    for row in chosen:
        try:
            results.append(evaluate(build_case(row)))
        except (ValueError, KeyError, TypeError) as error:
            skipped.append({"id": row["id"], "why": str(error)})
            continue
        r = results[-1]
        print(
            f"{r['id']:42} {r['plan']:38} {r['unit']:12} published {r['published']:>7g} "
            f"predicted {r['predicted']:>8.1f}  time {r['time_error']:+.1%}",
            flush=True,
        )
    summary = summarise(results)
    for s in skipped:
        print(f"skipped {s['id']}: {s['why']}")
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"summary": summary, "rows": results, "skipped": skipped}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    if args.markdown:
        write_table(Path(args.markdown), markdown(results, summary))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())

"""The what-if study behind docs/whatif.md: llama2-70b on 64, 128 and 256 H100s, spec sheet only.

Run from the repository root with the packages installed (``nox -s demo`` installs them):

    python docs/whatif/llama2_70b_h100.py

It writes ``docs/whatif/results.json`` and the figures next to this file. Nothing is measured:
the hardware and the model profiles come from the H100 SXM spec sheet and the model's FLOPs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from partita.formats import dumps
from partita.models.api import describe_model
from partita.simulator.search.engine import SearchProblem
from partita.simulator.search.planner import plan_search
from partita.simulator.search.space import SearchSpace
from partita.simulator.specsheet import (
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)
from partita.simulator.whatif import Study

HERE = Path(__file__).resolve().parent
WORLD_SIZES = (64, 128, 256)
GLOBAL_BATCH = 512  # sequences of 4,096 tokens: 2M tokens per iteration
SEQ = 4096
MEMORY_GIB = 80
BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0)
GIB = 2**30


def _describe(plan_layers: tuple) -> str:  # type: ignore[type-arg]
    kinds: dict[str, int] = {}
    for layer in plan_layers:
        key = f"tp{layer.tp}" + (f"-{layer.sp}" if layer.sp != "none" else "") + f"-{layer.dp}"
        key += f"-ckpt-{layer.ckpt}" if layer.ckpt != "none" else ""
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{count}x {key}" for key, count in kinds.items())


def search_each_world(model, base_spec):  # type: ignore[no-untyped-def]
    rows, plans = [], []
    for world in WORLD_SIZES:
        spec = base_spec.with_changes(num_nodes=world // base_spec.devices_per_node)
        problem = SearchProblem(
            hardware=hardware_profile_from_spec(spec),
            model_profile=model_profile_from_description(model, spec, dtype="bf16"),
            model=model,
            world_size=world,
            memory_bytes=MEMORY_GIB * GIB,
            global_batch=GLOBAL_BATCH,
            space=SearchSpace(name="full"),
            precision="bf16",
        )
        result = plan_search(problem)
        best = result.best
        row = {
            "world_size": world,
            "best": {
                "iteration_time_s": best.iteration_time_s,
                "tokens_per_s_per_gpu": GLOBAL_BATCH * SEQ / best.iteration_time_s / world,
                "peak_memory_gib": max(best.peak_memory_bytes) / GIB,
                "pipeline": f"{best.plan.pipeline.degree} stages, {best.plan.pipeline.schedule}",
                "micro_batches": best.plan.num_micro_batches,
                "layers": _describe(best.plan.layers),
            },
            "baselines": {
                name: None
                if candidate is None
                else {
                    "iteration_time_s": candidate.iteration_time_s,
                    "tokens_per_s_per_gpu": GLOBAL_BATCH * SEQ / candidate.iteration_time_s / world,
                    "peak_memory_gib": max(candidate.peak_memory_bytes) / GIB,
                }
                for name, candidate in result.baselines.items()
            },
            "search_s": result.elapsed_s,
            "considered": result.considered,
        }
        rows.append(row)
        print(
            f"{world:4d} GPUs: {row['best']['tokens_per_s_per_gpu']:8.0f} tokens/s/GPU, "
            f"{row['best']['pipeline']}, {row['best']['layers']} (search {result.elapsed_s:.1f} s)",
            file=sys.stderr,
        )
        (HERE / f"plan_{world}.json").write_text(dumps(best.plan))
        plans.append(best.plan)
    return rows, plans


def network_sensitivity(plans, model, base_spec):  # type: ignore[no-untyped-def]
    """Each world size's searched plan under a slower and a faster inter-node network."""
    points = []
    for plan in plans:
        spec = base_spec.with_changes(num_nodes=plan.world_size // base_spec.devices_per_node)
        study = Study(plan=plan, models=[model], cluster=spec, dtype="bf16")
        points += study.run({"inter_bandwidth_x": BANDWIDTH_FACTORS})
    out = []
    for point in points:
        entry = {"settings": point.settings, "world_size": point.world_size, "error": point.error}
        if point.prediction is not None:
            p = point.prediction
            entry |= {
                "iteration_time_s": p.iteration_time_s,
                "tokens_per_s_per_gpu": GLOBAL_BATCH * SEQ / p.iteration_time_s / point.world_size,
                "peak_memory_gib": p.peak_memory_bytes / GIB,
            }
        out.append(entry)
    return out


def plot(rows, scaled) -> None:  # type: ignore[no-untyped-def]
    fig, ax = plt.subplots(figsize=(7, 4))
    worlds = [r["world_size"] for r in rows]
    ax.plot(worlds, [r["best"]["tokens_per_s_per_gpu"] for r in rows], "o-", label="searched")
    for name in ("uniform", "3d", "zero3", "dp"):
        values = [
            r["baselines"][name]["tokens_per_s_per_gpu"] if r["baselines"][name] else None
            for r in rows
        ]
        pts = [(w, v) for w, v in zip(worlds, values, strict=True) if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "s--", label=f"best {name} plan")
    ax.set_xscale("log", base=2)
    ax.set_xticks(worlds, [str(w) for w in worlds])
    ax.set_xlabel("H100 GPUs")
    ax.set_ylabel("tokens / s / GPU (predicted)")
    ax.set_title(f"llama2-70b, seq {SEQ}, global batch {GLOBAL_BATCH}, 80 GiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "searched_vs_baselines.png", dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    for factor in BANDWIDTH_FACTORS:
        pts = [
            (p["world_size"], p["tokens_per_s_per_gpu"])
            for p in scaled
            if p["settings"].get("inter_bandwidth_x") == factor and p["error"] is None
        ]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=f"inter-node bandwidth x{factor:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(WORLD_SIZES), [str(w) for w in WORLD_SIZES])
    ax.set_xlabel("H100 GPUs (each with its own searched plan)")
    ax.set_ylabel("tokens / s / GPU (predicted)")
    ax.set_title("The searched plans on a slower or faster inter-node network")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "network_sensitivity.png", dpi=120)


def main() -> int:
    model = describe_model("llama2-70b", seq_len=SEQ)
    base_spec = load_cluster_spec("h100-sxm")
    rows, plans = search_each_world(model, base_spec)
    scaled = network_sensitivity(plans, model, base_spec)
    (HERE / "results.json").write_text(
        json.dumps({"searched": rows, "network_sensitivity": scaled}, indent=2) + "\n"
    )
    plot(rows, scaled)
    print(f"wrote {HERE}/results.json and figures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Galvatron's own llama2-7b plan, simulated next to Partita's (docs/whatif.md, last section).

Everything comes from Galvatron's repository: the llama2-7b profiles it ships (hardware and
model, bf16, sequence 2048, 1 node x 8 GPUs; packages/profiler/tests/galvatron_fixtures/
shipped/llama2-7b) and the plan its search wrote from them
(galvatron_config_llama2-7b_1nodes_8gpus_per_node_36GB_bf16.json; packages/simulator/tests/
galvatron_strategy_fixtures). The script imports both into Partita, simulates Galvatron's plan,
searches Partita's plan for the same 8 devices, global batch (16) and memory budget (36 GiB per
device, from the file name), and prints the table of docs/whatif.md. Torch-free; run from the
repository root with the packages installed:

    python docs/whatif/galvatron_plan.py
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from partita.formats import Plan, VocabStrategy
from partita.formats.architectures import describe_config, presets
from partita.profiler.galvatron import ImportOptions, import_directory
from partita.simulator.interop.galvatron import (
    export_strategy,
    parse_file_name,
    read_strategy,
    run_settings,
    unsupported,
)
from partita.simulator.plan_command import search_problem
from partita.simulator.profile_inputs import Profiles
from partita.simulator.result import SimulationResult
from partita.simulator.search.planner import plan_search
from partita.simulator.search.space import SearchSpace
from partita.simulator.simulation import simulate

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "packages/profiler/tests/galvatron_fixtures/shipped/llama2-7b"
STRATEGY = (
    ROOT / "packages/simulator/tests/galvatron_strategy_fixtures"
    / "galvatron_config_llama2-7b_1nodes_8gpus_per_node_36GB_bf16.json"
)  # fmt: skip
SEQ = 2048
GIB = 2**30


def describe(plan: Plan) -> str:
    """One line: pipeline, micro-batches, then each distinct layer strategy with its count."""
    counts = Counter(plan.layers)
    layers = "; ".join(
        f"{n}x tp{x.tp}"
        + (f" {x.sp}" if x.sp != "none" else "")
        + f" {x.dp}"
        + (f" ckpt {x.ckpt}" if x.ckpt != "none" else "")
        for x, n in counts.most_common()
    )
    vocab = plan.vocab
    return (
        f"pp{plan.pipeline.degree} {plan.pipeline.schedule}, {plan.num_micro_batches} "
        f"micro-batch(es); {layers}; vocab tp{vocab.tp}{' sp' if vocab.sp else ''} {vocab.dp}"
    )


def row(label: str, plan: Plan, result: SimulationResult) -> dict[str, object]:
    seconds = result.iteration_time_s
    return {
        "plan": label,
        "strategy": describe(plan),
        "iteration_s": seconds,
        "peak_gib_per_stage": [peak / GIB for peak in result.peak_memory_bytes],
        "samples_per_s": result.throughput_samples_per_s,
        "tokens_per_s_per_gpu": plan.global_batch_size * SEQ / seconds / plan.world_size,
        "galvatron_can_run": not unsupported(plan),
    }


def trim_recompute(
    plan: Plan, simulated: Callable[[Plan], SimulationResult], budget_bytes: float
) -> Plan:
    """``plan`` with recompute turned off block by block, the last recomputed first, while the
    simulator still finds the peak within ``budget_bytes``: how close the search came."""
    while True:
        recomputed = [i for i, x in enumerate(plan.layers) if x.ckpt != "none"]
        if not recomputed:
            return plan
        layers = list(plan.layers)
        layers[recomputed[-1]] = replace(layers[recomputed[-1]], ckpt="none")
        candidate = replace(plan, layers=tuple(layers))
        if max(simulated(candidate).peak_memory_bytes) > budget_bytes:
            return plan
        plan = candidate


def main() -> None:
    report = import_directory(PROFILES, ImportOptions())
    if report.errors or report.hardware is None or report.model is None:
        raise SystemExit("profile import failed: " + "; ".join(report.errors))
    hardware, model_profile = report.hardware, report.model
    model = describe_config(presets()["llama2-7b"], seq_len=SEQ, name="llama2-7b")
    named = parse_file_name(STRATEGY.name)
    assert named.world_size is not None and named.memory_gb is not None
    imported = read_strategy(json.loads(STRATEGY.read_text()), model, source=STRATEGY.name)
    galvatron = imported.plan

    def simulated(plan: Plan) -> SimulationResult:
        return simulate(
            plan, hardware=hardware, model_profile=model_profile, model=model, record_events=False
        )

    rows = [row("Galvatron's searched plan", galvatron, simulated(galvatron))]
    # The other reading of vtp 2 with vsp 1: a vocabulary split over 2 with Megatron-SP.
    literal = replace(galvatron, vocab=VocabStrategy(tp=2, sp=True, dp=galvatron.vocab.dp))
    rows.append(
        row("Galvatron's plan, vocab read as tp 2 Megatron-SP", literal, simulated(literal))
    )
    profiles = Profiles(hardware, model_profile, origin="Galvatron's shipped llama2-7b profiles")
    searches = (
        ("Partita's search", SearchSpace(name="full")),
        # What Galvatron's runtime can run: its two schedules, whole-layer recompute only.
        (
            "Partita's search, Galvatron's schedules and recompute",
            SearchSpace(name="full", schedules=("gpipe", "1f1b"), recompute=("none", "full")),
        ),
    )
    exported: dict[str, object] = {}
    settings: dict[str, object] = {}
    for label, space in searches:
        problem = search_problem(
            model=model,
            profiles=profiles,
            world_size=named.world_size,
            global_batch=galvatron.global_batch_size,
            memory_gb=named.memory_gb,
            precision=galvatron.precision,
            space=space,
        )
        best = plan_search(problem, baselines=False).best.plan
        best = replace(best, predictions=None)
        if not exported:
            # What the vocabulary choice alone is worth: Galvatron's blocks, Partita's vocab.
            mixed = replace(galvatron, vocab=best.vocab)
            rows.append(row("Galvatron's blocks, Partita's vocab", mixed, simulated(mixed)))
        rows.append(row(label, best, simulated(best)))
        if not exported:
            trimmed = trim_recompute(best, simulated, named.memory_gb * GIB)
            rows.append(row(f"{label}, recompute trimmed by hand", trimmed, simulated(trimmed)))
        if not unsupported(best) and not exported:
            exported = export_strategy(best, model)
            settings = run_settings(best)

    print("notes on the imported plan:")
    for note in imported.notes:
        print(f"- {note}")
    print("profile import notes:")
    for note in report.notes:
        print(f"- {note}")
    print()
    print("| plan | strategy | iteration | peak memory per stage | samples/s | tokens/s/GPU |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        peaks = ", ".join(f"{p:.1f}" for p in r["peak_gib_per_stage"])  # type: ignore[attr-defined]
        print(
            f"| {r['plan']} | {r['strategy']} | {r['iteration_s']:.3f} s | {peaks} GiB | "
            f"{r['samples_per_s']:.2f} | {r['tokens_per_s_per_gpu']:.0f} |"
        )
    print()
    for r in rows:
        print(f"{r['plan']}: Galvatron can run it: {r['galvatron_can_run']}")
    if exported:
        print()
        print("the first Partita plan Galvatron can run, as Galvatron's strategy file:")
        print(json.dumps(exported, indent=4))
        print(f"with the run arguments {settings}")


if __name__ == "__main__":
    main()

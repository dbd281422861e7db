"""The pipeline-schedule study behind docs/whatif.md: what interleaved 1F1B and ZB-H1 buy over
1F1B, simulated from spec sheets alone (torch-free).

Run from the repository root with the packages installed (``nox -s demo`` installs them):

    python docs/whatif/schedules.py

It writes ``docs/whatif/schedules.json`` and prints the tables of docs/whatif.md:

1. llama2-70b (4,096 tokens) on 64 to 512 H100 SXM, the Megatron-style plan tp 8 (Megatron-SP),
   pp 8, ZeRO-1, full recompute, micro-batch 1, global batch 256 sequences: the same plan
   under 1F1B, ZB-H1 and interleaved 1F1B with 2 and 5 chunks per rank;
2. TorchTitan's published Llama 3.1 405B run (benchmarks/llama3_h100_202412_torchtitan.md,
   Table 5: 512 H100, FSDP 8, TP 8, PP 8, local batch 32, global batch 256, full activation
   checkpointing; 1F1B 100 tokens/s per GPU, interleaved 1F1B 128, +28%) priced the same way.
   Its FSDP under a pipeline keeps parameters gathered between micro-batches, so it is priced
   as ZeRO-2; the published runs used torch.compile, Float8 and async TP, which the spec-sheet
   model does not price, so only the ratio between schedules is compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from partita.formats.architectures import describe_config, presets
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)
from partita.simulator.uniform_plan import uniform_plan

HERE = Path(__file__).resolve().parent
GIB = 2**30
# (label, schedule, chunks per rank)
SCHEDULES = (
    ("1F1B", "1f1b", 1),
    ("ZB-H1", "zb-h1", 1),
    ("interleaved, 2 chunks", "interleaved-1f1b", 2),
    ("interleaved, 5 chunks", "interleaved-1f1b", 5),
)
TORCHTITAN_405B = {"1F1B": 100, "interleaved": 128}  # tokens/s per GPU, Table 5


def _price(model, spec, strategy: str, *, world: int, global_batch: int):  # type: ignore[no-untyped-def]
    hardware = hardware_profile_from_spec(spec)
    profile = model_profile_from_description(
        model, spec, dtype="bf16", tp_degrees=(8,), micro_batches=(1, 2)
    )
    plan = uniform_plan(
        strategy, model, world_size=world, global_batch=global_batch, precision="bf16"
    )
    result = simulate(
        plan, hardware=hardware, model_profile=profile, model=model, record_events=False
    )
    return plan, result


def schedule_rows(model, base_spec, *, worlds, strategy: str, global_batch: int, seq: int):  # type: ignore[no-untyped-def]
    rows = []
    for world in worlds:
        spec = base_spec.with_changes(num_nodes=world // base_spec.devices_per_node)
        baseline = None
        for label, schedule, chunks in SCHEDULES:
            text = f"{strategy},schedule={schedule},chunks={chunks}"
            plan, result = _price(model, spec, text, world=world, global_batch=global_batch)
            seconds = result.iteration_time_s
            baseline = baseline or seconds
            rows.append(
                {
                    "world_size": world,
                    "schedule": label,
                    "micro_batches": plan.num_micro_batches,
                    "iteration_s": seconds,
                    "tokens_per_s_per_gpu": global_batch * seq / seconds / world,
                    "gain_over_1f1b": baseline / seconds - 1.0,
                    "bubble": max(s.bubble_s for s in result.stages) / seconds,
                    "peak_memory_gib": max(result.peak_memory_bytes) / GIB,
                }
            )
    return rows


def main() -> None:
    h100 = load_cluster_spec("h100-sxm")
    llama2 = describe_config(presets()["llama2-70b"], seq_len=4096, name="llama2-70b")
    llama2_rows = schedule_rows(
        llama2,
        h100,
        worlds=(64, 128, 256, 512),
        strategy="tp=8,pp=8,sp=megatron,dp=zero1,ckpt=full,mb=1",
        global_batch=256,
        seq=4096,
    )
    # TorchTitan's 405B: 126 layers (chunks of 2 and 5 per rank leave uneven stages, as
    # any split of 126 layers over 8 ranks does); its H100s had 96 GB at 500 W.
    llama405 = describe_config(presets()["llama3-405b"], seq_len=8192, name="llama3-405b")
    h100_96 = h100.with_changes(  # the Grand Teton H100s of the TorchTitan runs
        name="h100-96g-hbm2e-500w", memory_bytes=96 * 10**9, memory_bandwidth_bytes_per_s=2.4e12
    )
    titan_rows = schedule_rows(
        llama405,
        h100_96,
        worlds=(512,),
        strategy="tp=8,pp=8,sp=megatron,dp=zero2,ckpt=full,mb=1",
        global_batch=256,
        seq=8192,
    )
    out = {
        "llama2-70b": llama2_rows,
        "llama3-405b-torchtitan-table5": titan_rows,
        "published_405b_tokens_per_s_per_gpu": TORCHTITAN_405B,
    }
    (HERE / "schedules.json").write_text(json.dumps(out, indent=1) + "\n")
    print(
        "| GPUs | schedule | micro-batches | iteration | tokens/s/GPU | vs 1F1B | bubble | peak |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in llama2_rows + titan_rows:
        print(
            f"| {row['world_size']} | {row['schedule']} | {row['micro_batches']} | "
            f"{row['iteration_s']:.2f} s | {row['tokens_per_s_per_gpu']:.0f} | "
            f"{row['gain_over_1f1b']:+.1%} | {row['bubble']:.1%} | "
            f"{row['peak_memory_gib']:.1f} GiB |"
        )


if __name__ == "__main__":
    main()

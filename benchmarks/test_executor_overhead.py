"""Partita's training step against a plain PyTorch loop on one rank, same model and data.

Target: Partita's median step time (its liveness barrier included) <= 1.05 x the plain
loop's; the two alternate step by step in one process so that machine noise hits both alike.
"""

from __future__ import annotations

import socket
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from partita.executor.trainer import Trainer, TrainSettings, create_groups
from partita.formats import LayerStrategy, PipelineConfig, Plan
from partita.models.api import build_model

STEPS, BATCH, TARGET = 40, 8, 1.05


def _plan() -> Plan:
    return Plan(
        world_size=1,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=BATCH,
        num_micro_batches=1,
        pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(4,)),
        layers=tuple(LayerStrategy() for _ in range(4)),
    )


def _interleaved(trainer: Trainer) -> tuple[list[float], list[float]]:
    """Alternate a plain step and a Partita step, so machine noise hits both alike."""
    model = build_model("gpt-tiny", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    plain, ours = [], []
    for step in range(STEPS):
        batch = trainer.global_batch(step)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer._all_ranks_alive()
        trainer._timed_step(batch)
        ours.append(time.perf_counter() - start)
    return plain[2:], ours[2:]  # both warm up


def test_one_rank_overhead(benchmark) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=60),
    )
    try:
        plan = _plan()
        groups = create_groups(plan, "gpt-tiny", rank=0, device=torch.device("cpu"))
        trainer = Trainer(
            plan=plan, source="gpt-tiny", settings=TrainSettings(steps=STEPS), groups=groups
        )
        plain, ours = benchmark.pedantic(_interleaved, args=(trainer,), rounds=1, iterations=1)
        ratio = statistics.median(ours) / statistics.median(plain)
        benchmark.extra_info["partita_over_plain"] = round(ratio, 3)
        assert ratio <= TARGET, f"Partita step {ratio:.3f} x plain (target <= {TARGET})"
    finally:
        dist.destroy_process_group()

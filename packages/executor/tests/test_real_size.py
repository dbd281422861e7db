"""Real-size models start: each rank builds only its shard (model on the meta device, shards
materialised where they live), shown on torch's fake process group, one rank per process.

- llama2-70b (69B parameters, 276 GB in fp32) under tp 8 x pp 8 on 64 ranks: the first and
  the last stage's rank 0;
- llama2-7b under ZeRO-3 on 8 ranks (every layer FSDP-sharded 8 ways): rank 0.

Each rank's parameter bytes must be its analytic share (the stage's parameters over tp, and
over dp under ZeRO-3) within 5%, and the process's peak resident memory (interpreter, torch and
transformers included) under twice that: no whole-model, whole-stage or whole-tensor copy of a
large parameter is ever made (a whole fp32 llama2-70b layer is 3.5 GB, the tp-8 stage 4.3 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy, dumps
from partita.models.api import describe_model

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 600


def _plan(layers: int, *, world: int, tp: int, pp: int, dp: str) -> Plan:
    return Plan(
        world_size=world,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=world // tp // pp,
        num_micro_batches=1,
        pipeline=PipelineConfig(
            degree=pp, schedule="1f1b", stage_num_layers=tuple(layers // pp for _ in range(pp))
        ),
        layers=tuple(LayerStrategy(tp=tp, dp=dp) for _ in range(layers)),  # type: ignore[arg-type]
        vocab=VocabStrategy(tp=tp, dp=dp),  # type: ignore[arg-type]
    )


def _rank(model: str, plan: Plan, rank: int, tmp_path: Path) -> dict:
    plan_file = tmp_path / f"plan-{rank}.json"
    plan_file.write_text(dumps(plan))
    done = subprocess.run(
        [sys.executable, str(HERE / "real_size_worker.py"), model, str(plan_file), str(rank)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _share(model: str, plan: Plan, layers: list[int], *, shards: int) -> float:
    """fp32 bytes of ``layers`` (the model's layer indices) over ``shards``."""
    description = describe_model(model)
    return sum(description.layers[i].params for i in layers) * 4 / shards


@pytest.mark.parametrize("rank", [0, 63])
def test_llama2_70b_under_tp8_pp8_materialises_only_each_ranks_shard(
    tmp_path: Path, rank: int
) -> None:
    plan = _plan(80, world=64, tp=8, pp=8, dp="ddp")
    held = _rank("llama2-70b", plan, rank, tmp_path)
    assert held["stage"] == (0 if rank == 0 else 7)
    share = _share("llama2-70b", plan, held["layers"], shards=8)
    assert held["parameter_bytes"] == pytest.approx(share, rel=0.05)
    assert held["peak_rss_bytes"] < 2 * share, held


def test_llama2_7b_under_zero3_on_8_ranks_materialises_only_each_ranks_shard(
    tmp_path: Path,
) -> None:
    plan = _plan(32, world=8, tp=1, pp=1, dp="zero3")
    held = _rank("llama2-7b", plan, 0, tmp_path)
    share = _share("llama2-7b", plan, held["layers"], shards=8)
    assert held["parameter_bytes"] == pytest.approx(share, rel=0.05)
    assert held["peak_rss_bytes"] < 2 * share, held

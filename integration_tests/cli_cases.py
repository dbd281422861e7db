"""End-to-end CLI cases for ``test_cli_cases.py``: what to run, not how.

Each case trains a tiny model for a few steps with ``partita train`` under a plan written here,
or under the plan ``partita plan`` searches from profiles that ``partita profile`` measured.
``nodes`` > 1 runs that many torchrun agents on 127.0.0.1 (c10d rendezvous), ``nproc``
processes each. ``needs_cuda`` cases run NCCL on GPUs and are skipped elsewhere; the others
hide the GPUs so that they run gloo on CPU wherever they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy

MODEL = "gpt-tiny"  # 4 blocks, 0.2 M parameters
NUM_LAYERS = 4
GLOBAL_BATCH = 8
STEPS = 3


@dataclass(frozen=True)
class Search:
    """Search settings: ``partita plan --space SPACE --memory-gb X --global-batch B``."""

    space: str
    memory_gb: float
    global_batch: int


@dataclass(frozen=True)
class CliCase:
    name: str
    nproc: int  # processes per node
    plan: Plan | Search
    nodes: int = 1
    model: str = MODEL
    steps: int = STEPS
    data: Literal["synthetic", "sample-text"] = "synthetic"
    needs_cuda: bool = False
    compare_losses: bool = True  # against one process on the same model, seed, data and batch

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc

    @property
    def global_batch(self) -> int:
        if isinstance(self.plan, Search):
            return self.plan.global_batch
        return self.plan.global_batch_size


def uniform_plan(
    *,
    world: int,
    strategy: LayerStrategy,
    vocab: VocabStrategy | None = None,
    pp: int = 1,
    schedule: Literal["gpipe", "1f1b"] = "gpipe",
    micro_batches: int = 1,
    global_batch: int = GLOBAL_BATCH,
) -> Plan:
    """Every block the same strategy; the vocab follows it unless given."""
    if vocab is None:
        vocab = VocabStrategy(tp=strategy.tp if strategy.sp == "none" else 1, dp=strategy.dp)
    return Plan(
        world_size=world,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=global_batch,
        num_micro_batches=micro_batches,
        pipeline=PipelineConfig(
            degree=pp, schedule=schedule, stage_num_layers=(NUM_LAYERS // pp,) * pp
        ),
        layers=(strategy,) * NUM_LAYERS,
        vocab=vocab,
    )


def one_process_plan(*, num_layers: int, global_batch: int) -> Plan:
    """The reference: the whole batch on one process, nothing split."""
    return Plan(
        world_size=1,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=global_batch,
        num_micro_batches=1,
        pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(num_layers,)),
        layers=(LayerStrategy(),) * num_layers,
    )


_LAYER_WISE = Plan(
    world_size=2,
    mesh_axis_order=("pp", "dp", "tp"),  # several tp degrees need this order
    global_batch_size=GLOBAL_BATCH,
    num_micro_batches=1,
    pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(NUM_LAYERS,)),
    layers=(
        LayerStrategy(tp=2, sp="megatron", dp="ddp", ckpt="full"),
        LayerStrategy(tp=1, dp="zero1"),
        LayerStrategy(tp=2, sp="none", dp="zero3"),
        LayerStrategy(tp=1, dp="zero2", ckpt="full"),
    ),
    vocab=VocabStrategy(tp=2, dp="ddp"),
)

CASES: tuple[CliCase, ...] = (
    CliCase(
        name="searched-plan-2proc",  # profile hardware + model -> plan -> train
        nproc=2,
        plan=Search(space="full", memory_gb=1.0, global_batch=GLOBAL_BATCH),
    ),
    CliCase(
        name="tp2-megatron-sp-2proc",
        nproc=2,
        plan=uniform_plan(world=2, strategy=LayerStrategy(tp=2, sp="megatron")),
    ),
    CliCase(
        name="zero3-2proc",
        nproc=2,
        plan=uniform_plan(world=2, strategy=LayerStrategy(dp="zero3")),
    ),
    CliCase(
        name="pp2-1f1b-x4-2proc-text",
        nproc=2,
        plan=uniform_plan(
            world=2, strategy=LayerStrategy(), pp=2, schedule="1f1b", micro_batches=4
        ),
        data="sample-text",
    ),
    CliCase(name="layer-wise-tp-dp-per-layer-2proc", nproc=2, plan=_LAYER_WISE),
    CliCase(
        name="2nodes-x2proc-tp2-zero1-loopback",
        nproc=2,
        nodes=2,
        plan=uniform_plan(world=4, strategy=LayerStrategy(tp=2, sp="megatron", dp="zero1")),
    ),
    CliCase(
        name="nccl-tp2-2gpu",
        nproc=2,
        plan=uniform_plan(world=2, strategy=LayerStrategy(tp=2)),
        needs_cuda=True,
    ),
)

"""The process groups a plan needs, derived once from the plan and passed explicitly.

Ranks are laid out by the plan's ``mesh_axis_order`` (outermost first). For a layer whose
model-parallel group has ``tp`` ranks, a stage's devices form a ``dp x tp`` grid; each rank
belongs to one tensor-parallel group and one data-parallel group per distinct ``tp``. Every
rank creates every group in the same order (torch.distributed requires it); the groups are
cached here, never kept in module globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from partita.formats import Plan


@dataclass(frozen=True)
class LayerGroups:
    tp: dist.ProcessGroup
    dp: dist.ProcessGroup
    dp_mesh: DeviceMesh  # 1-D mesh over ``dp``, for FSDP
    tp_size: int
    dp_size: int
    tp_rank: int
    dp_rank: int


def rank_grid(plan: Plan, tp: int) -> list[list[list[int]]]:
    """``grid[stage][dp_index][tp_index]`` -> global rank, following ``mesh_axis_order``."""
    sizes = {"pp": plan.pipeline.degree, "dp": plan.dp_degree(tp), "tp": tp}
    order = list(plan.mesh_axis_order)
    strides = {}
    stride = 1
    for axis in reversed(order):
        strides[axis] = stride
        stride *= sizes[axis]
    return [
        [
            [s * strides["pp"] + d * strides["dp"] + t * strides["tp"] for t in range(tp)]
            for d in range(sizes["dp"])
        ]
        for s in range(sizes["pp"])
    ]


@dataclass
class ParallelGroups:
    plan: Plan
    rank: int
    device_type: str
    _cache: dict[int, LayerGroups] = field(default_factory=dict)

    def for_tp(self, tp: int) -> LayerGroups:
        """The groups of layers with tensor-parallel degree ``tp`` (created on first use,
        collectively: every rank must ask for the same degrees in the same order)."""
        if tp not in self._cache:
            self._cache[tp] = self._create(tp)
        return self._cache[tp]

    def _create(self, tp: int) -> LayerGroups:
        grid = rank_grid(self.plan, tp)
        mine: dict[str, object] = {}
        for stage in grid:
            for dp_index, row in enumerate(stage):
                group = dist.new_group(row)
                if self.rank in row:
                    mine.update(tp=group, tp_rank=row.index(self.rank), dp_index=dp_index)
            for tp_index in range(tp):
                column = [row[tp_index] for row in stage]
                group = dist.new_group(column)
                if self.rank in column:
                    mine.update(dp=group, dp_ranks=column)
        dp_ranks: list[int] = mine["dp_ranks"]  # type: ignore[assignment]
        mesh = DeviceMesh.from_group(mine["dp"], self.device_type, mesh=dp_ranks)  # type: ignore[arg-type]
        return LayerGroups(
            tp=mine["tp"],  # type: ignore[arg-type]
            dp=mine["dp"],  # type: ignore[arg-type]
            dp_mesh=mesh,
            tp_size=tp,
            dp_size=len(dp_ranks),
            tp_rank=mine["tp_rank"],  # type: ignore[arg-type]
            dp_rank=mine["dp_index"],  # type: ignore[arg-type]
        )

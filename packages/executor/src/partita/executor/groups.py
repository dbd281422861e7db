"""Every process group a plan needs, created in one place and passed explicitly.

Ranks are laid out by the plan's ``mesh_axis_order`` (outermost first). For each distinct
tensor-parallel degree ``tp`` of the plan's layers, the world is a named ``pp x dp x tp``
:class:`DeviceMesh` (axes in the plan's order); a layer's tensor- and data-parallel groups are
that mesh's ``tp`` and ``dp`` axes. Besides those, :class:`ParallelGroups` creates

- the sub-groups that move a batch slice between two nested degrees (``layout.redistribute``),
- the groups of ranks holding a copy of a vocabulary table tied across pipeline stages,
- ``world``: every rank, for the step's barriers, the loss and the watchdog's checks, so no
  collective relies on torch's implicit default group,

and knows this rank's pipeline stage and its neighbours. torch.distributed requires every
rank to create every group, in the same order: :meth:`ParallelGroups.create` does so once,
up front, for everything the plan needs; nothing is created later and nothing is kept in
module globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from partita.formats import Plan


@dataclass(frozen=True)
class LayerGroups:
    """The groups of layers with one tensor-parallel degree, as this rank sees them."""

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


def stage_ranks(plan: Plan, tp: int) -> list[list[int]]:
    """Each stage's ranks in local order (``dp``-major, ``tp``-minor)."""
    return [[r for row in stage for r in row] for stage in rank_grid(plan, tp)]


@dataclass
class ParallelGroups:
    """The groups of ``plan`` on ``rank``; build it with :meth:`create` (collective)."""

    plan: Plan
    rank: int
    device_type: str
    world: dist.ProcessGroup
    meshes: dict[int, DeviceMesh] = field(default_factory=dict)  # named pp x dp x tp, by tp
    _layers: dict[int, LayerGroups] = field(default_factory=dict)
    _sub: dict[tuple[int, int], dist.ProcessGroup] = field(default_factory=dict)
    _tied: dict[tuple[int, ...], dist.ProcessGroup] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        plan: Plan,
        *,
        rank: int,
        device_type: str,
        degrees: set[int] | None = None,
        tied_stages: list[tuple[int, ...]] | None = None,
    ) -> ParallelGroups:
        """Create every group: the mesh of each tensor-parallel degree in ``degrees`` (default:
        those of the plan's layers and vocabulary), the batch sub-groups between each pair of
        them, and one group per stage set in ``tied_stages`` (stages holding a copy of one
        tied table), all in the same order on every rank."""
        if degrees is None:
            degrees = {layer.tp for layer in plan.layers} | {plan.vocab.tp}
        world = dist.group.WORLD
        assert world is not None, "init_process_group first"
        groups = cls(plan=plan, rank=rank, device_type=device_type, world=world)
        for tp in sorted(degrees):
            groups._create_mesh(tp)
        ordered = sorted(degrees)
        for i, small in enumerate(ordered):
            for large in ordered[i + 1 :]:
                groups._create_sub(small, large)
        for holders in tied_stages or []:
            groups._create_tied(tuple(sorted(set(holders))))
        return groups

    # -- what the trainer asks -----------------------------------------------------------

    def for_tp(self, tp: int) -> LayerGroups:
        """The groups of layers with tensor-parallel degree ``tp``."""
        if tp not in self._layers:
            raise ValueError(
                f"no process groups for tp {tp}: the plan's degrees are {self.degrees}"
            )
        return self._layers[tp]

    @property
    def degrees(self) -> list[int]:
        return sorted(self._layers)

    def sub_group(self, small: int, large: int) -> dist.ProcessGroup:
        """The ranks of my tp ``large`` group sharing ``r mod small`` (``layout``'s batch moves)."""
        return self._sub[(small, large)]

    def tied_group(self, holders: tuple[int, ...]) -> dist.ProcessGroup | None:
        """The ranks with my local index on the stages ``holders`` (None unless I am on one of
        them and there are several)."""
        return self._tied.get(tuple(sorted(set(holders))))

    def stage_of(self, rank: int | None = None) -> tuple[int, int]:
        """(stage, index inside the stage) of ``rank`` (default: mine)."""
        rank = self.rank if rank is None else rank
        for stage, ranks in enumerate(stage_ranks(self.plan, self.degrees[0])):
            if rank in ranks:
                return stage, ranks.index(rank)
        raise AssertionError(f"rank {rank} is in no stage")

    def neighbours(self) -> tuple[int, int]:
        """The global ranks with my local index on the previous and next stages (-1: none)."""
        stages = stage_ranks(self.plan, self.degrees[0])
        stage, index = self.stage_of()
        prev = stages[stage - 1][index] if stage > 0 else -1
        after = stages[stage + 1][index] if stage < len(stages) - 1 else -1
        return prev, after

    # -- creation -------------------------------------------------------------------------

    def _create_mesh(self, tp: int) -> None:
        sizes = {"pp": self.plan.pipeline.degree, "dp": self.plan.dp_degree(tp), "tp": tp}
        order = tuple(self.plan.mesh_axis_order)
        world_size = dist.get_world_size(self.world)
        ranks = torch.arange(world_size).reshape([sizes[axis] for axis in order])
        mesh = DeviceMesh(self.device_type, ranks, mesh_dim_names=order)
        self.meshes[tp] = mesh
        dp_mesh = mesh["dp"]
        coordinate = mesh.get_coordinate()
        assert coordinate is not None
        at = dict(zip(order, coordinate, strict=True))
        self._layers[tp] = LayerGroups(
            tp=mesh.get_group("tp"),
            dp=mesh.get_group("dp"),
            dp_mesh=dp_mesh,
            tp_size=tp,
            dp_size=sizes["dp"],
            tp_rank=at["tp"],
            dp_rank=at["dp"],
        )

    def _create_sub(self, small: int, large: int) -> None:
        for stage in rank_grid(self.plan, large):
            for row in stage:
                for c in range(small):
                    members = row[c::small]
                    group = dist.new_group(members)
                    if self.rank in members:
                        self._sub[(small, large)] = group

    def _create_tied(self, holders: tuple[int, ...]) -> None:
        if len(holders) < 2:
            return
        stages = stage_ranks(self.plan, self.degrees[0])
        for index in range(len(stages[0])):
            members = [stages[s][index] for s in holders]
            group = dist.new_group(members)
            if self.rank in members:
                self._tied[holders] = group

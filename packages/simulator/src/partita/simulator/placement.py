"""Where a group's ranks sit: consecutive or strided, inside a node or across nodes.

Ranks are laid out by the plan's ``mesh_axis_order`` (outermost axis first): the innermost
axis holds consecutive ranks. A group along an axis has the stride of the axes inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from partita.formats import Plan

Axis = Literal["pp", "dp", "tp"]


@dataclass(frozen=True)
class GroupPlacement:
    size: int
    placement: Literal["consecutive", "strided"]
    scope: Literal["intra_node", "inter_node"]


def group_placement(
    plan: Plan, *, axis: Axis, tp: int, devices_per_node: int, num_nodes: int
) -> GroupPlacement:
    """Placement of one layer's ``axis`` group when its tensor-parallel degree is ``tp``."""
    sizes = {"pp": plan.pipeline.degree, "dp": plan.dp_degree(tp), "tp": tp}
    order = list(plan.mesh_axis_order)
    stride = 1
    for inner in order[order.index(axis) + 1 :]:
        stride *= sizes[inner]
    size = sizes[axis]
    span = (size - 1) * stride + 1
    crosses = num_nodes > 1 and span > devices_per_node
    return GroupPlacement(
        size=size,
        placement="consecutive" if stride == 1 or size == 1 else "strided",
        scope="inter_node" if crosses else "intra_node",
    )

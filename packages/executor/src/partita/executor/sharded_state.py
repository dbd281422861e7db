"""A trainer's state as pieces of whole tensors: what a checkpoint stores, whatever the plan.

Every parameter and optimizer state is named as in the one-process model (a tied table under
its first name) and located in whole-tensor coordinates: tensor parallelism cuts a parameter
into ``tp`` equal slices along one dimension, and FSDP (ZeRO-2/3) cuts a rank's slice again
along dimension 0 the way ``torch.chunk`` does. Both are contiguous cuts, so each rank's piece
is one box of the whole tensor, given by its offsets. A checkpoint written from the boxes of
one plan is read back into the boxes of any other plan (another world size, pipeline, tensor
or data-parallel layout): the reader takes, for each of its boxes, the overlapping parts of
the stored ones.

The pieces are views of the live tensors: reading a checkpoint into them sets the model and
the optimizer in place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor, Shard

from partita.models.layered import LayeredModel

MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
# AdamW's per-parameter state; ``step`` is a scalar.
ADAM_STATES = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class Piece:
    """This rank's box of a whole tensor."""

    tensor: torch.Tensor  # a view of the live tensor
    whole_shape: tuple[int, ...]
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class TrainState:
    """What a trainer holds, as the checkpoint sees it."""

    module: nn.Module  # its parameters under the one-process model's names
    shard_dims: Mapping[str, tuple[int, dist.ProcessGroup]]  # tensor-parallel cuts by name
    canonical: Mapping[str, str]  # a tied table's other names -> its first name
    optimizers: Sequence[torch.optim.Optimizer]  # those that hold the states (ZeRO's inner)
    group: dist.ProcessGroup | None = None  # every rank taking part in a checkpoint


def canonical_names(model: LayeredModel) -> dict[str, str]:
    """Each name of a tied table -> its first name (the one a checkpoint stores it under)."""
    return {name: tie.names[0] for tie in model.tied for name in tie.names}


def torch_optimizers(optimizer: object) -> list[torch.optim.Optimizer]:
    """The optimizers holding per-parameter state behind ``optimizer``: ZeRO-1's local one,
    each of a layer-wise ``Optimizers``, or the optimizer itself."""
    inner = getattr(optimizer, "optimizers", None)
    if inner is not None:
        return [o for each in inner for o in torch_optimizers(each)]
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return [optimizer.optim]
    assert isinstance(optimizer, torch.optim.Optimizer), type(optimizer)
    return [optimizer]


def parameter_names(state: TrainState) -> dict[int, str]:
    """id(parameter) -> its one-process name."""
    return {
        id(param): state.canonical.get(name, name)
        for name, param in state.module.named_parameters()
    }


def parameter_pieces(state: TrainState) -> dict[str, Piece]:
    """``model/<name>`` -> this rank's piece of every parameter it holds."""
    pieces = {}
    for name, param in state.module.named_parameters():
        piece = _piece(param, param, state.shard_dims.get(name))
        pieces[MODEL_PREFIX + state.canonical.get(name, name)] = piece
    return pieces


def _owner(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The model's parameter behind what ``optimizer`` steps (a stand-in for a DTensor's
    local shard, see ``data_parallel.LocalShardAdamW``)."""
    return getattr(optimizer, "owners", {}).get(id(param), param)


def optimizer_pieces(state: TrainState) -> dict[str, Piece]:
    """``optimizer/<name>/<state>`` -> this rank's piece of every optimizer state it holds
    (AdamW's moments have their parameter's box; ``step`` is a scalar)."""
    names = parameter_names(state)
    dims_by_id = _shard_dims_by_id(state)
    pieces = {}
    for optimizer in state.optimizers:
        for stepped, values in optimizer.state.items():
            param = _owner(optimizer, stepped)
            prefix = f"{OPTIMIZER_PREFIX}{names[id(param)]}/"
            for key, value in values.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() == 0:
                    pieces[prefix + key] = Piece(value, (), ())
                else:
                    pieces[prefix + key] = _piece(value, param, dims_by_id.get(id(param)))
    return pieces


def create_adam_states(state: TrainState, wanted: Iterable[str]) -> None:
    """Give every parameter whose states are in ``wanted`` (names as ``optimizer_pieces``
    gives them) zero AdamW states, as AdamW's first step would, so a checkpoint can be read
    into them."""
    wanted = set(wanted)
    names = parameter_names(state)
    for optimizer in state.optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                prefix = f"{OPTIMIZER_PREFIX}{names[id(_owner(optimizer, param))]}/"
                if prefix + "step" not in wanted or optimizer.state.get(param):
                    continue
                optimizer.state[param] = {
                    # AdamW keeps ``step`` as a float32 CPU scalar unless fused or capturable.
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    **{key: torch.zeros_like(param) for key in ADAM_STATES},
                }


def _shard_dims_by_id(state: TrainState) -> dict[int, tuple[int, dist.ProcessGroup]]:
    named = dict(state.module.named_parameters(remove_duplicate=False))
    return {id(named[name]): cut for name, cut in state.shard_dims.items() if name in named}


def _piece(
    value: torch.Tensor, param: torch.Tensor, cut: tuple[int, dist.ProcessGroup] | None
) -> Piece:
    """The box of ``value``: ``param`` itself or a state shaped like it (or like its local
    shard, when an optimizer steps a DTensor's shard as a plain tensor)."""
    shape = list(param.shape)  # a DTensor's shape is its whole (tensor-parallel slice's) shape
    offsets = [0] * len(shape)
    local = value.to_local() if isinstance(value, DTensor) else value
    if isinstance(param, DTensor):
        offsets = _fsdp_offsets(param, local)
    if cut is not None:
        dim, group = cut
        offsets[dim] += dist.get_rank(group) * shape[dim]
        shape[dim] *= dist.get_world_size(group)
    return Piece(local.detach(), tuple(shape), tuple(offsets))


def _fsdp_offsets(value: DTensor, local: torch.Tensor) -> list[int]:
    """Where FSDP2's shard (``Shard(0)`` over a 1-D mesh, cut like ``torch.chunk``) starts."""
    (placement,) = value.placements
    assert isinstance(placement, Shard) and placement.dim == 0, value.placements
    rows = value.shape[0]
    size, rank = value.device_mesh.size(), value.device_mesh.get_local_rank()
    start = min(rank * math.ceil(rows / size), rows)
    assert local.shape[0] == min(math.ceil(rows / size), rows - start), (local.shape, rows)
    return [start] + [0] * (value.dim() - 1)

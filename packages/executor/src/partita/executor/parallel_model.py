"""A :class:`LayeredModel` with a plan's parallelism applied, layer by layer.

Order (each step is a small function): tensor/sequence parallelism per layer, then
activation checkpointing, then data-parallel wrapping of the whole model (in the trainer).
Between a layer whose activations are whole and one whose sequence is split (and back) the
model splits or gathers the per-token activations with autograd pairs from ``comm``.

Layers that hold a vocabulary table (the embedding, the head, and T5's bridge, which embeds the
decoder's tokens with the shared table) run under ``plan.vocab``'s tensor parallelism and
without sequence parallelism: the table is one parameter for all of them, so it is split (or
kept whole) the same way in each, and the executor gathers the sequence before such a layer and
splits it again after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.executor import comm
from partita.executor.groups import LayerGroups, ParallelGroups
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.formats import Plan
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel

VOCAB_LAYERS = ("embedding", "head")
# The sequence-parallel modes each family runs.
SEQUENCE_PARALLEL_MODES = {
    "gpt": ("megatron", "ulysses"),
    "llama": ("megatron", "ulysses"),
    "bert": ("megatron", "ulysses"),
    "vit": ("megatron", "ulysses"),
    "t5": ("megatron", "ulysses"),
    "swin": ("megatron", "ulysses"),
}
# Why a family does not run a mode.
UNSUPPORTED_SEQUENCE_PARALLEL: dict[tuple[str, str], str] = {}
# Per-token activations each sequence-parallel mode keeps split between layers. T5's
# ``encoder_hidden`` (what cross-attention reads) is split along the encoder sequence: the
# cross-attention's key and value projections gather it (Megatron) or the Ulysses all-to-all
# does. Position biases, positions and masks over keys travel whole.
SPLIT_KEYS = {
    "megatron": ("hidden", "encoder_hidden"),
    "ulysses": ("hidden", "encoder_hidden", "position_ids"),
}


@dataclass(frozen=True)
class LayerSetup:
    name: str
    tp: int
    sp: str
    dp: str
    ckpt: bool
    groups: LayerGroups


def layer_setups(model: LayeredModel, plan: Plan, groups: ParallelGroups) -> list[LayerSetup]:
    """Each layer's strategy and groups: blocks from ``plan.layers`` in order, the embedding
    and head (the layers named so, as in the model description) from ``plan.vocab``. A block
    that holds a vocabulary table keeps its data parallelism and checkpointing but takes
    ``plan.vocab``'s tensor parallelism, without sequence parallelism."""
    layouts = family_of(model.config).tp_layouts(model.config)
    blocks = iter(plan.layers)
    setups = []
    v = plan.vocab
    for name, layer_type in zip(model.layer_names, model.layer_types, strict=True):
        if name in VOCAB_LAYERS:
            setups.append(LayerSetup(name, v.tp, "none", v.dp, False, groups.for_tp(v.tp)))
            continue
        s = next(blocks)
        if layouts[layer_type].holds_vocabulary:
            setups.append(LayerSetup(name, v.tp, "none", s.dp, s.ckpt, groups.for_tp(v.tp)))
            continue
        setups.append(LayerSetup(name, s.tp, s.sp, s.dp, s.ckpt, groups.for_tp(s.tp)))
    return setups


class ParallelModel(nn.Module):
    def __init__(self, model: LayeredModel, setups: list[LayerSetup]) -> None:
        super().__init__()
        self.layers = model.layers
        self.setups = setups
        self.loss_fn = model.loss_fn
        self.record = ShardRecord()
        family = family_of(model.config)
        _check_sequence_parallel(family.name, setups)
        layouts = family.tp_layouts(model.config)
        for layer, layer_type, setup in zip(model.layers, model.layer_types, setups, strict=True):
            apply_tensor_parallel(
                layer, layouts[layer_type], group=setup.groups.tp, sp=setup.sp, record=self.record
            )
        # By name: data-parallel wrapping (FSDP) replaces the parameter objects.
        self.shard_dims: dict[str, tuple[int, dist.ProcessGroup]] = {
            name: self.record.dims[id(p)]
            for name, p in self.named_parameters(remove_duplicate=False)
            if id(p) in self.record.dims
        }
        self.partial_names = self._partial_names()

    def forward(self, batch: Activations) -> Activations:
        acts = dict(batch)
        split: LayerSetup | None = None
        for layer, setup in zip(self.layers, self.setups, strict=True):
            wants = setup if setup.sp != "none" and setup.tp > 1 else None
            if split is not None and (wants is None or _layout(wants) != _layout(split)):
                acts = _gather(acts, split)
                split = None
            if wants is not None and split is None:
                acts = _split(acts, wants)
                split = wants
            acts = checkpoint(layer, acts, use_reentrant=False) if setup.ckpt else layer(acts)
        if split is not None:
            acts = _gather(acts, split)
        return acts

    def loss(self, outputs: Activations, batch: Activations) -> torch.Tensor:
        return self.loss_fn(outputs, batch)

    def _partial_names(self) -> dict[str, dist.ProcessGroup]:
        """Whole parameters of sequence-parallel layers: their gradients sum over the group."""
        found = {}
        for index, setup in enumerate(self.setups):
            if setup.sp == "none" or setup.tp == 1:
                continue
            for name, _ in self.layers[index].named_parameters(prefix=f"layers.{index}"):
                if name not in self.shard_dims:
                    found[name] = setup.groups.tp
        return found

    def partial_gradient_params(self) -> list[tuple[nn.Parameter, dist.ProcessGroup]]:
        named = dict(self.named_parameters())
        return [(named[name], group) for name, group in self.partial_names.items() if name in named]


def _check_sequence_parallel(family: str, setups: list[LayerSetup]) -> None:
    for setup in setups:
        if setup.sp == "none" or setup.tp == 1:
            continue
        if setup.sp in SEQUENCE_PARALLEL_MODES.get(family, ()):
            continue
        reason = UNSUPPORTED_SEQUENCE_PARALLEL.get((family, setup.sp), "not supported yet")
        raise ValueError(
            f"layer {setup.name}: {setup.sp} sequence parallelism is not supported for "
            f"{family} models: {reason}"
        )


def _layout(setup: LayerSetup) -> tuple[str, int]:
    return setup.sp, setup.tp


def _split(acts: Activations, setup: LayerSetup) -> Activations:
    out = dict(acts)
    for key in SPLIT_KEYS[setup.sp]:
        if key in out:
            out[key] = comm.split_sequence(out[key], setup.groups.tp, dim=1)
    return out


def _gather(acts: Activations, setup: LayerSetup) -> Activations:
    out = dict(acts)
    for key in SPLIT_KEYS[setup.sp]:
        if key in out:
            out[key] = comm.gather_from_region(out[key], setup.groups.tp, dim=1)
    return out

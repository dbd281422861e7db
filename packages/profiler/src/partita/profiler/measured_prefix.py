"""Layers ``0..index`` of a model under one rank's tensor and sequence parallelism, run on one
batch: what the profiler's measured layer receives, in the shape and split a rank's has.

The executor's own functions shard each layer (``tensor_parallel.apply_tensor_parallel``) and
name what each sequence-parallel mode keeps split (``setups.SPLIT_KEYS``). Unlike a training
stage, every layer here sees the same batch (a measurement has no data parallelism): a tp 1
layer beside tp k ones is measured at the batch it is asked for, and the simulator scales it
to the batch slice a plan gives it. Between a layer whose activations are whole and one whose
sequence is split (and back) the activations are split or gathered with the executor's
autograd pairs.
"""

from __future__ import annotations

from torch import nn

from partita.executor import comm
from partita.executor.recompute import recompute_attention_cores, run_layer
from partita.executor.setups import SPLIT_KEYS, LayerSetup, check_sequence_parallel
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel


class MeasuredPrefix(nn.Module):
    def __init__(self, model: LayeredModel, setups: list[LayerSetup]) -> None:
        super().__init__()
        self.layers = model.layers
        self.setups = setups
        family = family_of(model.config)
        check_sequence_parallel(family.name, setups)
        layouts = family.tp_layouts(model.config)
        record = ShardRecord()
        for layer, layer_type, setup in zip(model.layers, model.layer_types, setups, strict=True):
            if setup.ckpt == "attention":  # before Ulysses wraps the core, as the executor
                recompute_attention_cores(layer)
            apply_tensor_parallel(
                layer, layouts[layer_type], group=setup.groups.tp, sp=setup.sp, record=record
            )

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
            acts = run_layer(layer, acts, setup.ckpt)
        if split is not None:
            acts = _gather(acts, split)
        return acts


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

"""One pipeline stage: the layers a rank holds, run in order with their own layouts.

The layers keep the one-process model's parameter names (``layers.<index>.…``). Between two
layers with different layouts the activations are redistributed (``layout.redistribute``);
a layer whose setup asks for checkpointing runs under ``torch.utils.checkpoint``. A stage's
output stays in its last layer's layout; the next stage's rank with the same local index
receives it and redistributes it to its first layer's layout. A whole-model plan is one
stage holding every layer.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.executor.groups import ParallelGroups
from partita.executor.layout import Layout, redistribute
from partita.executor.setups import LayerSetup
from partita.models.layered import Activations, LayeredModel


def layout_of(setup: LayerSetup) -> Layout:
    return Layout(tp=setup.tp, sp=setup.sp if setup.tp > 1 else "none", groups=setup.groups)


class StageModel(nn.Module):
    def __init__(
        self,
        model: LayeredModel,
        setups: list[LayerSetup],
        *,
        indices: list[int],
        groups: ParallelGroups,
    ) -> None:
        super().__init__()
        self.indices = indices
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in indices})
        self.setups = setups
        self.layouts = [layout_of(s) for s in setups]
        self.groups = groups
        self.loss_fn = model.loss_fn
        first = indices[0]
        self.input_layout = self.layouts[first - 1] if first > 0 else self.layouts[first]
        self.output_layout = self.layouts[indices[-1]]
        # Filled by ``parallelize``: tensor-parallel cuts by name, and the whole parameters of
        # sequence-parallel layers, whose gradients are partial sums over the tp group.
        self.shard_dims: dict[str, tuple[int, dist.ProcessGroup]] = {}
        self.partial_names: dict[str, dist.ProcessGroup] = {}

    def forward(self, acts: Activations) -> Activations:
        layout = self.input_layout
        for i in self.indices:
            acts = redistribute(acts, layout, self.layouts[i], self.groups)
            layout = self.layouts[i]
            layer = self.layers[str(i)]
            acts = (
                checkpoint(layer, acts, use_reentrant=False) if self.setups[i].ckpt else layer(acts)
            )
        return acts

    def layer_parameters(self) -> list[tuple[int, list[tuple[str, nn.Parameter]]]]:
        """Each kept layer's parameters, a parameter shared by several listed once (first)."""
        seen: set[int] = set()
        out = []
        for i in self.indices:
            params = []
            for name, p in self.layers[str(i)].named_parameters(prefix=f"layers.{i}"):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append((name, p))
            out.append((i, params))
        return out

    def shared_parameters(self) -> set[int]:
        """ids of the parameters used by more than one kept layer (a tied table)."""
        counts: dict[int, int] = {}
        for i in self.indices:
            for p in self.layers[str(i)].parameters():
                counts[id(p)] = counts.get(id(p), 0) + 1
        return {key for key, count in counts.items() if count > 1}

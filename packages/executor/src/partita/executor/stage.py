"""One pipeline stage: the layers a rank holds, run in order with their own layouts.

The layers keep the one-process model's parameter names (``layers.<index>.…``). Between two
layers with different layouts the activations are redistributed (``layout.redistribute``);
a layer whose setup asks for ``full`` or ``selective-op`` checkpointing runs under
``torch.utils.checkpoint`` (``recompute``). A chunk's output stays in its last layer's
layout; the next virtual stage's rank with the same local index receives it and redistributes
it to its first layer's layout.
A whole-model plan is one stage holding every layer.

Under an interleaved schedule a rank holds several *chunks* (virtual stages, each a run of
consecutive layers); one module holds all of them, so that parameter names, tied tables (one
parameter even where two chunks use it), tensor-parallel cuts and the FSDP root are the rank's
as before, and ``forward(acts, chunk)`` runs one chunk's layers.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from partita.executor.groups import ParallelGroups
from partita.executor.layout import Layout, redistribute
from partita.executor.recompute import run_layer
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
        chunks: list[list[int]],
        groups: ParallelGroups,
    ) -> None:
        """``chunks``: the model layers of each of this rank's virtual stages, by chunk."""
        super().__init__()
        assert all(chunks), "every chunk holds a layer"
        self.chunks = chunks
        self.indices = [i for chunk in chunks for i in chunk]
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in self.indices})
        self.setups = setups
        self.layouts = [layout_of(s) for s in setups]
        self.groups = groups
        self.loss_fn = model.loss_fn
        # A chunk receives what the layer before its first left, in that layer's layout.
        self.input_layouts = [self.layouts[max(c[0] - 1, 0)] for c in chunks]
        self.output_layouts = [self.layouts[c[-1]] for c in chunks]
        # Filled by ``parallelize``: tensor-parallel cuts by name, and the whole parameters of
        # sequence-parallel layers, whose gradients are partial sums over the tp group.
        self.shard_dims: dict[str, tuple[int, dist.ProcessGroup]] = {}
        self.partial_names: dict[str, dist.ProcessGroup] = {}

    @property
    def input_layout(self) -> Layout:
        """The first chunk's input layout (the batch's, on the first stage)."""
        return self.input_layouts[0]

    @property
    def output_layout(self) -> Layout:
        """The last chunk's output layout (the head's, on the last stage)."""
        return self.output_layouts[-1]

    def forward(self, acts: Activations, chunk: int = 0) -> Activations:
        layout = self.input_layouts[chunk]
        for i in self.chunks[chunk]:
            acts = redistribute(acts, layout, self.layouts[i], self.groups)
            layout = self.layouts[i]
            acts = run_layer(self.layers[str(i)], acts, self.setups[i].ckpt)
        return acts

    def chunk_of_layer(self) -> dict[int, int]:
        """Each kept model layer -> the chunk running it."""
        return {i: c for c, chunk in enumerate(self.chunks) for i in chunk}

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

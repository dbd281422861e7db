"""One pipeline stage of a layer-wise plan: its layers, each with its own parallelism.

Every rank builds the whole model from the seed and keeps the layers of its stage (the
embedding on the first stage, the head on the last, the blocks as ``stage_num_layers`` says),
under the single-process model's parameter names (``layers.<index>.…``). Each kept layer gets
its tensor/sequence parallelism and checkpointing; between two layers with different layouts
the activations are redistributed (``layout.redistribute``). A stage's output stays in its
last layer's layout; the next stage's rank with the same local index receives it and
redistributes it to its first layer's layout.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.executor.layout import Layout, SubGroups, redistribute
from partita.executor.parallel_model import LayerSetup, _check_sequence_parallel
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.formats import Plan
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel


def layer_stages(model: LayeredModel, plan: Plan) -> list[int]:
    """The pipeline stage of each model layer."""
    stages, block = [], 0
    last = plan.pipeline.degree - 1
    for name in model.layer_names:
        if name == "embedding":
            stages.append(0)
        elif name == "head":
            stages.append(last)
        else:
            stages.append(plan.stage_of_layer(block))
            block += 1
    return stages


def layout_of(setup: LayerSetup) -> Layout:
    return Layout(tp=setup.tp, sp=setup.sp if setup.tp > 1 else "none", groups=setup.groups)


class StageModel(nn.Module):
    def __init__(
        self,
        model: LayeredModel,
        setups: list[LayerSetup],
        *,
        stage: int,
        stages: list[int],
        sub: SubGroups,
    ) -> None:
        super().__init__()
        self.indices = [i for i, s in enumerate(stages) if s == stage]
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in self.indices})
        self.setups = setups
        self.layouts = [layout_of(s) for s in setups]
        self.sub = sub
        self.loss_fn = model.loss_fn
        first = self.indices[0]
        self.input_layout = self.layouts[first - 1] if first > 0 else self.layouts[first]
        self.output_layout = self.layouts[self.indices[-1]]
        family = family_of(model.config)
        _check_sequence_parallel(family.name, [setups[i] for i in self.indices])
        layouts = family.tp_layouts(model.config)
        self.record = ShardRecord()
        for i in self.indices:
            apply_tensor_parallel(
                model.layers[i],
                layouts[model.layer_types[i]],
                group=setups[i].groups.tp,
                sp=setups[i].sp,
                record=self.record,
            )
        self.shard_dims: dict[str, tuple[int, dist.ProcessGroup]] = {
            name: self.record.dims[id(p)]
            for name, p in self.named_parameters(remove_duplicate=False)
            if id(p) in self.record.dims
        }
        self.partial_names = self._partial_names()

    def forward(self, acts: Activations) -> Activations:
        layout = self.input_layout
        for i in self.indices:
            acts = redistribute(acts, layout, self.layouts[i], self.sub)
            layout = self.layouts[i]
            layer = self.layers[str(i)]
            acts = (
                checkpoint(layer, acts, use_reentrant=False) if self.setups[i].ckpt else layer(acts)
            )
        return acts

    def _partial_names(self) -> dict[str, dist.ProcessGroup]:
        """Whole parameters of sequence-parallel layers: their gradients sum over the group."""
        found = {}
        for i in self.indices:
            setup = self.setups[i]
            if setup.sp == "none" or setup.tp == 1:
                continue
            for name, _ in self.layers[str(i)].named_parameters(prefix=f"layers.{i}"):
                if name not in self.shard_dims:
                    found[name] = setup.groups.tp
        return found

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

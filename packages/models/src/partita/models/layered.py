"""A model as an ordered sequence of layers with a plain contract between them.

Every layer maps a dict of named tensors (:data:`Activations`) to a new such dict. The first
layer receives the batch (``input_ids``, ``pixel_values``, ...); each layer passes on whatever
later layers need (e.g. T5's encoder output for the decoder's cross-attention), so a pipeline
can cut between any two layers and ship the dict. The last layer's ``logits`` feed the loss,
which sees the original batch for its labels.

Nothing here knows about parallelism; the executor applies it layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Activations = dict[str, torch.Tensor]
LossFn = Callable[[Activations, Activations], torch.Tensor]


@dataclass(frozen=True)
class TiedParameters:
    """Parameters that are one tensor in the reference model (e.g. GPT-2's embedding and head).

    Names are ``state_dict`` keys of the :class:`LayeredModel`. In one process they share one
    ``nn.Parameter``; a pipeline that splits them must keep their gradients summed.
    """

    names: tuple[str, ...]


class LayeredModel(nn.Module):
    def __init__(
        self,
        *,
        family: str,
        layer_names: Sequence[str],
        layer_types: Sequence[str],
        layers: Sequence[nn.Module],
        loss_fn: LossFn,
        tied: Sequence[TiedParameters] = (),
        config: Any = None,
    ) -> None:
        super().__init__()
        assert len(layer_names) == len(layers) == len(layer_types)
        self.family = family
        self.layer_names = tuple(layer_names)
        self.layer_types = tuple(layer_types)
        self.layers = nn.ModuleList(layers)
        self.loss_fn = loss_fn
        self.tied = tuple(tied)
        self.config = config  # the transformers config the model was built from

    def run_layers(self, acts: Activations, start: int = 0, stop: int | None = None) -> Activations:
        """Run layers ``start`` (inclusive) to ``stop`` (exclusive) on ``acts``."""
        for layer in self.layers[start:stop]:
            acts = layer(acts)
        return acts

    def forward(self, batch: Activations) -> Activations:
        return self.run_layers(dict(batch))

    def loss(self, outputs: Activations, batch: Activations) -> torch.Tensor:
        return self.loss_fn(outputs, batch)

    def layer_index(self, name: str) -> int:
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise ValueError(f"the model has no layer named {name!r}") from None

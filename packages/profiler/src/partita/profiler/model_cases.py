"""What ``partita profile model`` measures: one case per layer type, shape and (tp, sp).

A case is the first layer of each ``(layer_type, seq_len)`` in the model description (the
keys the simulator looks profiles up by), with every tensor-parallel degree and sequence-
parallel mode the plan checks allow for it: blocks get tp 1 with sp "none" and, for each
larger degree, sp "none" and every mode the executor runs for the family (``sp_modes``)
whose dimensions it divides (formats.md §7.2); the embedding, the head and a block that
shares their vocabulary table (``vocab_parallel``: T5's decoder embedding, which the
executor and the simulator run under ``plan.vocab``) get the vocab-parallel degrees that
divide the vocabulary (or the labels), sp "none". The same rules as
``partita.simulator.specsheet.model_profile_from_description``, restated here because the
profiler does not import the simulator; the simulator offers every mode, the profiler only
those the executor can run.

Torch-free, so that the choices can be tested and listed quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from partita.formats import LayerDescription, ModelDescription

SP_MODES = ("none", "megatron", "ulysses")


@dataclass(frozen=True)
class Config:
    tp: int
    sp: str


@dataclass(frozen=True)
class LayerCase:
    index: int  # position of the measured layer in the model (and the description)
    layer: LayerDescription
    configs: tuple[Config, ...]

    @property
    def layer_type(self) -> str:
        return self.layer.layer_type


def layer_cases(
    description: ModelDescription,
    *,
    tp_degrees: Sequence[int],
    sp_modes: Sequence[str],
) -> list[LayerCase]:
    """One case per ``(layer_type, seq_len)``, in model order."""
    seen: set[tuple[str, int]] = set()
    cases = []
    for index, layer in enumerate(description.layers):
        key = (layer.layer_type, layer.seq_len)
        if key in seen:
            continue
        seen.add(key)
        configs = tuple(
            configurations(layer, description, tp_degrees=tp_degrees, sp_modes=sp_modes)
        )
        cases.append(LayerCase(index=index, layer=layer, configs=configs))
    return cases


def configurations(
    layer: LayerDescription,
    description: ModelDescription,
    *,
    tp_degrees: Sequence[int],
    sp_modes: Sequence[str],
) -> list[Config]:
    """``sp_modes``: the sequence-parallel modes the executor runs for the model's family."""
    degrees = sorted(set(tp_degrees))
    if layer.kind != "block" or layer.vocab_parallel:
        outputs = description.vocab_size or description.num_labels
        return [Config(tp, "none") for tp in degrees if outputs % tp == 0]
    found = []
    for tp in degrees:
        modes = ("none",) if tp == 1 else ("none", *(m for m in SP_MODES[1:] if m in sp_modes))
        found.extend(Config(tp, sp) for sp in modes if _divides(tp, _split_dims(layer, sp)))
    return found


def _split_dims(layer: LayerDescription, sp: str) -> tuple[int, ...]:
    """The dimensions the plan checks require tp to divide (0: not applicable)."""
    heads = (layer.num_heads, layer.num_kv_heads)
    if sp == "ulysses":
        return (*heads, layer.seq_len)
    tensor = (*heads, layer.hidden_size, layer.ffn_size)
    return (*tensor, layer.seq_len) if sp == "megatron" else tensor


def _divides(tp: int, dims: tuple[int, ...]) -> bool:
    return all(dim % tp == 0 for dim in dims if dim > 0)

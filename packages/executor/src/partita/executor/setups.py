"""Each layer's parallel setup under a plan: its tensor-parallel degree, sequence-parallel
mode, data-parallel mode, checkpointing and groups, and the pipeline stage (and virtual stage,
under an interleaved schedule) that holds it.

Layers that hold a vocabulary table (the embedding, the head, and T5's bridge, which embeds the
decoder's tokens with the shared table) run under ``plan.vocab``'s tensor parallelism and
without sequence parallelism: the table is one parameter for all of them, so it is split (or
kept whole) the same way in each.
"""

from __future__ import annotations

from dataclasses import dataclass

from partita.executor.groups import LayerGroups, ParallelGroups
from partita.formats import ModelDescription, Plan
from partita.models.families import family_of
from partita.models.layered import LayeredModel

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
    ckpt: str  # "none", "attention" or "full" (``recompute``)
    groups: LayerGroups


class _HasGroups:
    def for_tp(self, tp: int) -> LayerGroups: ...


def layer_setups(
    model: LayeredModel, plan: Plan, groups: ParallelGroups | _HasGroups
) -> list[LayerSetup]:
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
            setups.append(LayerSetup(name, v.tp, "none", v.dp, "none", groups.for_tp(v.tp)))
            continue
        s = next(blocks)
        if layouts[layer_type].holds_vocabulary:
            setups.append(LayerSetup(name, v.tp, "none", s.dp, s.ckpt, groups.for_tp(v.tp)))
            continue
        setups.append(LayerSetup(name, s.tp, s.sp, s.dp, s.ckpt, groups.for_tp(s.tp)))
    return setups


def check_sequence_parallel(family: str, setups: list[LayerSetup]) -> None:
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


def layer_virtual_stages(model: LayeredModel, plan: Plan) -> list[int]:
    """The virtual stage of each model layer: the embedding on the first, the head on the
    last, the blocks as ``stage_num_layers`` says (one virtual stage per rank unless the
    plan's ``pipeline.chunks`` is more than one)."""
    stages, block = [], 0
    last = plan.pipeline.num_virtual_stages - 1
    for name in model.layer_names:
        if name == "embedding":
            stages.append(0)
        elif name == "head":
            stages.append(last)
        else:
            stages.append(plan.virtual_stage_of_layer(block))
            block += 1
    return stages


def layer_stages(model: LayeredModel, plan: Plan) -> list[int]:
    """The pipeline stage (rank) of each model layer: the rank of its virtual stage."""
    return [plan.pipeline.rank_of_virtual_stage(s) for s in layer_virtual_stages(model, plan)]


def tied_stage_sets(model: ModelDescription, plan: Plan) -> list[tuple[int, ...]]:
    """The stages holding a copy of the model's shared vocabulary table (for
    ``ParallelGroups``): the description's ``shared_vocabulary`` layers, placed as
    :func:`layer_stages` places them."""
    if not model.shared_vocabulary:
        return []
    stages, block = {}, 0
    last = plan.pipeline.degree - 1
    for layer in model.layers:
        if layer.kind == "embedding":
            stages[layer.name] = 0
        elif layer.kind == "head":
            stages[layer.name] = last
        else:
            stages[layer.name] = plan.stage_of_layer(block)
            block += 1
    return [tuple(sorted({stages[name] for name in model.shared_vocabulary}))]

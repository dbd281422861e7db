"""Each layer's parallel setup under a plan: its tensor-parallel degree, sequence-parallel
mode, data-parallel mode, checkpointing and groups, and the pipeline stage (and virtual stage,
under an interleaved schedule) that holds it.

Layers that hold a vocabulary table (the embedding, the head, and T5's bridge, which embeds the
decoder's tokens with the shared table) run under ``plan.vocab``'s tensor parallelism: the
table is one parameter for all of them, so it is split (or kept whole) the same way in each.
The embedding and head run Megatron-SP with ``plan.vocab.sp`` (and ``vocab.tp`` > 1): the
embedding's output leaves split along the sequence, the head gathers its input
(``tensor_parallel``). T5's bridge stays without sequence parallelism (as the simulator prices
it): it takes the encoder's output whole and gives the decoder blocks whole activations, the
usual redistribution on either side.
"""

from __future__ import annotations

from dataclasses import dataclass

from partita.executor.groups import LayerGroups, ParallelGroups
from partita.formats import ModelDescription, Plan
from partita.formats.plan_checks import NO_VOCAB_SEQUENCE_PARALLEL
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
# Why a family's embedding and head cannot run sequence-parallel (``plan.vocab.sp``): their
# output and input are not per-token activations over the sequence. The others can.
UNSUPPORTED_VOCAB_SEQUENCE_PARALLEL = NO_VOCAB_SEQUENCE_PARALLEL  # the plan checks' table
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
    ckpt: str  # "none", "attention", "selective-op" or "full" (``recompute``)
    groups: LayerGroups


class _HasGroups:
    def for_tp(self, tp: int) -> LayerGroups: ...


def layer_setups(
    model: LayeredModel, plan: Plan, groups: ParallelGroups | _HasGroups
) -> list[LayerSetup]:
    """Each layer's strategy and groups: blocks from ``plan.layers`` in order, the embedding
    and head (the layers named so, as in the model description) from ``plan.vocab``. A block
    that holds a vocabulary table keeps its data parallelism and checkpointing but takes
    ``plan.vocab``'s tensor parallelism, without sequence parallelism (even under
    ``vocab.sp``, which is the embedding's and the head's)."""
    layouts = family_of(model.config).tp_layouts(model.config)
    blocks = iter(plan.layers)
    setups = []
    v = plan.vocab
    vocab_sp = vocab_sequence_parallel(plan)
    for name, layer_type in zip(model.layer_names, model.layer_types, strict=True):
        if name in VOCAB_LAYERS:
            setups.append(LayerSetup(name, v.tp, vocab_sp, v.dp, "none", groups.for_tp(v.tp)))
            continue
        s = next(blocks)
        if layouts[layer_type].holds_vocabulary:
            setups.append(LayerSetup(name, v.tp, "none", s.dp, s.ckpt, groups.for_tp(v.tp)))
            continue
        setups.append(LayerSetup(name, s.tp, s.sp, s.dp, s.ckpt, groups.for_tp(s.tp)))
    return setups


def vocab_sequence_parallel(plan: Plan) -> str:
    """The sequence-parallel mode of the embedding and head: Megatron-SP under ``vocab.sp``
    where it splits anything (``vocab.tp`` > 1), else none."""
    return "megatron" if plan.vocab.sp and plan.vocab.tp > 1 else "none"


def check_vocab_sequence_parallel(family: str, plan: Plan) -> None:
    """Refuse ``vocab.sp`` for a family whose embedding and head cannot take a sequence
    split."""
    reason = UNSUPPORTED_VOCAB_SEQUENCE_PARALLEL.get(family)
    if reason is not None and vocab_sequence_parallel(plan) != "none":
        raise ValueError(
            f"vocab.sp: {family} models have no sequence-parallel embedding and head ({reason})"
        )


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

"""Plans for the gloo suites: built for a tiny preset and validated, or drawn at random."""

from __future__ import annotations

import random

from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy, validate_plan
from partita.models.api import ModelSource, describe_model

BATCH = 8
# The LLaMA family's other model types (issue 25) beside the suite's three presets.
VARIANTS = ("mistral-tiny", "qwen2-tiny", "qwen3-tiny")
BLOCKS = {
    m: len(describe_model(m).blocks) for m in ("gpt-tiny", "llama-tiny", "t5-tiny", *VARIANTS)
}


def even_stages(blocks: int, pp: int) -> tuple[int, ...]:
    return tuple(blocks // pp + (1 if s < blocks % pp else 0) for s in range(pp))


def num_blocks(model: ModelSource) -> int:
    """The block layers of a preset (``BLOCKS``) or of any model source."""
    if isinstance(model, str) and model in BLOCKS:
        return BLOCKS[model]
    return len(describe_model(model).blocks)


def make_plan(
    model: ModelSource,
    *,
    world: int,
    pp: int = 1,
    schedule: str = "gpipe",
    micro_batches: int = 1,
    chunks: int = 1,
    layers: tuple[LayerStrategy, ...] | None = None,
    vocab: VocabStrategy | None = None,
    stages: tuple[int, ...] | None = None,
    order: tuple[str, ...] = ("pp", "dp", "tp"),
) -> Plan | None:
    """The plan, or None when it does not fit the model (``validate_plan`` refuses it).
    ``chunks``: virtual stages per rank (interleaved 1F1B); the default stages split the
    blocks evenly over the ``pp * chunks`` virtual stages."""
    blocks = num_blocks(model)
    plan = Plan(
        world_size=world,
        mesh_axis_order=order,  # type: ignore[arg-type]
        global_batch_size=BATCH,
        num_micro_batches=micro_batches,
        pipeline=PipelineConfig(
            degree=pp,
            schedule=schedule,  # type: ignore[arg-type]
            stage_num_layers=stages or even_stages(blocks, pp * chunks),
            chunks=chunks,
        ),
        layers=layers or tuple(LayerStrategy() for _ in range(blocks)),
        vocab=vocab or VocabStrategy(),
    )
    try:
        validate_plan(plan, world_size=world, model=describe_model(model))
    except ValueError:
        return None
    return plan


def uniform(
    model: str, *, world: int, layer: LayerStrategy, vocab: VocabStrategy, **kw: object
) -> Plan:
    """A valid plan with ``layer`` for every block (the caller knows it fits)."""
    plan = make_plan(
        model,
        world=world,
        layers=tuple(layer for _ in range(BLOCKS[model])),
        vocab=vocab,
        **kw,  # type: ignore[arg-type]
    )
    assert plan is not None, (model, world, layer, vocab, kw)
    return plan


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def random_plan(rng: random.Random, world: int, model: str) -> Plan:
    """A valid layer-wise plan: random stages, per-layer tp/sp/dp/ckpt, vocab strategy,
    schedule and micro-batches."""
    while True:
        blocks = BLOCKS[model]
        pp = rng.choice([p for p in _divisors(world) if p <= blocks])
        per_stage = world // pp
        cuts = sorted(rng.sample(range(1, blocks), pp - 1))
        stages = tuple(b - a for a, b in zip([0, *cuts], [*cuts, blocks], strict=True))
        layers = []
        degrees = _divisors(per_stage)
        degrees += degrees[1:]  # twice as likely to split: mixed layouts are the point
        for _ in range(blocks):
            tp = rng.choice(degrees)
            sp = rng.choice(("none", "megatron", "ulysses")) if tp > 1 else "none"
            dp = rng.choice(("ddp", "zero1", "zero2", "zero3"))
            draw = rng.random()
            ckpt = "full" if draw < 0.3 else "attention" if draw < 0.45 else "none"
            layers.append(LayerStrategy(tp=tp, sp=sp, dp=dp, ckpt=ckpt))  # type: ignore[arg-type]
        vocab = VocabStrategy(
            tp=rng.choice(degrees),
            dp=rng.choice(("ddp", "zero1", "zero2", "zero3")),  # type: ignore[arg-type]
        )
        plan = make_plan(
            model,
            world=world,
            pp=pp,
            schedule=rng.choice(("gpipe", "1f1b")),
            micro_batches=rng.choice((1, 2, 4)),
            layers=tuple(layers),
            vocab=vocab,
            stages=stages,
        )
        if plan is not None:
            return plan

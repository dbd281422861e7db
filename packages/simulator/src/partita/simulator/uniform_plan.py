"""A uniform plan from one line: ``"tp=8,pp=8,sp=megatron,ckpt=full,mb=1"``.

Published runs state one strategy for the whole model; this writes it as a plan file (every
block the same strategy, the blocks split evenly over the stages as the search splits them:
any extra ones to the middle stages, since the first and last also hold the embedding and
the head) so it can be simulated and compared with a searched plan, without listing 96
identical layers by hand.

Keys (all optional): ``tp`` (1), ``pp`` (1), ``sp`` (``none``, ``megatron``, ``ulysses``),
``dp`` (``ddp``, ``zero1``, ``zero2``, ``zero3``), ``ckpt`` (``none``, ``attention``,
``selective-op`` or ``full``; also ``false``/``true``), ``mb`` (micro-batch size per
data-parallel rank; default: one micro-batch per pipeline stage, or the whole local batch
without a pipeline),
``schedule`` (``1f1b``, ``gpipe``, ``interleaved-1f1b`` or ``zb-h1``), ``chunks`` (virtual
stages per rank under ``interleaved-1f1b``; default 2 there, else 1), ``vocab_tp``
(default: ``tp`` where it divides the vocabulary, else 1), ``vocab_dp`` (default: ``dp``).
The data-parallel degree is what the world size leaves: ``world / (tp * pp)``.
"""

from __future__ import annotations

from typing import Any

from partita.formats import (
    LayerStrategy,
    ModelDescription,
    PipelineConfig,
    Plan,
    VocabStrategy,
    validate_plan,
)
from partita.formats.common import Precision
from partita.simulator.search.partition import even_partition

_CHOICES = {
    "sp": ("none", "megatron", "ulysses"),
    "dp": ("ddp", "zero1", "zero2", "zero3"),
    "vocab_dp": ("ddp", "zero1", "zero2", "zero3"),
    "schedule": ("1f1b", "gpipe", "interleaved-1f1b", "zb-h1"),
    "ckpt": ("none", "attention", "selective-op", "full", "false", "true"),
}
_COUNTS = ("tp", "pp", "mb", "vocab_tp", "chunks")
_CKPT_SPELLINGS = {"true": "full", "false": "none"}  # as plan files before version 3


def parse_uniform(text: str) -> dict[str, Any]:
    """``key=value`` pairs separated by commas, checked; ValueError names the key."""
    settings: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise ValueError(f"--uniform: expected key=value, got {item.strip()!r}")
        if key in settings:
            raise ValueError(f"--uniform: {key} given twice")
        if key in _COUNTS:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--uniform: {key}: expected a positive integer, got {value!r}")
            settings[key] = int(value)
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                choices = ", ".join(_CHOICES[key])
                raise ValueError(f"--uniform: {key}: expected one of {choices}, got {value!r}")
            settings[key] = value
        else:
            known = ", ".join([*_COUNTS, *_CHOICES])
            raise ValueError(f"--uniform: unknown key {key!r} (known: {known})")
    return settings


def uniform_plan(
    text: str,
    model: ModelDescription,
    *,
    world_size: int,
    global_batch: int,
    precision: Precision = "fp32",
) -> Plan:
    """The plan ``text`` describes for ``model`` on ``world_size`` devices, validated."""
    settings = parse_uniform(text)
    tp, pp = settings.get("tp", 1), settings.get("pp", 1)
    if world_size % (tp * pp):
        raise ValueError(f"--uniform: tp {tp} x pp {pp} does not divide the {world_size} devices")
    dp = world_size // (tp * pp)
    blocks = len(model.blocks)
    schedule = settings.get("schedule", "1f1b")
    chunks = settings.get("chunks", 2 if schedule == "interleaved-1f1b" else 1)
    if pp * chunks > blocks:
        stages = f"pp {pp}" + (f" x chunks {chunks}" if chunks > 1 else "")
        raise ValueError(f"--uniform: {stages} is more stages than the model's {blocks} blocks")
    if global_batch % dp:
        raise ValueError(
            f"--uniform: the global batch {global_batch} does not split over {dp} "
            "data-parallel ranks"
        )
    local = global_batch // dp
    mb = settings.get("mb", max(1, local // pp) if pp > 1 else local)
    if local % mb:
        raise ValueError(
            f"--uniform: mb {mb} does not divide the local batch {local} "
            f"(global batch {global_batch} over {dp} data-parallel ranks)"
        )
    ckpt = settings.get("ckpt", "none")
    layer = LayerStrategy(
        tp=tp,
        sp=settings.get("sp", "none"),
        dp=settings.get("dp", "ddp"),
        ckpt=_CKPT_SPELLINGS.get(ckpt, ckpt),
    )
    outputs = model.vocab_size or model.num_labels
    vocab_tp = settings.get("vocab_tp", tp if outputs % tp == 0 else 1)
    plan = Plan(
        world_size=world_size,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=global_batch,
        num_micro_batches=local // mb,
        pipeline=PipelineConfig(
            degree=pp,
            schedule=schedule,
            stage_num_layers=even_partition(blocks, pp * chunks),
            chunks=chunks,
        ),
        layers=tuple(layer for _ in range(blocks)),
        vocab=VocabStrategy(tp=vocab_tp, dp=settings.get("vocab_dp", layer.dp)),
        precision=precision,
    )
    try:
        validate_plan(plan, world_size=world_size, model=model)
    except ValueError as error:
        raise ValueError(f"--uniform {text!r}: {error}") from None
    return plan

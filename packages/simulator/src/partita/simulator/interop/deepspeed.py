"""DeepSpeed: a plan as its JSON config (``deepspeed.initialize(config=...)``).

The keys are those DeepSpeed 0.19.8 defines (``deepspeed/runtime/config.py``,
``constants.py``, ``zero/config.py``, ``activation_checkpointing/config.py``,
``tensor_parallel/config.py`` in deepspeedai/DeepSpeed). How a :class:`Uniform` maps:

- batch: ``train_batch_size`` (global), ``train_micro_batch_size_per_gpu`` (per
  data-parallel rank) and ``gradient_accumulation_steps`` (micro-batches per step);
- ``dp``: ``zero_optimization.stage`` 0 (ddp) to 3;
- precision: ``bf16.enabled`` / ``fp16.enabled`` (fp32: neither section);
- ``tp``: ``tensor_parallel.autotp_size`` (AutoTP: ``deepspeed.initialize`` shards the
  linear layers of a Hugging Face model itself; 0.19.8 runs it with every ZeRO stage),
  without sequence parallelism;
- ``ckpt``: an ``activation_checkpointing`` section. In DeepSpeed it is the model code that
  checkpoints (it calls ``deepspeed.checkpointing.checkpoint`` around each block, or around
  the attention core for ``attention``); the JSON only configures how, and JSON has no
  comments to say so, hence this note.

Not in the JSON: pipeline parallelism (DeepSpeed's pipeline is a ``PipelineModule`` built in
the model code), Ulysses (DeepSpeed-Ulysses wraps the attention in the model code), Megatron
sequence parallelism (AutoTP has none). Their nearest setting drops them, keeping the
global batch; the micro-batch shrinks where the larger data-parallel group needs it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from partita.formats import ModelDescription
from partita.simulator.interop.uniform import (
    NO_PIPELINE,
    Rule,
    Uniform,
    nearest_by_rules,
    unmet,
)

TRAINER = "deepspeed"
VERSION = "DeepSpeed 0.19.8"

_ZERO_STAGE = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}


def _with_degrees(u: Uniform, *, tp: int, pp: int) -> Uniform:
    """``u`` at other tp and pp degrees, same devices and global batch: the micro-batch is
    kept where it divides the new local batch, else the largest one below it that does."""
    data_parallel = u.world_size // (tp * pp)
    if u.global_batch_size % data_parallel:
        raise ValueError(
            f"DeepSpeed at tp {tp}, pp {pp}: the global batch {u.global_batch_size} does not "
            f"split over {data_parallel} data-parallel ranks"
        )
    local = u.global_batch_size // data_parallel
    micro = max(m for m in range(1, min(u.micro_batch_size, local) + 1) if local % m == 0)
    return replace(
        u,
        tp=tp,
        pp=pp,
        schedule="1f1b" if pp == 1 else u.schedule,
        chunks=1 if pp == 1 else u.chunks,
        micro_batch_size=micro,
    )


_RULES = (
    Rule(
        applies=lambda u: u.sp == "ulysses",
        what=lambda u: (
            "Ulysses sequence parallelism (DeepSpeed-Ulysses is set up in the "
            "model code, not the JSON)"
        ),
        fix=lambda u: replace(u, sp="none"),
        note="DeepSpeed-Ulysses is set up in the model code, not the JSON",
    ),
    Rule(
        applies=lambda u: u.sp == "megatron",
        what=lambda u: "Megatron sequence parallelism (AutoTP has none)",
        fix=lambda u: replace(u, sp="none"),
        note="AutoTP has no sequence parallelism",
    ),
    Rule(
        applies=lambda u: u.pp > 1,
        what=lambda u: (
            "pipeline parallelism (DeepSpeed's pipeline is a PipelineModule in the model code)"
        ),
        fix=lambda u: _with_degrees(u, tp=u.tp, pp=1),
        note="DeepSpeed's pipeline is a PipelineModule in the model code",
    ),
    Rule(
        applies=lambda u: u.vocab_sp,
        what=lambda u: "a sequence-split embedding and head (AutoTP has no sequence parallelism)",
        fix=lambda u: replace(u, vocab_sp=False),
        note="AutoTP has no sequence parallelism",
    ),
    NO_PIPELINE,
)


def unsupported(u: Uniform) -> list[str]:
    """Why DeepSpeed's JSON cannot express ``u``; empty when it can."""
    return unmet(_RULES, u)


def nearest(u: Uniform) -> tuple[Uniform, list[str]]:
    """The closest setting DeepSpeed's JSON expresses, and what changed to reach it."""
    return nearest_by_rules(_RULES, u)


def config(u: Uniform) -> dict[str, Any]:
    """The JSON config as a mapping; ValueError where DeepSpeed's JSON cannot express ``u``."""
    problems = unsupported(u)
    if problems:
        raise ValueError(f"DeepSpeed cannot express {u.strategy_text()}: {'; '.join(problems)}")
    out: dict[str, Any] = {
        "train_batch_size": u.global_batch_size,
        "train_micro_batch_size_per_gpu": u.micro_batch_size,
        "gradient_accumulation_steps": u.num_micro_batches,
        "zero_optimization": {"stage": _ZERO_STAGE[u.dp]},
    }
    if u.precision != "fp32":
        out[u.precision] = {"enabled": True}
    if u.tp > 1:
        out["tensor_parallel"] = {"autotp_size": u.tp}
    if u.ckpt != "none":
        # Partitioning activations over the tensor-parallel group needs Megatron's mpu,
        # which an AutoTP model does not pass: keep every rank's copy.
        out["activation_checkpointing"] = {
            "partition_activations": False,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
        }
    return out


def export(u: Uniform, model: ModelDescription) -> str:
    """``u`` as DeepSpeed JSON text (the model's shape is the model code's, not the JSON's);
    ValueError where DeepSpeed's JSON cannot express it."""
    out = config(u)
    u.to_plan(model)  # the model splits so (heads, batch), else ValueError
    return json.dumps(out, indent=2) + "\n"

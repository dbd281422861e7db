"""TorchTitan: a plan as its TOML job config, and such a config read back.

TorchTitan 0.2.2 is the last release configured by TOML job files (``torchtitan/config/
job_config.py``, read here from its wheel); 0.3.0 replaced them with Python config registries
(``torchtitan/models/*/config_registry.py``; pytorch/torchtitan#2386, "Config System
Refactor: TOML to Python Dataclass Registry"), so this module writes and reads 0.2.2's keys.
How a :class:`Uniform` maps (``models/llama3/infra/parallelize.py``,
``distributed/pipeline_parallel.py``, ``distributed/utils.py``):

- ``tp``: ``[parallelism] tensor_parallel_degree``. TorchTitan's tensor parallelism always
  runs the norms sequence-parallel and shards the embedding's output along the sequence
  (``sp megatron`` with ``vocab_sp``); sp ``none`` at tp > 1 is not expressible.
- ``pp``: ``pipeline_parallel_degree`` and ``pipeline_parallel_schedule`` ("1F1B", "GPipe",
  "Interleaved1F1B"), the stages given exactly by ``module_fqns_per_model_part`` (the
  plan's split; embedding first, norm and head last); ``mb`` is
  ``pipeline_parallel_microbatch_size`` and ``[training] local_batch_size`` the local batch.
  Without a pipeline ``local_batch_size`` is the micro-batch and TorchTitan accumulates
  gradients up to ``global_batch_size``. (With a pipeline, gradient accumulation over
  several local batches is read as one pipeline of all their micro-batches.) Its
  zero-bubble schedules loop two or more stages per rank: ZB-H1 is not expressible.
- ``dp``: FSDP2 over ``data_parallel_shard_degree`` ranks is ZeRO-3 when it reshards after
  forward (``fsdp_reshard_after_forward`` "always", or "default", which reshards only
  without a pipeline) and ZeRO-2 when it never does; ``data_parallel_replicate_degree`` alone
  is DDP, which TorchTitan runs only without tensor and pipeline parallelism. FSDP2 always
  shards parameters at rest: no ZeRO-1. Hybrid sharding (both degrees above 1) and context
  or expert parallelism are not in Partita's plans.
- precision: ``[training] mixed_precision_param`` "bfloat16" / "float32", applied by FSDP,
  or by autocast only without tensor and pipeline parallelism (otherwise TorchTitan trains
  in float32); no fp16. ``dtype = "bfloat16"`` (all-bfloat16 training) is read as bf16.
- ``ckpt``: ``[activation_checkpoint] mode`` "none" / "full"; ``selective-op`` is mode
  "selective" with ``selective_ac_option = "op"`` (the same policy: every other matmul's and
  the attention kernel's outputs kept, the rest recomputed). ``attention`` has no TorchTitan
  equivalent and becomes ``selective-op``, its only sub-block mode. An integer option
  recomputes every n-th block (TorchTitan's default, "2"): layer-wise, read only for n = 1,
  every block.
- model: ``[model] name`` / ``flavor`` where a TorchTitan llama3 flavor has the model's
  sizes, else a placeholder flavor named after the model, to register.

Older TorchTitan configs spell ``local_batch_size`` as ``batch_size``; it is read too.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from partita.formats import ModelDescription
from partita.formats.common import Ckpt, DpMode, Precision, Schedule
from partita.simulator.interop.uniform import (
    NO_PIPELINE,
    Rule,
    Uniform,
    nearest_by_rules,
    unmet,
)

TRAINER = "torchtitan"
VERSION = "torchtitan 0.2.2"

_SCHEDULE_NAMES: dict[str, Schedule] = {
    "1F1B": "1f1b",
    "GPipe": "gpipe",
    "Interleaved1F1B": "interleaved-1f1b",
}
_SCHEDULE_OF = {ours: theirs for theirs, ours in _SCHEDULE_NAMES.items()}
_PRECISION_NAMES: dict[str, Precision] = {"bfloat16": "bf16", "float32": "fp32"}
_DTYPE_OF = {ours: theirs for theirs, ours in _PRECISION_NAMES.items()}
# torchtitan/models/llama3/__init__.py (0.2.2): flavor -> (dim, n_layers, n_heads, n_kv_heads).
_LLAMA3_FLAVORS = {
    "8B": (4096, 32, 32, 8),
    "70B": (8192, 80, 64, 8),
    "405B": (16384, 126, 128, 8),
}
_WHOLE_BLOCK_MODES: dict[str, Ckpt] = {"none": "none", "full": "full"}
_LLAMA3_LAYERS = {flavor: sizes[1] for flavor, sizes in _LLAMA3_FLAVORS.items()}


def _vocab_sp(u: Uniform) -> bool:
    return u.tp > 1  # the embedding's output is sharded along the sequence under TP


def _mixed_precision_runs(u: Uniform) -> bool:
    """TorchTitan's ``maybe_enable_amp``: FSDP casts, else autocast, but only without TP and
    PP (it logs "Mixed precision training is disabled" otherwise)."""
    return _sharded(u.dp, u.data_parallel) or (u.tp == 1 and u.pp == 1)


def _sharded(dp: DpMode, data_parallel: int) -> bool:
    return dp in ("zero2", "zero3") and data_parallel > 1


_RULES = (
    Rule(
        applies=lambda u: u.sp == "ulysses",
        what=lambda u: "Ulysses sequence parallelism (TorchTitan has context parallelism instead)",
        fix=lambda u: replace(u, sp="megatron" if u.tp > 1 else "none"),
        note="TorchTitan's tensor parallelism over the same devices; it has no Ulysses",
    ),
    Rule(
        applies=lambda u: u.tp > 1 and u.sp == "none",
        what=lambda u: (
            "tensor parallelism without sequence parallelism (TorchTitan's always "
            "splits the sequence around the norms)"
        ),
        fix=lambda u: replace(u, sp="megatron"),
        note="TorchTitan's tensor parallelism always splits the sequence around the norms",
    ),
    Rule(
        applies=lambda u: u.tp == 1 and u.sp != "none",
        what=lambda u: "sequence parallelism at tp 1",
        fix=lambda u: replace(u, sp="none"),
        note="nothing to split at tp 1",
    ),
    Rule(
        applies=lambda u: u.vocab_sp != _vocab_sp(u),
        what=lambda u: (
            f"vocab sp {'on' if u.vocab_sp else 'off'} at tp {u.tp} (TorchTitan "
            "shards the embedding's output along the sequence exactly under tensor parallelism)"
        ),
        fix=lambda u: replace(u, vocab_sp=_vocab_sp(u)),
        note="the embedding and head follow tensor parallelism",
    ),
    NO_PIPELINE,
    Rule(
        applies=lambda u: u.schedule == "zb-h1",
        what=lambda u: "ZB-H1 (TorchTitan's zero-bubble schedules run two or more stages per rank)",
        fix=lambda u: replace(u, schedule="1f1b"),
        note="TorchTitan's zero-bubble schedules run two or more stages per rank",
    ),
    Rule(
        applies=lambda u: u.data_parallel == 1 and u.dp != "ddp",
        what=lambda u: f"{u.dp} over one data-parallel rank",
        fix=lambda u: replace(u, dp="ddp"),
        note="one data-parallel rank: nothing to shard",
    ),
    Rule(
        applies=lambda u: u.dp == "zero1",
        what=lambda u: "ZeRO-1 (TorchTitan's FSDP2 shards parameters too)",
        fix=lambda u: replace(u, dp="zero2"),
        note="FSDP2 without resharding after forward; TorchTitan has no optimizer-only sharding",
    ),
    Rule(
        applies=lambda u: u.dp == "ddp" and u.data_parallel > 1 and (u.tp > 1 or u.pp > 1),
        what=lambda u: "DDP with tensor or pipeline parallelism (TorchTitan's DDP runs alone)",
        fix=lambda u: replace(u, dp="zero2"),
        note="FSDP2 without resharding after forward; TorchTitan's DDP runs alone",
    ),
    Rule(
        applies=lambda u: u.precision == "fp16",
        what=lambda u: "fp16 (TorchTitan trains in bfloat16 or float32)",
        fix=lambda u: replace(u, precision="bf16"),
        note="TorchTitan trains in bfloat16 or float32",
    ),
    Rule(
        applies=lambda u: u.ckpt == "attention",
        what=lambda u: "ckpt attention (TorchTitan recomputes by ops or whole blocks)",
        fix=lambda u: replace(u, ckpt="selective-op"),
        note="TorchTitan's op-level selective checkpointing, its only sub-block mode",
    ),
    Rule(
        applies=lambda u: u.precision != "fp32" and not _mixed_precision_runs(u),
        what=lambda u: (
            "mixed precision with tensor or pipeline parallelism but no FSDP "
            "(TorchTitan then trains in float32)"
        ),
        fix=lambda u: replace(u, precision="fp32"),
        note="TorchTitan applies mixed precision through FSDP, or autocast without TP and PP",
    ),
)


def unsupported(u: Uniform) -> list[str]:
    """Why TorchTitan cannot run ``u`` as stated; empty when it can."""
    return unmet(_RULES, u)


def nearest(u: Uniform) -> tuple[Uniform, list[str]]:
    """The closest setting TorchTitan expresses, and what changed to reach it."""
    return nearest_by_rules(_RULES, u)


# --------------------------------------------------------------------------- export


def export(u: Uniform, model: ModelDescription) -> str:
    """``u`` for ``model`` as a TorchTitan 0.2.2 TOML job config; ValueError where
    TorchTitan cannot express it."""
    problems = unsupported(u)
    if problems:
        raise ValueError(f"TorchTitan cannot express {u.strategy_text()}: {'; '.join(problems)}")
    if model.family != "llama":
        raise ValueError(
            f"{model.name}: TorchTitan configs are written for llama models, not {model.family}"
        )
    plan = u.to_plan(model)  # the model splits so (heads, batch, stages), else ValueError
    if model.seq_len % (2 * u.tp):
        # ParallelDims.seq_len_divisor: tp x 2 x cp, asserted by parallelize_llama.
        raise ValueError(
            f"{model.name}: TorchTitan needs seq_len {model.seq_len} divisible by 2 x tp {u.tp}"
        )
    flavor = _flavor(model)
    header = [f"# {model.name} on {u.world_size} devices: {u.strategy_text()} (Partita)"]
    if flavor is None:
        header.append(
            f"# No TorchTitan llama3 flavor has {model.name}'s sizes: register one named "
            f"{model.name!r} with them."
        )
    sections: dict[str, dict[str, Any]] = {
        "job": {"description": f"{model.name}: {u.strategy_text()}"},
        "model": {"name": "llama3", "flavor": flavor or model.name},
        "training": {
            "local_batch_size": u.global_batch_size // u.data_parallel
            if u.pp > 1
            else u.micro_batch_size,
            "global_batch_size": u.global_batch_size,
            "seq_len": model.seq_len,
            "mixed_precision_param": _DTYPE_OF[u.precision],
        },
        "parallelism": dict(_parallelism(u, plan.pipeline.stage_num_layers)),
        "activation_checkpoint": dict(_activation_checkpoint(u)),
    }
    return "\n".join(header) + "\n" + _toml(sections)


def _flavor(model: ModelDescription) -> str | None:
    sizes = (model.hidden_size, len(model.blocks), model.num_heads, model.num_kv_heads)
    return next((name for name, known in _LLAMA3_FLAVORS.items() if known == sizes), None)


def _parallelism(u: Uniform, stage_blocks: tuple[int, ...]) -> Iterator[tuple[str, Any]]:
    shard = u.data_parallel if _sharded(u.dp, u.data_parallel) else 1
    yield "data_parallel_replicate_degree", u.data_parallel // shard
    yield "data_parallel_shard_degree", shard
    if shard > 1:
        reshard = "never" if u.dp == "zero2" else "default" if u.pp == 1 else "always"
        yield "fsdp_reshard_after_forward", reshard
    yield "tensor_parallel_degree", u.tp
    yield "pipeline_parallel_degree", u.pp
    yield "context_parallel_degree", 1
    if u.pp > 1:
        yield "pipeline_parallel_schedule", _SCHEDULE_OF[u.schedule]
        yield "pipeline_parallel_microbatch_size", u.micro_batch_size
        yield "module_fqns_per_model_part", _module_names(stage_blocks)


def _module_names(stage_blocks: tuple[int, ...]) -> list[list[str]]:
    """Each virtual stage's modules of TorchTitan's llama3 model, in order."""
    parts: list[list[str]] = []
    start = 0
    for count in stage_blocks:
        parts.append([f"layers.{index}" for index in range(start, start + count)])
        start += count
    parts[0].insert(0, "tok_embeddings")
    parts[-1].extend(["norm", "output"])
    return parts


def _activation_checkpoint(u: Uniform) -> Iterator[tuple[str, Any]]:
    if u.ckpt == "selective-op":
        yield "mode", "selective"
        yield "selective_ac_option", "op"
    else:
        yield "mode", u.ckpt


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML of tables of strings, integers and (nested) lists of strings."""
    blocks = []
    for name, table in sections.items():
        lines = [f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string for these texts
    assert isinstance(value, list), value
    if value and all(isinstance(item, list) for item in value):
        # One inner list (a pipeline stage's modules) a line.
        return "[\n" + "".join(f"  {_toml_value(item)},\n" for item in value) + "]"
    return "[" + ", ".join(_toml_value(item) for item in value) + "]"


# --------------------------------------------------------------------------- import


def import_config(text: str, *, world_size: int | None, source: str) -> Uniform:
    """The strategy a TorchTitan 0.2.2 TOML job config runs.

    The device count is the product of the parallel degrees when all are given;
    ``data_parallel_shard_degree = -1`` (the devices left over) needs ``world_size``.
    ValueError in one line naming ``source`` and the key at fault.
    """
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{source}: not TOML ({error})") from None
    keys = _Keys(config, source)
    tp = keys.integer("parallelism", "tensor_parallel_degree", 1)
    pp = keys.integer("parallelism", "pipeline_parallel_degree", 1)
    for key, what in (
        ("context_parallel_degree", "context parallelism"),
        ("expert_parallel_degree", "expert parallelism"),
    ):
        if keys.integer("parallelism", key, 1) > 1:
            raise ValueError(f"{source}: [parallelism] {key} > 1: plans have no {what}")
    replicate = keys.integer("parallelism", "data_parallel_replicate_degree", 1)
    shard = keys.integer("parallelism", "data_parallel_shard_degree", -1)
    devices = _devices(tp, pp, replicate, shard, world_size, source)
    if shard == -1:
        shard = devices // (tp * pp * replicate)
    if replicate > 1 and shard > 1:
        raise ValueError(
            f"{source}: [parallelism] data_parallel_replicate_degree {replicate} with "
            f"data_parallel_shard_degree {shard} is hybrid sharding (HSDP), not in plans"
        )
    data_parallel = replicate * shard
    schedule, chunks = _pipeline(keys, pp)
    # ``batch_size``: the name older TorchTitan configs give local_batch_size.
    local = keys.integer("training", "local_batch_size", keys.integer("training", "batch_size", 8))
    global_batch = keys.integer("training", "global_batch_size", -1)
    if global_batch == -1:
        global_batch = local * data_parallel
    if local < 1 or global_batch % (local * data_parallel):
        raise ValueError(
            f"{source}: [training] global_batch_size {global_batch} is not a multiple of "
            f"local_batch_size {local} x {data_parallel} data-parallel ranks"
        )
    micro = keys.integer("parallelism", "pipeline_parallel_microbatch_size", 1) if pp > 1 else local
    if micro < 1 or local % micro:
        raise ValueError(
            f"{source}: [parallelism] pipeline_parallel_microbatch_size {micro} does not divide "
            f"[training] local_batch_size {local}"
        )
    dp = _dp_mode(keys, shard, pp)
    precision = _precision(keys) if _sharded(dp, data_parallel) or tp == pp == 1 else "fp32"
    ckpt = _ckpt(keys)
    try:
        return Uniform(
            world_size=devices,
            global_batch_size=global_batch,
            micro_batch_size=micro,
            precision=precision,
            tp=tp,
            pp=pp,
            sp="megatron" if tp > 1 else "none",
            dp=dp,
            ckpt=ckpt,
            schedule=schedule,
            chunks=chunks,
            vocab_sp=tp > 1,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


class _Keys:
    """Typed access to a parsed job config, errors naming the section and key."""

    def __init__(self, config: Mapping[str, Any], source: str) -> None:
        self.config = config
        self.source = source

    def value(self, section: str, key: str) -> Any:
        table = self.config.get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{self.source}: [{section}] is not a table")
        return table.get(key)

    def integer(self, section: str, key: str, default: int) -> int:
        value = self.value(section, key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{self.source}: [{section}] {key}: expected an integer, got {value!r}"
            )
        return value

    def text(self, section: str, key: str, default: str) -> str:
        value = self.value(section, key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ValueError(f"{self.source}: [{section}] {key}: expected a string, got {value!r}")
        return value


def _devices(
    tp: int, pp: int, replicate: int, shard: int, world_size: int | None, source: str
) -> int:
    for key, degree in (
        ("tensor_parallel_degree", tp),
        ("pipeline_parallel_degree", pp),
        ("data_parallel_replicate_degree", replicate),
    ):
        if degree < 1:
            raise ValueError(f"{source}: [parallelism] {key}: expected 1 or more, got {degree}")
    if shard == -1:
        if world_size is None:
            raise ValueError(
                f"{source}: [parallelism] data_parallel_shard_degree = -1 takes the devices "
                "left over: give --world-size"
            )
        if world_size % (tp * pp * replicate):
            raise ValueError(
                f"{source}: tensor x pipeline x replicate degrees {tp * pp * replicate} do not "
                f"divide {world_size} devices (--world-size)"
            )
        return world_size
    if shard < 1:
        raise ValueError(
            f"{source}: [parallelism] data_parallel_shard_degree: expected -1 or 1 or more, "
            f"got {shard}"
        )
    product = tp * pp * replicate * shard
    if world_size is not None and world_size != product:
        raise ValueError(
            f"{source}: the parallel degrees multiply to {product} devices, not {world_size} "
            "(--world-size)"
        )
    return product


def _pipeline(keys: _Keys, pp: int) -> tuple[Schedule, int]:
    if pp == 1:
        return "1f1b", 1
    name = keys.text("parallelism", "pipeline_parallel_schedule", "1F1B")
    # torch.distributed.pipelining looks schedule names up case-insensitively.
    schedule = next(
        (ours for theirs, ours in _SCHEDULE_NAMES.items() if theirs.lower() == name.lower()), None
    )
    if schedule is None:
        raise ValueError(
            f"{keys.source}: [parallelism] pipeline_parallel_schedule {name!r} is not in plans "
            f"(read: {', '.join(_SCHEDULE_NAMES)})"
        )
    stages = _virtual_stages(keys, pp, schedule)
    if stages % pp:
        raise ValueError(
            f"{keys.source}: {stages} pipeline stages do not split over "
            f"pipeline_parallel_degree {pp}"
        )
    chunks = stages // pp
    if (schedule == "interleaved-1f1b") != (chunks > 1):
        raise ValueError(
            f"{keys.source}: [parallelism] pipeline_parallel_schedule {name!r} with {chunks} "
            "stage(s) per rank"
        )
    return schedule, chunks


def _virtual_stages(keys: _Keys, pp: int, schedule: Schedule) -> int:
    parts = keys.value("parallelism", "module_fqns_per_model_part")
    if parts is not None:
        if not isinstance(parts, list) or not all(isinstance(p, list) for p in parts):
            raise ValueError(
                f"{keys.source}: [parallelism] module_fqns_per_model_part: expected a list of "
                "lists of module names"
            )
        return len(parts)
    per_stage = keys.value("parallelism", "pipeline_parallel_layers_per_stage")
    if per_stage is not None:
        flavor = keys.text("model", "flavor", "")
        if keys.text("model", "name", "") != "llama3" or flavor not in _LLAMA3_LAYERS:
            raise ValueError(
                f"{keys.source}: [parallelism] pipeline_parallel_layers_per_stage needs the "
                "model's layer count: give module_fqns_per_model_part instead"
            )
        # pipeline_llm: ceil((n_layers + first_stage_less + last_stage_less) / per_stage).
        layers = (
            _LLAMA3_LAYERS[flavor]
            + keys.integer("parallelism", "pipeline_parallel_first_stage_less_layers", 1)
            + keys.integer("parallelism", "pipeline_parallel_last_stage_less_layers", 1)
        )
        per = keys.integer("parallelism", "pipeline_parallel_layers_per_stage", 1)
        if per < 1:
            raise ValueError(
                f"{keys.source}: [parallelism] pipeline_parallel_layers_per_stage: expected 1 "
                f"or more, got {per}"
            )
        return -(-layers // per)
    return pp * (2 if schedule == "interleaved-1f1b" else 1)


def _dp_mode(keys: _Keys, shard: int, pp: int) -> DpMode:
    if shard == 1:
        return "ddp"
    reshard = keys.text("parallelism", "fsdp_reshard_after_forward", "default")
    if reshard not in ("default", "always", "never"):
        raise ValueError(
            f"{keys.source}: [parallelism] fsdp_reshard_after_forward: expected default, always "
            f"or never, got {reshard!r}"
        )
    if reshard == "never" or (reshard == "default" and pp > 1):
        return "zero2"
    return "zero3"


def _ckpt(keys: _Keys) -> Ckpt:
    mode = keys.text("activation_checkpoint", "mode", "selective")
    if mode in _WHOLE_BLOCK_MODES:
        return _WHOLE_BLOCK_MODES[mode]
    if mode != "selective":
        raise ValueError(
            f"{keys.source}: [activation_checkpoint] mode {mode!r}: plans read none, selective "
            "or full (memory_budget leaves the choice to the compiler)"
        )
    option = keys.text("activation_checkpoint", "selective_ac_option", "2")
    if option == "op":
        return "selective-op"
    if option == "1":
        return "full"
    raise ValueError(
        f"{keys.source}: [activation_checkpoint] selective_ac_option {option!r} (TorchTitan's "
        "default is '2') checkpoints every n-th block only: a layer-wise plan, not one strategy"
    )


def _precision(keys: _Keys) -> Precision:
    if keys.text("training", "dtype", "float32") == "bfloat16":
        return "bf16"  # all-bfloat16 training (no float32 copy): its nearest plan precision
    name = keys.text("training", "mixed_precision_param", "bfloat16")
    if name not in _PRECISION_NAMES:
        raise ValueError(
            f"{keys.source}: [training] mixed_precision_param: expected bfloat16 or float32, "
            f"got {name!r}"
        )
    return _PRECISION_NAMES[name]

"""Galvatron's searched strategy files (``galvatron_config_*.json``) <-> ``partita.plan``.

Galvatron (PKU-DAIR/Hetu-Galvatron) writes the plan its search found as one JSON object whose
per-layer values are comma-separated strings, one number per Transformer block. What each key
means is what Galvatron's runtime does with it (read in ``core/runtime/hybrid_parallel_config.py``
and ``core/runtime/parallel.py``; docs/whatif.md, "Galvatron's own llama2-7b plan", lists the
sources):

- ``pp_deg``, ``pp_division``: pipeline stages and the blocks of each, in order (missing
  ``pp_division``: an even split, the remainder on the last stage);
- ``tp_sizes_enc``: per block, the model-parallel group size; ``use_sp`` 1 makes that group a
  Ulysses (sequence-parallel) group instead of a tensor-parallel one;
- ``tp_consecutive_flags``: 1 when a group's ranks are adjacent, 0 when they are strided by the
  data-parallel degree;
- ``dp_types_enc``: 1 is ZeRO-3 (FSDP full shard), 0 the run's ``default_dp_type`` (``ddp``,
  ``zero2`` or ``zero3``: FSDP no-shard, grad-op shard, full shard); ``embed_sdp`` the same
  choice (1: ZeRO-3) for the embedding and head;
- ``checkpoint``: per block, recompute the whole block in the backward (any non-zero value);
- ``global_bsz``, ``chunks``: samples per iteration, micro-batches per iteration;
- ``pipeline_type``: ``gpipe`` or ``pipedream_flush`` (1F1B);
- ``vtp``, ``vsp``: the embedding's and head's group size and, with ``vsp`` 1, that it splits
  the sequence (parameters whole, as ``use_sp`` does for a block) rather than the vocabulary;
- newer versions add ``cp_sizes_enc``/``vcp`` (context parallelism) and, for MoE models,
  ``ep_sizes_enc``/``tp_of_ep_sizes_enc``/``dispatcher``: read here only at their neutral
  values, as Partita has neither.

The file does not record the world size nor the precision: Galvatron's search writes both into
the file name (``..._1nodes_8gpus_per_node_36GB_bf16.json``), which is where they are read from
unless given. Whether tensor-parallel blocks also run Megatron-SP is Galvatron's
``sequence_parallel`` run argument, not a key of the file (``sequence_parallel`` below; it
defaults to on in Galvatron's newest runtime arguments).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from partita.formats import (
    FormatError,
    LayerStrategy,
    ModelDescription,
    PipelineConfig,
    Plan,
    Provenance,
    VocabStrategy,
    validate_plan,
)
from partita.formats.common import DpMode, MeshAxis, Precision, Schedule

TRAINER = "galvatron"
# The Galvatron sources this module follows (PKU-DAIR/Hetu-Galvatron): the runtime's parser
# (hybrid_parallel_config.py), data-parallel wrapping (parallel.py), the newer parser with
# context parallelism (utils/config_utils.py) and the run arguments (args_schema.py).
VERSION = (
    "PKU-DAIR/Hetu-Galvatron hybrid_parallel_config.py@38b79aada4df, parallel.py@2ceef769319a, "
    "config_utils.py@1d27a7a3459d, args_schema.py@0c28e916a870"
)

CONSECUTIVE: tuple[MeshAxis, ...] = ("pp", "dp", "tp")  # tp innermost: adjacent ranks
STRIDED: tuple[MeshAxis, ...] = ("pp", "tp", "dp")  # dp innermost: tp ranks strided by dp
SCHEDULES: dict[str, Schedule] = {"gpipe": "gpipe", "pipedream_flush": "1f1b"}
PIPELINE_TYPES = {schedule: name for name, schedule in SCHEDULES.items()}
DEFAULT_DP_TYPES: dict[str, DpMode] = {"ddp": "ddp", "zero2": "zero2", "zero3": "zero3"}
# Keys Galvatron's runtime reads (the search writes them in this order, less the newer ones).
KEYS = (
    "pp_deg",
    "tp_sizes_enc",
    "tp_consecutive_flags",
    "cp_sizes_enc",
    "dp_types_enc",
    "use_sp",
    "checkpoint",
    "global_bsz",
    "chunks",
    "pp_division",
    "pipeline_type",
    "default_dp_type",
    "vtp",
    "vsp",
    "vcp",
    "embed_sdp",
    "ep_sizes_enc",
    "tp_of_ep_sizes_enc",
    "dispatcher",
)
# When a file leaves these out, the runtime takes its run arguments' defaults (args_schema.py).
RUN_DEFAULT_PIPELINE_TYPE = "gpipe"
RUN_DEFAULT_DP_TYPE: DpMode = "ddp"
_PRECISIONS: dict[str, Precision] = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}

_NAME = re.compile(
    r"galvatron_config_(?P<model>.+?)_(?P<nodes>\d+)nodes_(?P<gpus>\d+)gpus(?:_per_node)?"
    r"_(?P<memory>\d+)GB(?:_(?P<precision>fp32|fp16|bf16))?"
)


@dataclass(frozen=True)
class FileName:
    """What Galvatron's search writes into a strategy file's name (None: not there)."""

    model: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    # The search's memory budget per device: GiB in ``..._36GB``; older names wrote MiB there.
    memory_gb: int | None = None
    precision: Precision | None = None

    @property
    def world_size(self) -> int | None:
        if self.nodes is None or self.gpus_per_node is None:
            return None
        return self.nodes * self.gpus_per_node


def parse_file_name(name: str) -> FileName:
    """The facts in ``galvatron_config_{model}_{N}nodes_{G}gpus_per_node_{M}GB_{precision}``."""
    found = _NAME.search(name.replace("\\", "/").rsplit("/", 1)[-1])
    if found is None:
        return FileName()
    return FileName(
        model=found["model"],
        nodes=int(found["nodes"]),
        gpus_per_node=int(found["gpus"]),
        memory_gb=int(found["memory"]),
        precision=_PRECISIONS.get(found["precision"] or ""),
    )


def file_name(plan: Plan, *, model_name: str, memory_gb: int, gpus_per_node: int) -> str:
    """The name Galvatron's search would give ``plan``'s file (world size and precision in it,
    so that importing it back needs neither)."""
    if gpus_per_node < 1 or plan.world_size % gpus_per_node:
        raise ValueError(
            f"gpus_per_node: {gpus_per_node} does not divide the plan's {plan.world_size} devices"
        )
    nodes = plan.world_size // gpus_per_node
    return (
        f"galvatron_config_{model_name}_{nodes}nodes_{gpus_per_node}gpus_per_node_"
        f"{memory_gb}GB_{plan.precision}.json"
    )


@dataclass(frozen=True)
class Imported:
    plan: Plan
    # Where the plan says what Galvatron would run only approximately, or fills a gap.
    notes: tuple[str, ...] = field(default=())


def import_strategy(
    data: Mapping[str, object],
    model: ModelDescription,
    *,
    source: str,
    world_size: int | None = None,
    precision: Precision | None = None,
    sequence_parallel: bool = True,
) -> Plan:
    """Galvatron's strategy ``data`` (the JSON object of file ``source``) as a Partita plan for
    ``model``. ``world_size`` and ``precision`` default to what the file name says;
    ``sequence_parallel`` is Galvatron's run argument of that name (Megatron-SP in every
    tensor-parallel layer). Raises ValueError naming the file and key at fault."""
    return read_strategy(
        data,
        model,
        source=source,
        world_size=world_size,
        precision=precision,
        sequence_parallel=sequence_parallel,
    ).plan


def read_strategy(
    data: Mapping[str, object],
    model: ModelDescription,
    *,
    source: str,
    world_size: int | None = None,
    precision: Precision | None = None,
    sequence_parallel: bool = True,
) -> Imported:
    """``import_strategy``, with the notes on what the plan approximates."""
    reader = _Reader(data, source)
    notes: list[str] = []
    reader.refuse_unknown_keys()
    world, dtype = _run_facts(source, world_size, precision)
    pp = reader.integer("pp_deg", minimum=1)
    if world % pp:
        raise reader.error("pp_deg", f"{pp} stages do not divide the {world} devices")
    per_stage = world // pp
    blocks = len(model.blocks)
    tps = reader.integers("tp_sizes_enc", minimum=1)
    if len(tps) != blocks:
        raise reader.error(
            "tp_sizes_enc",
            f"{len(tps)} layers, but model {model.name!r} has {blocks} block layers",
        )
    for index, tp in enumerate(tps):
        if per_stage % tp:
            raise reader.error(
                "tp_sizes_enc",
                f"layer {index}: {tp} does not divide the {per_stage} devices of a stage "
                f"({world} devices / pp_deg {pp})",
            )
    consecutive = reader.integers("tp_consecutive_flags", count=blocks, allowed=(0, 1))
    zero3 = reader.integers("dp_types_enc", count=blocks, allowed=(0, 1))
    ulysses = reader.integers("use_sp", count=blocks, allowed=(0, 1), default=0)
    # The runtime accepts 0, 1 and 2 and checkpoints the whole block for any non-zero flag.
    recompute = reader.integers("checkpoint", count=blocks, allowed=(0, 1, 2), default=0)
    _refuse_other_parallelism(reader, blocks)
    global_batch = reader.integer("global_bsz", minimum=1)
    chunks = reader.integer("chunks", minimum=1)
    if global_batch % chunks:
        raise reader.error(
            "chunks",
            f"{chunks} micro-batches do not divide global_bsz {global_batch} "
            "(Partita's micro-batches are all the same size)",
        )
    division = _division(reader, pp, blocks)
    schedule = SCHEDULES[
        reader.choice("pipeline_type", tuple(SCHEDULES), default=RUN_DEFAULT_PIPELINE_TYPE)
    ]
    default_dp = DEFAULT_DP_TYPES[
        reader.choice("default_dp_type", tuple(DEFAULT_DP_TYPES), default=RUN_DEFAULT_DP_TYPE)
    ]
    missing = [k for k in ("pipeline_type", "default_dp_type", "embed_sdp") if k not in data]
    if missing:
        notes.append(f"{', '.join(missing)}: not in the file; Galvatron's run defaults taken")
    layers = tuple(
        LayerStrategy(
            tp=tp,
            sp="ulysses" if sp else ("megatron" if sequence_parallel and tp > 1 else "none"),
            dp="zero3" if sdp else default_dp,
            ckpt="full" if ckpt else "none",
        )
        for tp, sp, sdp, ckpt in zip(tps, ulysses, zero3, recompute, strict=True)
    )
    vocab = _vocab(reader, per_stage, default_dp, sequence_parallel, notes)
    if any(x.tp > 1 and x.sp != "ulysses" for x in layers) or vocab.tp > 1:
        notes.append(
            "tensor-parallel layers imported with Megatron-SP "
            + ("on" if sequence_parallel else "off")
            + ": Galvatron's sequence_parallel run argument, which the file does not record"
        )
    order = _mesh_order(reader, layers, consecutive, vocab, per_stage)
    plan = Plan(
        world_size=world,
        mesh_axis_order=order,
        global_batch_size=global_batch,
        num_micro_batches=chunks,
        pipeline=PipelineConfig(degree=pp, schedule=schedule, stage_num_layers=division),
        layers=layers,
        vocab=vocab,
        precision=dtype,
        provenance=Provenance(
            model=model.name,
            tools={TRAINER: VERSION},
            created_by=f"imported from Galvatron strategy {source}",
        ),
    )
    try:
        validate_plan(plan, world_size=world, model=model)
    except FormatError as error:
        raise ValueError(f"{source}: not a plan Partita can run: {error}") from error
    return Imported(plan, tuple(notes))


def _run_facts(
    source: str, world_size: int | None, precision: Precision | None
) -> tuple[int, Precision]:
    named = parse_file_name(source)
    world = world_size if world_size is not None else named.world_size
    if world is None:
        raise ValueError(
            f"{source}: world size: neither the file nor its name ({{N}}nodes_{{G}}gpus_per_node)"
            " says how many devices; give it (--world-size)"
        )
    if world < 1:
        raise ValueError(f"{source}: world size: expected a positive number, got {world}")
    dtype = precision if precision is not None else named.precision
    if dtype is None:
        raise ValueError(
            f"{source}: precision: neither the file nor its name (_bf16, _fp16, _fp32) says "
            "it; give it (--precision)"
        )
    return world, dtype


def _refuse_other_parallelism(reader: _Reader, blocks: int) -> None:
    """Context and expert parallelism: only their neutral values, as Partita has neither."""
    for key, what in (
        ("cp_sizes_enc", "context parallelism"),
        ("ep_sizes_enc", "expert parallelism"),
        ("tp_of_ep_sizes_enc", "expert tensor parallelism"),
    ):
        if key in reader.data:
            for index, size in enumerate(reader.integers(key, count=blocks, minimum=1)):
                if size != 1:
                    raise reader.error(
                        key, f"layer {index}: {what} of degree {size} has no Partita equivalent"
                    )
    if reader.integer("vcp", minimum=1, default=1) != 1:
        raise reader.error("vcp", "context parallelism of the embedding has no Partita equivalent")
    if "dispatcher" in reader.data and not isinstance(reader.data["dispatcher"], str):
        raise reader.error("dispatcher", "expected a string (MoE token dispatcher)")


def _division(reader: _Reader, pp: int, blocks: int) -> tuple[int, ...]:
    if "pp_division" not in reader.data:
        # The runtime's split: the same number per stage, the remainder on the last one.
        even = blocks // pp
        division = (even,) * (pp - 1) + (blocks - even * (pp - 1),)
    else:
        division = reader.integers("pp_division", count=pp)
    if sum(division) != blocks or min(division) < 1:
        raise reader.error(
            "pp_division",
            f"expected {pp} stages of at least one layer each summing to {blocks} layers, "
            f"got {','.join(map(str, division))}",
        )
    return division


def _vocab(
    reader: _Reader,
    per_stage: int,
    default_dp: DpMode,
    sequence_parallel: bool,
    notes: list[str],
) -> VocabStrategy:
    vtp = reader.integer("vtp", minimum=1, default=1)
    if per_stage % vtp:
        raise reader.error("vtp", f"{vtp} does not divide the {per_stage} devices of a stage")
    split_sequence = reader.integer("vsp", allowed=(0, 1), default=0)
    dp = "zero3" if reader.integer("embed_sdp", allowed=(0, 1), default=0) else default_dp
    if split_sequence and vtp > 1:
        # Galvatron's vsp splits the sequence over vtp devices with the parameters whole; the
        # embedding and head work token by token, so that computes and stores what data
        # parallelism over the same devices does. Partita's vocab.sp is Megatron-SP over a
        # vocabulary split, another thing, so the nearest plan is vocab tp 1.
        notes.append(
            f"vtp {vtp} with vsp 1 (embedding and head split along the sequence, parameters "
            "whole): imported as vocab tp 1, data parallelism over the same devices, which "
            "does the same work per device; Galvatron shards their ZeRO-3 state over "
            f"{per_stage // vtp} devices, Partita over {per_stage}"
        )
        return VocabStrategy(tp=1, sp=False, dp=dp)
    return VocabStrategy(tp=vtp, sp=sequence_parallel and vtp > 1, dp=dp)


def _mesh_order(
    reader: _Reader,
    layers: Sequence[LayerStrategy],
    consecutive: Sequence[int],
    vocab: VocabStrategy,
    per_stage: int,
) -> tuple[MeshAxis, ...]:
    """One mesh per plan in Partita: the flags must agree wherever they change the groups (a
    group of 1 device or of the whole stage is the same either way)."""
    matters = [i for i, layer in enumerate(layers) if 1 < layer.tp < per_stage]
    flags = {consecutive[i] for i in matters}
    if len(flags) > 1:
        strided = [i for i in matters if not consecutive[i]]
        adjacent = [i for i in matters if consecutive[i]]
        raise reader.error(
            "tp_consecutive_flags",
            f"layers {_spans(adjacent)} have adjacent tp ranks and layers {_spans(strided)} "
            "strided ones; a Partita plan lays out one device mesh (mesh_axis_order) for all",
        )
    if flags != {0}:
        return CONSECUTIVE
    if 1 < vocab.tp < per_stage:
        raise reader.error(
            "tp_consecutive_flags",
            f"the blocks' tp ranks are strided but the embedding's (vtp {vocab.tp}) are "
            "adjacent, as Galvatron always lays them; a Partita plan has one device mesh",
        )
    return STRIDED


def export_strategy(plan: Plan, model: ModelDescription) -> dict[str, object]:
    """``plan`` as Galvatron's strategy JSON object (json.dumps it to a file). Raises
    ValueError naming what Galvatron cannot express (``unsupported``). Run it with
    ``run_settings(plan)``: the precision and Megatron-SP are run arguments there."""
    try:
        validate_plan(plan, model=model)
    except FormatError as error:
        raise ValueError(f"plan: {error}") from error
    problems = unsupported(plan)
    if problems:
        raise ValueError("Galvatron cannot run this plan: " + "; ".join(problems))
    strided = tuple(plan.mesh_axis_order) == STRIDED
    default_dp = _default_dp_type(plan)
    return {
        "pp_deg": plan.pipeline.degree,
        "tp_sizes_enc": _joined(layer.tp for layer in plan.layers),
        "tp_consecutive_flags": _joined(
            0 if strided and layer.tp > 1 else 1 for layer in plan.layers
        ),
        # Newer Galvatron parsers require it; older ones ignore it.
        "cp_sizes_enc": _joined(1 for _ in plan.layers),
        "dp_types_enc": _joined(int(layer.dp == "zero3") for layer in plan.layers),
        "use_sp": _joined(int(layer.sp == "ulysses") for layer in plan.layers),
        "checkpoint": _joined(int(layer.ckpt == "full") for layer in plan.layers),
        "global_bsz": plan.global_batch_size,
        "chunks": plan.num_micro_batches,
        "pp_division": _joined(plan.pipeline.stage_num_layers),
        "pipeline_type": PIPELINE_TYPES[plan.pipeline.schedule],
        "default_dp_type": default_dp,
        "vtp": plan.vocab.tp,
        "vsp": 0,
        "embed_sdp": int(plan.vocab.dp == "zero3"),
    }


def unsupported(plan: Plan) -> list[str]:
    """What Galvatron's strategy file and run arguments cannot express in ``plan`` (empty:
    ``export_strategy`` writes it exactly)."""
    problems: list[str] = []
    if plan.mesh_axis_order[0] != "pp":
        problems.append(
            f"mesh_axis_order [{', '.join(plan.mesh_axis_order)}]: Galvatron's pipeline "
            "stages are blocks of adjacent ranks (pp outermost)"
        )
    if tuple(plan.mesh_axis_order) == STRIDED and 1 < plan.vocab.tp < plan.devices_per_stage:
        problems.append(
            f"vocab.tp {plan.vocab.tp} under mesh_axis_order [pp, tp, dp]: Galvatron lays the "
            "embedding's and head's tp ranks adjacent whatever the blocks' flags"
        )
    if plan.pipeline.schedule not in PIPELINE_TYPES:
        problems.append(
            f"pipeline.schedule {plan.pipeline.schedule}: Galvatron runs gpipe and "
            "pipedream_flush (1F1B) only"
        )
    for mode in ("attention", "selective-op"):
        partial = [i for i, layer in enumerate(plan.layers) if layer.ckpt == mode]
        if partial:
            problems.append(
                f"layers {_spans(partial)}: ckpt {mode} (selective recompute); Galvatron "
                "recomputes whole layers only"
            )
    modes = _dp_modes(plan)
    zero1 = sorted(where for where, mode in modes.items() if mode == "zero1")
    if zero1:
        problems.append(
            f"{', '.join(zero1)}: zero1; Galvatron's data-parallel modes are ddp, zero2 and zero3"
        )
    defaults = sorted({mode for mode in modes.values() if mode not in ("zero3", "zero1")})
    if len(defaults) > 1:
        problems.append(
            f"data-parallel modes {' and '.join(defaults)} both used: Galvatron gives each "
            "layer either the one default_dp_type or zero3"
        )
    megatron = _megatron_sp(plan)
    if len(set(megatron.values())) > 1:
        on = [where for where, sp in megatron.items() if sp]
        off = [where for where, sp in megatron.items() if not sp]
        problems.append(
            f"Megatron-SP in {', '.join(on)} but not in {', '.join(off)}: Galvatron's "
            "sequence_parallel run argument covers every tensor-parallel layer"
        )
    return problems


def run_settings(plan: Plan) -> dict[str, object]:
    """The Galvatron run arguments the exported file needs beside it (args_schema.py names)."""
    return {
        "mixed_precision": plan.precision,
        "sequence_parallel": any(_megatron_sp(plan).values()),
    }


def _dp_modes(plan: Plan) -> dict[str, DpMode]:
    """The data-parallel mode of each layer (and of the vocabulary layers) whose group holds
    more than one device; over one device every mode is the same."""
    per_stage = plan.devices_per_stage
    modes: dict[str, DpMode] = {}
    for index, layer in enumerate(plan.layers):
        if per_stage // layer.tp > 1:
            modes[f"layers[{index}]"] = layer.dp
    if per_stage // plan.vocab.tp > 1:
        modes["vocab"] = plan.vocab.dp
    return modes


def _default_dp_type(plan: Plan) -> DpMode:
    defaults = {mode for mode in _dp_modes(plan).values() if mode != "zero3"}
    # With every group ZeRO-3 the default is moot; zero2 is what Galvatron's search writes.
    return defaults.pop() if defaults else "zero2"


def _megatron_sp(plan: Plan) -> dict[str, bool]:
    """For each tensor-parallel (not Ulysses) layer with more than one device: Megatron-SP?"""
    found: dict[str, bool] = {}
    indices = [i for i, x in enumerate(plan.layers) if x.tp > 1 and x.sp != "ulysses"]
    for sp in (True, False):
        chosen = [i for i in indices if (plan.layers[i].sp == "megatron") is sp]
        if chosen:
            found[f"layers {_spans(chosen)}"] = sp
    if plan.vocab.tp > 1:
        found["vocab"] = plan.vocab.sp
    return found


def _joined(values: Iterable[int]) -> str:
    return ",".join(str(value) for value in values)


def _spans(indices: Sequence[int]) -> str:
    """``0-19, 25`` for the indices 0..19 and 25."""
    spans: list[list[int]] = []
    for index in indices:
        if spans and spans[-1][1] == index - 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class _Reader:
    """Typed access to the file's keys; every problem a ValueError naming file and key."""

    def __init__(self, data: Mapping[str, object], source: str) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.source = source

    def error(self, key: str, message: str) -> ValueError:
        return ValueError(f"{self.source}: {key}: {message}")

    def refuse_unknown_keys(self) -> None:
        unknown = [str(key) for key in self.data if key not in KEYS]
        if unknown:
            raise self.error(
                unknown[0],
                "not a key of Galvatron's strategy files (the runtime reads "
                f"{', '.join(KEYS)}); {len(unknown)} such key(s): {', '.join(unknown)}",
            )

    def _value(self, key: str, default: object) -> object:
        if key in self.data:
            return self.data[key]
        if default is None:
            raise self.error(key, "missing (Galvatron's runtime needs it)")
        return default

    def integer(
        self,
        key: str,
        *,
        minimum: int | None = None,
        allowed: tuple[int, ...] | None = None,
        default: int | None = None,
    ) -> int:
        value = self._value(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        self._check(key, value, minimum, allowed)
        return value

    def integers(
        self,
        key: str,
        *,
        count: int | None = None,
        minimum: int | None = None,
        allowed: tuple[int, ...] | None = None,
        default: int | None = None,
    ) -> tuple[int, ...]:
        """A comma-separated string of integers (as Galvatron writes it), or a JSON list;
        ``default`` fills ``count`` items when the key is missing."""
        if key not in self.data and default is not None and count is not None:
            return (default,) * count
        raw = self._value(key, None)
        items: list[object]
        if isinstance(raw, str):
            items = [part.strip() for part in raw.split(",")]
        elif isinstance(raw, int) and not isinstance(raw, bool):
            items = [raw]
        elif isinstance(raw, list):
            items = list(raw)
        else:
            raise self.error(key, f"expected comma-separated integers, got {raw!r}")
        values: list[int] = []
        for index, item in enumerate(items):
            if isinstance(item, str) and re.fullmatch(r"[+-]?\d+", item):
                number = int(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                number = item
            else:
                raise self.error(key, f"item {index}: expected an integer, got {item!r}")
            self._check(key, number, minimum, allowed, where=f"item {index}: ")
            values.append(number)
        if count is not None and len(values) != count:
            raise self.error(key, f"expected {count} values, got {len(values)}")
        return tuple(values)

    def choice(self, key: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self._value(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def _check(
        self,
        key: str,
        value: int,
        minimum: int | None,
        allowed: tuple[int, ...] | None,
        *,
        where: str = "",
    ) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"{where}expected at least {minimum}, got {value}")
        if allowed is not None and value not in allowed:
            raise self.error(
                key, f"{where}expected one of {', '.join(map(str, allowed))}, got {value}"
            )

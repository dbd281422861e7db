"""Which strategies the search may give a layer, and the named restrictions of that space."""

from __future__ import annotations

from dataclasses import dataclass

from partita.formats import LayerDescription, ModelProfile
from partita.formats.common import CKPT_MODES, DP_MODES, SCHEDULES
from partita.simulator.search import DEFAULT_RECOMPUTE, DEFAULT_SCHEDULES
from partita.simulator.workload import Strategy

SPACES = ("full", "uniform", "3d", "nosp", "dp", "zero3")


@dataclass(frozen=True)
class SearchSpace:
    """``full``: everything per layer. ``uniform``: one strategy for all layers. ``3d``:
    Megatron-style (uniform tp with or without Megatron-SP, DDP or ZeRO-1, uniform
    checkpointing). ``nosp``: per layer, without sequence parallelism. ``dp``: plain data
    parallelism. ``zero3``: ZeRO-3 data parallelism."""

    name: str = "full"
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    max_pipeline_degree: int | None = None  # e.g. 1 for an executor without pipelines
    recompute: tuple[str, ...] = DEFAULT_RECOMPUTE  # the layers' ``ckpt`` modes to try
    vocab_sp: bool = True  # may the embedding and head split the sequence (``vocab.sp``)

    def __post_init__(self) -> None:
        if self.name not in SPACES:
            raise ValueError(f"unknown search space {self.name!r} (known: {', '.join(SPACES)})")
        for schedule in self.schedules:
            if schedule not in SCHEDULES:
                raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
        if not self.schedules:
            raise ValueError(f"no pipeline schedule to try (known: {', '.join(SCHEDULES)})")
        for mode in self.recompute:
            if mode not in CKPT_MODES:
                raise ValueError(
                    f"unknown recompute mode {mode!r} (known: {', '.join(CKPT_MODES)})"
                )
        if not self.recompute:
            raise ValueError(f"no recompute mode to try (known: {', '.join(CKPT_MODES)})")

    @property
    def per_layer(self) -> bool:
        return self.name in ("full", "nosp")

    @property
    def allows_pipeline(self) -> bool:
        return self.name not in ("dp", "zero3")

    def dp_modes(self) -> tuple[str, ...]:
        return {"3d": ("ddp", "zero1"), "dp": ("ddp",), "zero3": ("zero3",)}.get(
            self.name, DP_MODES
        )

    def sp_modes(self) -> tuple[str, ...]:
        return {
            "3d": ("none", "megatron"),
            "nosp": ("none",),
            "dp": ("none",),
            "zero3": ("none",),
        }.get(self.name, ("none", "megatron", "ulysses"))

    def allows_tp(self) -> bool:
        return self.name not in ("dp", "zero3")

    def ckpt_modes(self) -> tuple[str, ...]:
        return self.recompute


def layer_candidates(
    layer: LayerDescription,
    *,
    devices_per_stage: int,
    micro_batch: int,
    space: SearchSpace,
    profile: ModelProfile,
) -> list[Strategy]:
    """Strategies valid for ``layer`` that the model profile can price."""
    timed = profile.layer_type(layer.layer_type)
    if timed is None:
        raise ValueError(f"the model profile has no layer type {layer.layer_type!r}")
    priced = {(t.tp, t.sp) for t in timed.timings if t.seq_len == layer.seq_len}
    candidates = []
    for tp, sp in sorted(priced):
        if devices_per_stage % tp or not _fits_layer(layer, tp, sp):
            continue
        if (tp > 1 and not space.allows_tp()) or sp not in space.sp_modes():
            continue
        if micro_batch % (devices_per_stage // tp):
            continue
        for dp in space.dp_modes():
            for ckpt in space.ckpt_modes():
                if ckpt == "attention" and not layer.attention_flops_per_sample:
                    continue  # nothing to recompute: the same as "none"
                if ckpt == "selective-op" and layer.kind != "block":
                    continue  # the executor checkpoints blocks only
                candidates.append(Strategy(tp=tp, sp=sp, dp=dp, ckpt=ckpt))
    return candidates


def _fits_layer(layer: LayerDescription, tp: int, sp: str) -> bool:
    if tp == 1:
        return sp == "none"
    sizes = [layer.num_heads, layer.num_kv_heads]
    if sp == "ulysses":
        sizes.append(layer.seq_len)
    else:
        sizes += [layer.hidden_size, layer.ffn_size]
        if sp == "megatron":
            sizes.append(layer.seq_len)
    return all(size % tp == 0 for size in sizes if size)

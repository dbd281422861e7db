"""The summary table ``partita profile model`` prints at the end."""

from __future__ import annotations

from partita.formats import LayerMemory, LayerTiming, ModelProfile
from partita.formats.text_table import human_bytes, human_seconds, table


def summary(profile: ModelProfile) -> str:
    """One row per layer type, configuration and micro-batch."""
    rows = []
    for layer_type in profile.layer_types:
        memory = {(m.tp, m.sp, m.seq_len): m for m in layer_type.memory}
        for timing in layer_type.timings:
            rows.append(_row(layer_type.layer_type, timing, memory.get(_key(timing))))
    headers = (
        "layer type",
        "tp",
        "sp",
        "seq",
        "mb",
        "forward",
        "backward",
        "spread",
        "params",
        "act/sample",
        "ckpt/sample",
        "origin",
    )
    return table(headers, rows)


def _key(timing: LayerTiming) -> tuple[int, str, int]:
    return timing.tp, timing.sp, timing.seq_len


def _row(layer_type: str, timing: LayerTiming, memory: LayerMemory | None) -> list[object]:
    return [
        layer_type,
        timing.tp,
        timing.sp,
        timing.seq_len,
        timing.micro_batch,
        human_seconds(timing.forward_s),
        human_seconds(timing.backward_s),
        f"{timing.spread * 100:.0f}%",
        "-" if memory is None else human_bytes(memory.param_bytes),
        "-" if memory is None else human_bytes(memory.activation_bytes_per_sample),
        "-" if memory is None else human_bytes(memory.checkpoint_activation_bytes_per_sample),
        timing.origin,
    ]

"""Upgrades of older file versions, one step at a time, on the raw JSON object.

Each function takes the body of a version-N file (a dict, untrusted) and returns the body of
version N+1. Anything it cannot understand is left for the version N+1 decoder to report.
"""

from __future__ import annotations

from typing import Any

from partita.formats.errors import FormatError

_PLAN_V1_LAYER_KEYS = {"tp_degree": "tp", "sp_mode": "sp", "dp_mode": "dp", "checkpoint": "ckpt"}
_PLAN_V1_DP_MODES = {"zero-1": "zero1", "zero-2": "zero2", "zero-3": "zero3"}


def plan_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    """Plan v1 (the pre-0.1 draft) named per-layer keys ``tp_degree``, ``sp_mode``, ``dp_mode``
    and ``checkpoint``, spelled ZeRO stages ``zero-N`` and had no vocab strategy."""
    layers = body.get("layers")
    if not isinstance(layers, list):
        return body
    migrated = []
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise FormatError("expected an object (plan version 1 layer)", path=f"layers[{index}]")
        clashing = [
            old for old, new in _PLAN_V1_LAYER_KEYS.items() if old in layer and new in layer
        ]
        if clashing:
            old = clashing[0]
            raise FormatError(
                f"has both {old!r} (version 1) and {_PLAN_V1_LAYER_KEYS[old]!r} (version 2)",
                path=f"layers[{index}]",
            )
        renamed = {_PLAN_V1_LAYER_KEYS.get(key, key): value for key, value in layer.items()}
        dp = renamed.get("dp")
        if isinstance(dp, str):
            renamed["dp"] = _PLAN_V1_DP_MODES.get(dp, dp)
        migrated.append(renamed)
    upgraded = {**body, "layers": migrated}
    upgraded.setdefault("vocab", {"tp": 1, "sp": False, "dp": "ddp"})
    return upgraded


def plan_v2_to_v3(body: dict[str, Any]) -> dict[str, Any]:
    """Plan v2 checkpointed a layer whole or not at all (``ckpt`` true or false); version 3
    names the mode (``none``, ``attention``, ``full``) and adds ``pipeline.chunks`` (default 1)
    and the schedules ``interleaved-1f1b`` and ``zb-h1``."""
    layers = body.get("layers")
    if not isinstance(layers, list):
        return body
    migrated = []
    for layer in layers:
        if isinstance(layer, dict) and isinstance(layer.get("ckpt"), bool):
            layer = {**layer, "ckpt": "full" if layer["ckpt"] else "none"}
        migrated.append(layer)
    return {**body, "layers": migrated}


def checkpoint_v1_to_v2(body: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint manifest v1 recorded no files: an empty ``files`` says that the checkpoint
    cannot be verified (it is trusted, as it was before version 2)."""
    return {**body, "files": body.get("files", [])}


def added_optional_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A version that only added fields with defaults (and values to a field's choices): the
    older body is read unchanged. Hardware profile v1 -> v2: ``optimizer``; model profile v1 -> v2:
    ``param_tensors`` and ``backward_peak_bytes_per_sample`` of memory entries; model profile v2
    -> v3: ``attention``; model profile v3 -> v4: ``attention_forward_s`` and
    ``weight_backward_s`` of timings, ``attention_saved_bytes_per_sample`` of memory entries;
    model profile v4 -> v5: ``selective_forward_s`` and ``selective_recompute_s`` of timings and
    ``selective_saved_bytes_per_sample`` of memory entries; model profile v5 -> v6:
    ``attention_checkpoint_forward_s`` and ``attention_checkpoint_backward_s`` of timings; plan
    v3 -> v4: the ``ckpt`` mode ``selective-op``; run report v1 -> v2: ``settings``,
    ``resumed_from_step``, ``num_nodes`` and the status ``running``; run report v2 -> v3:
    ``attention``; run report v3 -> v4: the status ``interrupted``; run report v4 -> v5 and
    checkpoint manifest v2 -> v3: ``settings.init``; run report v5 -> v6: ``phases``; model
    description v1 -> v2: ``loss_bytes_per_sample`` of layers."""
    return body

"""Consistency checks, beyond field types, for the formats other than the plan."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from partita.formats.checkpoint_manifest import CheckpointManifest
from partita.formats.errors import FormatError
from partita.formats.hardware_profile import HardwareProfile
from partita.formats.model_description import ModelDescription
from partita.formats.model_profile import ModelProfile
from partita.formats.run_report import RunReport, StepRecord


def _first_duplicate(keys: Iterable[Hashable]) -> int | None:
    seen: set[Hashable] = set()
    for index, key in enumerate(keys):
        if key in seen:
            return index
        seen.add(key)
    return None


def check_model_description(model: ModelDescription) -> None:
    if not model.blocks:
        raise FormatError("expected at least one layer of kind 'block'", path="layers")
    duplicate = _first_duplicate(layer.name for layer in model.layers)
    if duplicate is not None:
        name = model.layers[duplicate].name
        raise FormatError(f"layer name {name!r} is used twice", path=f"layers[{duplicate}].name")
    kinds = [layer.kind for layer in model.layers]
    if kinds.count("embedding") > 1 or kinds.count("head") > 1:
        raise FormatError("expected at most one embedding and one head layer", path="layers")
    if "embedding" in kinds and kinds[0] != "embedding":
        raise FormatError("the embedding must be the first layer", path="layers")
    if "head" in kinds and kinds[-1] != "head":
        raise FormatError("the head must be the last layer", path="layers")
    for index, layer in enumerate(model.layers):
        if layer.attention_flops_per_sample > layer.forward_flops_per_sample * (1 + 1e-9):
            raise FormatError(
                f"attention_flops_per_sample {layer.attention_flops_per_sample:.6g} exceeds the "
                f"layer's forward_flops_per_sample {layer.forward_flops_per_sample:.6g}",
                path=f"layers[{index}].attention_flops_per_sample",
            )
        if layer.attention_kernel_flops_per_sample > layer.attention_flops_per_sample:
            raise FormatError(
                "attention_kernel_flops_per_sample exceeds attention_flops_per_sample (a kernel "
                "computes at most every pair)",
                path=f"layers[{index}].attention_kernel_flops_per_sample",
            )
        if layer.num_kv_heads and layer.num_heads % layer.num_kv_heads:
            raise FormatError(
                f"num_kv_heads {layer.num_kv_heads} does not divide num_heads {layer.num_heads}",
                path=f"layers[{index}].num_kv_heads",
            )
    if model.num_heads % model.num_kv_heads:
        raise FormatError(
            f"num_kv_heads {model.num_kv_heads} does not divide num_heads {model.num_heads}",
            path="num_kv_heads",
        )
    names = [layer.name for layer in model.layers]
    for index, name in enumerate(model.shared_vocabulary):
        if name not in names:
            raise FormatError(f"no layer is named {name!r}", path=f"shared_vocabulary[{index}]")
    if model.shared_vocabulary and not model.vocab_size:
        raise FormatError("a shared vocabulary table needs vocab_size > 0", path="vocab_size")


def check_model_profile(profile: ModelProfile) -> None:
    duplicate = _first_duplicate(lt.layer_type for lt in profile.layer_types)
    if duplicate is not None:
        raise FormatError(
            f"layer type {profile.layer_types[duplicate].layer_type!r} appears twice",
            path=f"layer_types[{duplicate}].layer_type",
        )
    for index, layer_type in enumerate(profile.layer_types):
        duplicate = _first_duplicate(
            (t.tp, t.sp, t.micro_batch, t.seq_len) for t in layer_type.timings
        )
        if duplicate is not None:
            raise FormatError(
                "a second timing for the same tp, sp, micro_batch and seq_len",
                path=f"layer_types[{index}].timings[{duplicate}]",
            )
        duplicate = _first_duplicate((m.tp, m.sp, m.seq_len) for m in layer_type.memory)
        if duplicate is not None:
            raise FormatError(
                "a second memory entry for the same tp, sp and seq_len",
                path=f"layer_types[{index}].memory[{duplicate}]",
            )


def check_hardware_profile(profile: HardwareProfile) -> None:
    if profile.backend == "nccl" and profile.device.kind != "cuda":
        raise FormatError("backend 'nccl' needs device kind 'cuda'", path="backend")
    for index, collective in enumerate(profile.collectives):
        path = f"collectives[{index}]"
        if collective.group_size > profile.world_size:
            raise FormatError(
                f"group_size {collective.group_size} exceeds the {profile.world_size} devices "
                "of the profile",
                path=f"{path}.group_size",
            )
        if collective.scope == "inter_node" and profile.num_nodes == 1:
            raise FormatError(
                "an inter_node measurement in a one-node profile", path=f"{path}.scope"
            )
        if collective.op == "p2p" and collective.group_size != 2:
            raise FormatError("p2p is between exactly 2 devices", path=f"{path}.group_size")


def _check_ranks(field: str, ranks: list[int], world_size: int) -> None:
    """Per-rank entries name distinct ranks of the run."""
    for index, rank in enumerate(ranks):
        if rank >= world_size:
            raise FormatError(
                f"rank {rank} is outside world_size {world_size}", path=f"{field}[{index}].rank"
            )
    duplicate = _first_duplicate(ranks)
    if duplicate is not None:
        raise FormatError("a second entry for the same rank", path=f"{field}[{duplicate}].rank")


def check_run_report(report: RunReport) -> None:
    if report.status in ("failed", "interrupted") and not report.error:
        article = "an" if report.status == "interrupted" else "a"
        raise FormatError(f"{article} {report.status} run must say why", path="error")
    _check_ranks("peak_memory", [memory.rank for memory in report.peak_memory], report.world_size)
    _check_ranks("phases", [phases.rank for phases in report.phases], report.world_size)
    if report.resumed_from_step is not None and report.resumed_from_step > len(report.steps):
        raise FormatError(
            f"a run resumed after step {report.resumed_from_step} but records only "
            f"{len(report.steps)} step(s)",
            path="resumed_from_step",
        )
    settings = report.settings
    if (
        report.status == "completed"
        and settings is not None
        and len(report.steps) != settings.steps
    ):
        raise FormatError(
            f"a completed run of {settings.steps} step(s) records {len(report.steps)}",
            path="steps",
        )


def _check_consecutive(steps: tuple[StepRecord, ...]) -> None:
    for index, record in enumerate(steps):
        if record.step != index:
            raise FormatError(
                f"expected step {index} (steps are recorded in order, once each), "
                f"got {record.step}",
                path=f"steps[{index}].step",
            )


def check_checkpoint_manifest(manifest: CheckpointManifest) -> None:
    if len(manifest.steps) != manifest.step:
        raise FormatError(
            f"a checkpoint after {manifest.step} step(s) records {len(manifest.steps)}",
            path="steps",
        )
    _check_consecutive(manifest.steps)
    if manifest.rng_ranks not in (0, manifest.world_size):
        raise FormatError(
            f"random generator states of {manifest.rng_ranks} ranks in a checkpoint of "
            f"{manifest.world_size}",
            path="rng_ranks",
        )
    _check_checkpoint_files(manifest)


_HEX = frozenset("0123456789abcdef")


def _check_checkpoint_files(manifest: CheckpointManifest) -> None:
    # A name is looked up in the checkpoint's own folder: anything with a directory part
    # would let a manifest send verification elsewhere.
    for index, record in enumerate(manifest.files):
        name = record.name
        if name in ("", ".", "..", "manifest.json") or "/" in name or "\\" in name:
            raise FormatError(
                f"expected the name of a file beside the manifest, got {name!r}",
                path=f"files[{index}].name",
            )
        if len(record.sha256) != 64 or not set(record.sha256) <= _HEX:
            raise FormatError(
                "expected 64 lowercase hexadecimal digits", path=f"files[{index}].sha256"
            )
    duplicate = _first_duplicate(record.name for record in manifest.files)
    if duplicate is not None:
        name = manifest.files[duplicate].name
        raise FormatError(f"file {name!r} is listed twice", path=f"files[{duplicate}].name")

"""Readable, terminal-sized summaries of every Partita format."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from itertools import groupby
from typing import Any

from partita.formats.checkpoint_manifest import CheckpointManifest
from partita.formats.hardware_profile import HardwareProfile
from partita.formats.model_description import ModelDescription
from partita.formats.model_profile import ModelProfile
from partita.formats.plan import Plan
from partita.formats.registry import spec_for
from partita.formats.run_report import RunReport, StepRecord
from partita.formats.text_table import human_bytes, human_rate, human_seconds, table


def summarize(obj: Any, *, source: str = "") -> str:
    spec = spec_for(obj)
    heading = f"{spec.title} ({spec.name} v{spec.version})" + (f": {source}" if source else "")
    body = _SUMMARIZERS[type(obj)](obj)
    return f"{heading}\n{body}"


def _plan(plan: Plan) -> str:
    pipeline = plan.pipeline
    lines = [
        f"  model {plan.provenance.model or '(unnamed)'}, precision {plan.precision}",
        f"  world size {plan.world_size} = {pipeline.degree} pipeline stage(s) x "
        f"{plan.devices_per_stage} devices; mesh axis order {', '.join(plan.mesh_axis_order)}",
        f"  global batch {plan.global_batch_size} in {plan.num_micro_batches} micro-batch(es) "
        f"of {plan.micro_batch_size}; schedule {pipeline.schedule}"
        + (f", {pipeline.chunks} chunks per rank" if pipeline.chunks > 1 else ""),
        f"  embedding and head: vocab-parallel {plan.vocab.tp}, "
        f"sequence-parallel {'on' if plan.vocab.sp else 'off'}, {plan.vocab.dp} "
        f"over {plan.dp_degree(plan.vocab.tp)}",
    ]
    if plan.predictions is not None:
        p = plan.predictions
        memory = ", ".join(human_bytes(b) for b in p.peak_memory_bytes_per_stage)
        lines.append(
            f"  predicted: iteration {human_seconds(p.iteration_time_s)}, "
            f"{p.throughput_samples_per_s:.2f} samples/s, peak memory per stage {memory}"
        )
    lines.append("")
    stage = "stage" if pipeline.chunks == 1 else "stage.chunk"
    lines.append(table(["layers", stage, "tp", "sp", "dp", "dp size", "ckpt"], _layer_rows(plan)))
    return "\n".join(lines)


def _layer_rows(plan: Plan) -> list[list[object]]:
    pipeline = plan.pipeline

    def stage_of(index: int) -> str:
        virtual = plan.virtual_stage_of_layer(index)
        rank, chunk = virtual % pipeline.degree, virtual // pipeline.degree
        return str(rank) if pipeline.chunks == 1 else f"{rank}.{chunk}"

    keyed = [
        (stage_of(i), layer.tp, layer.sp, layer.dp, layer.ckpt, i)
        for i, layer in enumerate(plan.layers)
    ]
    rows: list[list[object]] = []
    for (stage, tp, sp, dp, ckpt), run in groupby(keyed, key=lambda k: k[:5]):
        indices = [k[5] for k in run]
        span = str(indices[0]) if len(indices) == 1 else f"{indices[0]}-{indices[-1]}"
        rows.append([span, stage, tp, sp, dp, plan.dp_degree(tp), ckpt])
    return rows


def _hardware(profile: HardwareProfile) -> str:
    device = profile.device
    lines = [
        f"  {profile.name} ({profile.origin}, backend {profile.backend})",
        f"  {profile.num_nodes} node(s) x {profile.devices_per_node} {device.kind} device(s) "
        f"'{device.name}' with {human_bytes(device.memory_bytes)} each",
        f"  overlap slowdown: compute x{profile.overlap.compute:.2f}, "
        f"communication x{profile.overlap.communication:.2f}",
        "",
        table(
            ["dtype", "matmul", "spread"],
            [
                [c.dtype, human_rate(c.flops_per_s, "FLOP/s"), f"{c.spread:.1%}"]
                for c in profile.compute
            ],
        ),
    ]
    if profile.collectives:
        rows = [
            [
                c.op,
                c.group_size,
                c.placement,
                c.scope,
                human_seconds(c.latency_s),
                human_rate(c.bandwidth_bytes_per_s, "B/s"),
                len(c.samples),
            ]
            for c in profile.collectives
        ]
        headers = ["collective", "group", "placement", "scope", "latency", "bandwidth", "samples"]
        lines += ["", table(headers, rows)]
    return "\n".join(lines)


def _model_profile(profile: ModelProfile) -> str:
    attention = f", {profile.attention} attention" if profile.attention else ""
    lines = [f"  {profile.model} on {profile.device}, {profile.dtype}{attention}, {profile.origin}"]
    if profile.efficiencies:
        shown = ", ".join(f"{k} {v:.0%}" for k, v in sorted(profile.efficiencies.items()))
        lines.append(f"  efficiencies: {shown}")
    rows = []
    for layer_type in profile.layer_types:
        for t in layer_type.timings:
            rows.append(
                [
                    layer_type.layer_type,
                    t.tp,
                    t.sp,
                    t.micro_batch,
                    t.seq_len,
                    human_seconds(t.forward_s),
                    human_seconds(t.backward_s),
                    t.origin,
                ]
            )
    headers = ["layer type", "tp", "sp", "batch", "seq", "forward", "backward", "origin"]
    lines += ["", table(headers, rows)]
    memory_rows = [
        [
            layer_type.layer_type,
            m.tp,
            m.sp,
            human_bytes(m.param_bytes),
            human_bytes(m.activation_bytes_per_sample),
            human_bytes(m.checkpoint_activation_bytes_per_sample),
        ]
        for layer_type in profile.layer_types
        for m in layer_type.memory
    ]
    if memory_rows:
        headers = ["layer type", "tp", "sp", "params", "act/sample", "ckpt act/sample"]
        lines += ["", table(headers, memory_rows)]
    return "\n".join(lines)


def _model_description(model: ModelDescription) -> str:
    lines = [
        f"  {model.name} ({model.family}): hidden {model.hidden_size}, heads {model.num_heads} "
        f"(kv {model.num_kv_heads}), ffn {model.ffn_size}, seq {model.seq_len}, "
        f"vocab {model.vocab_size}",
        f"  {len(model.layers)} layers ({len(model.blocks)} blocks), "
        f"{model.params:,} parameters, "
        f"{sum(layer.forward_flops_per_sample for layer in model.layers) / 1e9:.3f} GFLOP "
        "forward per sample",
        "",
    ]
    rows = [
        [
            layer.name,
            layer.kind,
            layer.layer_type,
            f"{layer.params:,}",
            f"{layer.forward_flops_per_sample / 1e9:.4f}",
            human_bytes(layer.activation_bytes_per_sample),
            human_bytes(layer.loss_bytes_per_sample) if layer.loss_bytes_per_sample else "",
        ]
        for layer in model.layers
    ]
    headers = ["layer", "kind", "type", "params", "fwd GFLOP", "act/sample", "fp32 loss/sample"]
    lines.append(table(headers, rows))
    return "\n".join(lines)


def _run_report(report: RunReport) -> str:
    nodes = f"{report.num_nodes} node(s), " if report.num_nodes > 1 else ""
    planned = f" of {report.settings.steps}" if report.settings is not None else ""
    attention = f", {report.attention} attention" if report.attention else ""
    lines = [
        f"  {report.model} on {nodes}{report.world_size} x {report.device} ({report.backend}"
        f"{attention}): {report.status}, {len(report.steps)} step(s){planned}"
    ]
    if report.resumed_from_step is not None:
        lines.append(f"  resumed from the checkpoint after step {report.resumed_from_step}")
    if report.error:
        lines.append(f"  error: {report.error}")
    if report.steps:
        lines.append(
            f"  {_loss_and_time(report.steps)}; {report.throughput_per_s:.1f} {report.unit}/s"
        )
    if report.peak_memory:
        lines += [
            f"  peak memory ({report.memory_method}):",
            table(
                ["rank", "peak"], [[m.rank, human_bytes(m.peak_bytes)] for m in report.peak_memory]
            ),
        ]
    return "\n".join(lines)


def _loss_and_time(steps: tuple[StepRecord, ...]) -> str:
    median_step = statistics.median(s.time_s for s in steps)
    return (
        f"loss {_loss(steps[0].loss)} -> {_loss(steps[-1].loss)}; "
        f"median step {human_seconds(median_step)}"
    )


def _checkpoint(manifest: CheckpointManifest) -> str:
    settings = manifest.settings
    lines = [
        f"  {manifest.model} after step {manifest.step} of {settings.steps}, saved by "
        f"{manifest.world_size} rank(s); data position {manifest.data_position} "
        f"({settings.data})",
        f"  lr {settings.lr:g}, seed {settings.seed}; random generators of "
        f"{manifest.rng_ranks} rank(s)",
    ]
    if manifest.steps:
        lines.append(f"  {_loss_and_time(manifest.steps)}")
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


_SUMMARIZERS: dict[type, Callable[[Any], str]] = {
    Plan: _plan,
    HardwareProfile: _hardware,
    ModelProfile: _model_profile,
    ModelDescription: _model_description,
    RunReport: _run_report,
    CheckpointManifest: _checkpoint,
}

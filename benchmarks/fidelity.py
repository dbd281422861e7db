"""Fidelity benchmark: the simulator's predictions against real `partita train` runs.

For a tiny model at each world size (gloo ranks on this CPU host): profile the machine and the
model, enumerate every valid uniform plan the executor runs plus a few pipeline and seeded
random layer-wise plans, train each for a few steps (twice by default: a second pass in
reverse order, see ``run_passes``), profile the machine and the model again between the
passes and after them, and simulate each plan (iteration time, peak memory per rank) from
all the profiles averaged (see ``predict_from_profiles``: the host's speed drifts over the
minutes the plans take and one profile scatters; the errors from the first and the last
profile alone and the drift between them are reported too). Writes
``fidelity.json`` (per plan and per world size: median and p90 absolute relative error of time
and memory, Spearman rank correlation of times, targets met) and ``fidelity.png`` (predicted
against measured).

    python benchmarks/fidelity.py --out-dir DIR [--worlds 2,4] [--model gpt-tiny] [--steps N]
        [--passes 2] [--quick]
    python benchmarks/fidelity.py --out-dir DIR --replot RUN/fidelity.json   # redraw only

A script, not a pytest file: it takes minutes (one `partita train` per plan). The errors are
|predicted - measured| / measured. On a 2-core host world size 4 oversubscribes the cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import numpy as np

from partita.formats import (
    FormatError,
    HardwareProfile,
    LayerStrategy,
    ModelDescription,
    ModelProfile,
    OverlapSlowdown,
    PipelineConfig,
    Plan,
    RunReport,
    SyncCost,
    TensorWork,
    VocabStrategy,
    load,
    save,
    validate_plan,
)
from partita.formats.common import CKPT_MODES, DP_MODES

GLOBAL_BATCH = 4  # local micro-batches of 1, 2 or 4: the profiled batch sizes
BATCH_SIZES = ("1", "2", "4")
WARMUP_STEPS = 3  # as demo/demo_compare.py: left out of the measured step time
TARGETS = {"median_time_error": 0.10, "median_memory_error": 0.10, "spearman_time": 0.9}
NUM_RANDOM_LAYERWISE = 4
Fitted = TypeVar("Fitted", TensorWork, SyncCost, OverlapSlowdown)  # costs fitted to floats
TRAIN_TIMEOUT_S = 600
# Timed runs per layer configuration in each of PROFILE_ROUNDS passes over all of them: 30
# in all, against the profiler's default 10 in one pass, since layer times on this shared
# host scatter (an IQR of 20-60% of the median for tp > 1) and drift over minutes. Ten a
# pass, as the profiler's default, so that its trimmed mean drops a pass's slowest and
# fastest repeat (with 7 it drops none, and one stalled repeat moves a pass's time).
PROFILE_REPEATS = "10"
PROFILE_ROUNDS = "3"


@dataclass
class Case:
    name: str
    world: int
    plan: Plan
    predicted_time_s: float | None = None
    predicted_memory_bytes: float | None = None
    measured_time_s: float | None = None
    measured_memory_bytes: float | None = None
    error: str | None = None
    wall_s: float = 0.0
    pass_times_s: list[float] = field(default_factory=list)  # median step time of each pass
    extra: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "world": self.world,
            "predicted_time_s": self.predicted_time_s,
            "measured_time_s": self.measured_time_s,
            "time_error": _rel_error(self.predicted_time_s, self.measured_time_s),
            "predicted_memory_bytes": self.predicted_memory_bytes,
            "measured_memory_bytes": self.measured_memory_bytes,
            "memory_error": _rel_error(self.predicted_memory_bytes, self.measured_memory_bytes),
            "error": self.error,
            "wall_s": round(self.wall_s, 2),
            "measured_time_s_passes": self.pass_times_s,
            **self.extra,
        }


def _rel_error(predicted: float | None, measured: float | None) -> float | None:
    """Signed (predicted - measured) / measured; None when either is missing."""
    if predicted is None or measured is None or measured <= 0:
        return None
    return (predicted - measured) / measured


# ---------------------------------------------------------------- running partita


def partita_cli() -> str:
    beside = Path(sys.executable).with_name("partita")
    return str(beside) if beside.is_file() else "partita"


def run_partita(args: list[str], *, log: Path, timeout_s: float = TRAIN_TIMEOUT_S) -> None:
    """Run ``partita ARGS`` into ``log``; raise RuntimeError with its last line on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    with log.open("w") as sink:
        sink.write("$ partita " + " ".join(args) + "\n")
        sink.flush()
        try:
            result = subprocess.run(
                [partita_cli(), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s (log: {log})") from expired
    if result.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        raise RuntimeError(f"exit {result.returncode}: {last} (log: {log})")


@dataclass(frozen=True)
class Profiles:
    world: int
    source: str  # the model as given (a preset or a directory)
    folder: Path
    model: ModelDescription
    hardware: HardwareProfile
    model_profile: ModelProfile
    quick: bool = False  # profiled with --quick (and so profiled again)


def _model_profile_args(model: str, world: int, folder: Path) -> list[str]:
    tps = [str(t) for t in (1, 2, 4, 8) if t <= world]
    return [
        "profile", "model", "--model", model, "--batch-sizes", *BATCH_SIZES, "--tp", *tps,
        "--nproc", str(world), "--device", "cpu", "--repeats", PROFILE_REPEATS,
        "--rounds", PROFILE_ROUNDS,
        "--out", str(folder / "model_profile.json"),
    ]  # fmt: skip


def _hardware_profile_args(world: int, folder: Path, *, quick: bool) -> list[str]:
    return [
        "profile", "hardware", "--nproc", str(world), "--backend", "gloo",
        *(["--quick"] if quick else []), "--out", str(folder / "hardware.json"),
    ]  # fmt: skip


def profile(*, model: str, world: int, folder: Path, quick: bool) -> Profiles:
    folder.mkdir(parents=True, exist_ok=True)
    logs = folder / "logs"
    steps = [
        ("describe", ["describe", model, "--out", str(folder / "model.json")]),
        ("profile-hardware", _hardware_profile_args(world, folder, quick=quick)),
        ("profile-model", _model_profile_args(model, world, folder)),
    ]
    for name, args in steps:
        started = time.monotonic()
        run_partita(args, log=logs / f"{name}.log", timeout_s=1200)
        print(f"[world {world}] {name}: {time.monotonic() - started:.1f} s", flush=True)
    return load_profiles(world=world, source=model, folder=folder, quick=quick)


def load_profiles(
    *, world: int, source: str, folder: Path, label: str = "", quick: bool = False
) -> Profiles:
    """The profiles of one world of a run folder: the model description and, from
    ``folder/label`` (the first profiles where ``label`` is empty), hardware and model."""
    return Profiles(
        world=world,
        source=source,
        folder=folder,
        model=load(folder / "model.json", ModelDescription),
        hardware=load(folder / label / "hardware.json", HardwareProfile),
        model_profile=load(folder / label / "model_profile.json", ModelProfile),
        quick=quick,
    )


# ---------------------------------------------------------------- the plans


def make_plan(
    *,
    world: int,
    layers: tuple[LayerStrategy, ...],
    vocab: VocabStrategy,
    pp: int = 1,
    schedule: str = "gpipe",
    micro_batches: int = 1,
    chunks: int = 1,
) -> Plan:
    n, stages = len(layers), pp * chunks
    per_stage = [n // stages + (1 if i < n % stages else 0) for i in range(stages)]
    return Plan(
        world_size=world,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=GLOBAL_BATCH,
        num_micro_batches=micro_batches,
        pipeline=PipelineConfig(
            degree=pp, schedule=schedule, stage_num_layers=tuple(per_stage), chunks=chunks
        ),
        layers=layers,
        vocab=vocab,
    )


def runnable(plan: Plan, model: ModelDescription) -> bool:
    from partita.executor.trainer import check_supported

    try:
        validate_plan(plan, world_size=plan.world_size, model=model)
        check_supported(plan)
    except (FormatError, ValueError):
        return False
    return True


def strategy_name(layer: LayerStrategy) -> str:
    words = [f"tp{layer.tp}"] if layer.tp > 1 else []
    if layer.sp != "none":
        words.append(layer.sp)
    words.append(layer.dp)
    if layer.ckpt != "none":
        words.append("ckpt" if layer.ckpt == "full" else f"ckpt-{layer.ckpt}")
    return "-".join(words)


def layer_candidates(world: int) -> list[LayerStrategy]:
    tps = [t for t in (1, 2, 4, 8) if world % t == 0]
    out = []
    sps, dps, ckpts = ("none", "megatron", "ulysses"), DP_MODES, CKPT_MODES
    for tp, sp, dp, ckpt in itertools.product(tps, sps, dps, ckpts):
        if tp == 1 and sp != "none":
            continue
        out.append(LayerStrategy(tp=tp, sp=sp, dp=dp, ckpt=ckpt))
    return out


def uniform_plans(world: int, model: ModelDescription) -> list[tuple[str, Plan]]:
    n = len(model.blocks)
    plans = []
    for layer in layer_candidates(world):
        vocab = VocabStrategy(tp=layer.tp if layer.sp == "none" else 1, dp=layer.dp)
        plan = make_plan(world=world, layers=(layer,) * n, vocab=vocab)
        if runnable(plan, model):
            plans.append((strategy_name(layer), plan))
        if layer.sp == "megatron" and layer.ckpt == "none":
            # The embedding and head split along the sequence too (vocab.sp), as Megatron-SP
            # runs them: its blocks' all-gather/reduce-scatter pairs reach the ends.
            split = VocabStrategy(tp=layer.tp, sp=True, dp=layer.dp)
            plan = make_plan(world=world, layers=(layer,) * n, vocab=split)
            if runnable(plan, model):
                plans.append((f"{strategy_name(layer)}-vocab-sp", plan))
    return plans


def pipeline_plans(world: int, model: ModelDescription) -> list[tuple[str, Plan]]:
    n = len(model.blocks)
    plans = []
    shapes = [(s, 1) for s in ("gpipe", "1f1b", "zb-h1")] + [("interleaved-1f1b", 2)]
    for (schedule, chunks), micro_batches in itertools.product(shapes, (2, 4)):
        layer = LayerStrategy()
        plan = make_plan(
            world=world,
            layers=(layer,) * n,
            vocab=VocabStrategy(),
            pp=2,
            schedule=schedule,
            micro_batches=micro_batches,
            chunks=chunks,
        )
        if world % 2 == 0 and runnable(plan, model):
            name = schedule if chunks == 1 else f"{schedule}{chunks}"
            plans.append((f"pp2-{name}-x{micro_batches}", plan))
    return plans


def layerwise_plans(world: int, model: ModelDescription, *, count: int) -> list[tuple[str, Plan]]:
    rng = random.Random(1234 + world)
    candidates = layer_candidates(world)
    n = len(model.blocks)
    plans: list[tuple[str, Plan]] = []
    for _ in range(200):
        if len(plans) >= count:
            break
        layers = tuple(rng.choice(candidates) for _ in range(n))
        if len(set(layers)) == 1:
            continue
        tp = rng.choice(sorted({layer.tp for layer in layers if layer.sp == "none"} | {1}))
        vocab = VocabStrategy(tp=tp, dp=rng.choice([layer.dp for layer in layers]))
        pp, micro_batches = rng.choice([(1, 1), (2, 2)]) if world >= 4 else (1, 1)
        plan = make_plan(
            world=world, layers=layers, vocab=vocab, pp=pp, schedule="1f1b",
            micro_batches=micro_batches,
        )  # fmt: skip
        if runnable(plan, model):
            plans.append((f"layerwise-{len(plans)}" + (f"-pp{pp}" if pp > 1 else ""), plan))
    return plans


QUICK_UNIFORM = {
    "ddp", "zero1", "zero2", "zero3", "ddp-ckpt", "ddp-ckpt-attention", "tp2-ddp",
    "tp2-megatron-ddp", "tp2-ulysses-ddp", "tp2-zero3", "tp2-megatron-ddp-vocab-sp",
    "ddp-ckpt-selective-op", "tp2-megatron-zero3-ckpt-selective-op",
}  # fmt: skip


def all_plans(world: int, model: ModelDescription, *, quick: bool) -> list[tuple[str, Plan]]:
    uniform = uniform_plans(world, model)
    pipelines = pipeline_plans(world, model)
    if quick:
        uniform = [(name, plan) for name, plan in uniform if name in QUICK_UNIFORM]
        quick_pipelines = (
            "pp2-1f1b-x2", "pp2-gpipe-x4", "pp2-zb-h1-x4", "pp2-zb-h1-x2",
            "pp2-interleaved-1f1b2-x2",
        )  # fmt: skip
        pipelines = [(n, p) for n, p in pipelines if n in quick_pipelines]
    layerwise = layerwise_plans(world, model, count=1 if quick else NUM_RANDOM_LAYERWISE)
    return uniform + pipelines + layerwise


# ---------------------------------------------------------------- measure one plan


def predict(case: Case, profiles: Profiles) -> None:
    from partita.simulator.simulation import simulate

    result = simulate(
        case.plan,
        hardware=profiles.hardware,
        model_profile=profiles.model_profile,
        model=profiles.model,
        record_events=False,
    )
    case.predicted_time_s = result.iteration_time_s
    case.predicted_memory_bytes = max(result.peak_memory_bytes)
    case.extra["predicted_phases_s"] = [
        [stage.phases.schedule_s, stage.phases.grad_sync_s, stage.phases.optimizer_s,
         stage.phases.step_end_s]
        for stage in result.stages
        if stage.phases is not None
    ]  # fmt: skip


def measure(case: Case, *, profiles: Profiles, model: str, steps: int, repeat: int) -> None:
    """Train the plan once (``repeat`` numbers the pass) and record its median step time and
    peak memory; the case's measurement is the mean of its passes' medians."""
    folder = profiles.folder / "plans" / case.name
    if repeat:
        folder = folder / f"pass{repeat + 1}"
    folder.mkdir(parents=True, exist_ok=True)
    save(case.plan, folder / "plan.json")
    run_partita(
        ["train", "--plan", str(folder / "plan.json"), "--model", model, "--steps", str(steps),
         "--nproc", str(case.world), "--run-dir", str(folder / "train"),
         "--no-final-checkpoint", "--overwrite"],  # a rerun into the same --out-dir
        log=folder / "train.log",
    )  # fmt: skip
    report = load(folder / "train" / "run_report.json", RunReport)
    if report.status != "completed":
        raise RuntimeError(f"run report status {report.status}: {report.error}")
    times = [s.time_s for s in report.steps]
    case.pass_times_s.append(statistics.median(times[WARMUP_STEPS:] or times))
    case.measured_time_s = statistics.fmean(case.pass_times_s)
    peak = max(m.peak_bytes for m in report.peak_memory)
    case.measured_memory_bytes = max(peak, case.measured_memory_bytes or 0)
    case.extra["memory_method"] = report.memory_method
    _add_measured_phases(case, report)


PHASES = ("schedule", "grad_sync", "optimizer", "step_end")


def _add_measured_phases(case: Case, report: RunReport) -> None:
    """Each rank's phases (``RankPhases``), as ``[stage, schedule, grad_sync, optimizer,
    step_end]``, averaged over the passes so far."""
    from partita.simulator.html_report_inputs import stage_of_rank

    if not report.phases:
        return
    new = [
        [stage_of_rank(case.plan, p.rank), p.schedule_s, p.grad_sync_s, p.optimizer_s,
         p.step_end_s]
        for p in report.phases
    ]  # fmt: skip
    passes = len(case.pass_times_s)
    old = case.extra.get("measured_phases_s")
    if isinstance(old, list) and passes > 1 and len(old) == len(new):
        keep = (passes - 1) / passes  # the passes before, against this one
        new = [
            [now[0], *(keep * a + (1 - keep) * b for a, b in zip(was[1:], now[1:], strict=True))]
            for was, now in zip(old, new, strict=True)
        ]
    case.extra["measured_phases_s"] = new


def phase_differences(case: Case) -> list[float] | None:
    """Predicted minus measured seconds of each phase, the mean over a plan's ranks (each
    against its stage's prediction); None without both."""
    predicted, measured = case.extra.get("predicted_phases_s"), case.extra.get("measured_phases_s")
    if not isinstance(predicted, list) or not isinstance(measured, list) or not measured:
        return None
    sums = [0.0] * len(PHASES)
    for rank in measured:
        stage = predicted[int(rank[0])]
        for i in range(len(PHASES)):
            sums[i] += float(stage[i]) - float(rank[1 + i])
    return [total / len(measured) for total in sums]


def run_case(case: Case, *, profiles: Profiles, model: str, steps: int, repeat: int) -> None:
    started = time.monotonic()
    try:
        if not repeat:
            predict(case, profiles)
        measure(case, profiles=profiles, model=model, steps=steps, repeat=repeat)
    except Exception as error:  # a failing plan is recorded, the run goes on
        case.error = f"{type(error).__name__}: {error}"
    case.wall_s += time.monotonic() - started


def run_passes(
    plans: list[tuple[str, Plan]],
    *,
    profiles: Profiles,
    model: str,
    steps: int,
    passes: int,
    between: Callable[[int], object] | None = None,
) -> list[Case]:
    """Every plan trained ``passes`` times, every other pass in reverse order; ``between(k)``
    runs after pass k (1-based) when another follows.

    Step times of one plan differ by ~15% between runs minutes apart on this host, as much
    as the cost differences between many plans. Going back and forth puts every plan's mean
    position at the middle of the run, where the averaged profiles stand, and the spread
    between passes says how far measurements alone can be trusted.
    """
    cases = [Case(name=name, world=profiles.world, plan=plan) for name, plan in plans]
    for repeat in range(passes):
        order = list(enumerate(cases, start=1))
        for index, case in order if repeat % 2 == 0 else reversed(order):
            if case.error is not None:
                continue
            run_case(case, profiles=profiles, model=model, steps=steps, repeat=repeat)
            print(progress_line(index, len(cases), case, repeat=repeat, passes=passes), flush=True)
        if between is not None and repeat < passes - 1:
            between(repeat + 1)
    return cases


def progress_line(index: int, total: int, case: Case, *, repeat: int = 0, passes: int = 1) -> str:
    step = f" pass {repeat + 1}/{passes}" if passes > 1 else ""
    head = f"[world {case.world}{step}] {index:>2}/{total} {case.name:<28}"
    if case.error:
        return f"{head} FAILED ({case.wall_s:.0f} s): {case.error}"
    row = case.as_json()
    return (
        f"{head} time {_ms(case.predicted_time_s)} pred / {_ms(case.measured_time_s)} meas "
        f"({_pct(row['time_error'])}); memory {_mib(case.predicted_memory_bytes)} pred / "
        f"{_mib(case.measured_memory_bytes)} meas ({_pct(row['memory_error'])}) "
        f"[{case.wall_s:.0f} s]"
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:8.1f} ms"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:7.2f} MiB"


def _fraction(value: object) -> str:
    return "-" if not isinstance(value, float) else f"{value * 100:.1f}%"


def _correlation(value: object) -> str:
    return "-" if not isinstance(value, float) else f"{value:.3f}"


def _pct(value: object) -> str:
    return "-" if not isinstance(value, float) else f"{value * 100:+.1f}%"


def reprofile(before: Profiles, label: str) -> Profiles | None:
    """The hardware and the model profiled again (into ``label/``), as ``before`` was; None
    (said on the console) if profiling fails, the run goes on with the others."""

    world = before.world
    folder = before.folder / label
    steps = [
        ("profile-hardware", _hardware_profile_args(world, folder, quick=before.quick)),
        ("profile-model", _model_profile_args(before.source, world, folder)),
    ]
    try:
        for name, args in steps:
            started = time.monotonic()
            run_partita(args, log=folder / "logs" / f"{name}.log", timeout_s=1200)
            print(f"[world {world}] {name} ({label}): {time.monotonic() - started:.1f} s")
    except RuntimeError as error:
        print(f"[world {world}] profiling ({label}) failed: {error}", flush=True)
        return None
    return load_profiles(
        world=world, source=before.source, folder=before.folder, label=label, quick=before.quick
    )


def predict_from_profiles(cases: list[Case], taken: list[tuple[str, Profiles]]) -> None:
    """Predict every plan from all the profiles ``taken`` (label, profiles; in the order they
    were taken) averaged (``predicted_*``); the time predicted from each alone is kept as
    ``predicted_time_s_<label>``.

    On a shared host the speed drifts over minutes and one profile's layer times scatter by
    ~10% (two profiles taken 15 minutes apart differed by 20-30% here). Averaging profiles
    taken before, between and after the passes lets them see the host as it was during the
    runs, so what the errors measure is the cost model rather than the drift (which is
    reported apart).
    """
    from dataclasses import replace

    first = taken[0][1]
    merged = replace(
        first,
        hardware=merge_hardware([p.hardware for _, p in taken]),
        model_profile=merge_model_profiles([p.model_profile for _, p in taken]),
    )
    save(merged.hardware, first.folder / "merged" / "hardware.json")
    save(merged.model_profile, first.folder / "merged" / "model_profile.json")
    for case in cases:
        if case.world != first.world or case.error is not None:
            continue
        for label, profiles in taken:
            predict(case, profiles)
            case.extra[f"predicted_time_s_{label}"] = case.predicted_time_s
            case.extra[f"predicted_memory_bytes_{label}"] = case.predicted_memory_bytes
        predict(case, merged)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


Entry = TypeVar("Entry")


def _with_matches(
    entries: Iterable[Entry], others: Iterable[Iterable[Entry]], key: Callable[[Entry], object]
) -> Iterator[tuple[Entry, list[Entry]]]:
    """Each of ``entries`` with itself and the entries of the other profiles under its key."""
    indexed = [{key(e): e for e in group} for group in others]
    for entry in entries:
        k = key(entry)
        yield entry, [entry, *(index[k] for index in indexed if k in index)]


def merge_model_profiles(profiles: list[ModelProfile]) -> ModelProfile:
    """Timings averaged entry by entry (same layer type, tp, sp, batch, sequence) over the
    profiles that have the entry; memory, counted to the byte, from the first."""
    from dataclasses import replace

    first, others = profiles[0], profiles[1:]

    def mean_of(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return _mean(present) if len(present) == len(values) else None

    layer_types = []
    for layer_type in first.layer_types:
        later = [
            other.timings
            for other in (p.layer_type(layer_type.layer_type) for p in others)
            if other is not None
        ]
        timings = []
        for t, same in _with_matches(
            layer_type.timings, later, key=lambda t: (t.tp, t.sp, t.micro_batch, t.seq_len)
        ):
            timings.append(
                replace(
                    t,
                    forward_s=_mean([u.forward_s for u in same]),
                    backward_s=_mean([u.backward_s for u in same]),
                    spread=max(u.spread for u in same),
                    checkpoint_forward_s=mean_of([u.checkpoint_forward_s for u in same]),
                    checkpoint_backward_s=mean_of([u.checkpoint_backward_s for u in same]),
                )
            )
        layer_types.append(replace(layer_type, timings=tuple(timings)))
    return replace(first, layer_types=tuple(layer_types))


def merge_hardware(profiles: list[HardwareProfile]) -> HardwareProfile:
    """Fits averaged: latencies and seconds per byte (so bandwidths by their harmonic mean),
    matmul rates, overlap factors, the optimizer's and FSDP's costs."""
    from dataclasses import fields, replace

    first, others = profiles[0], profiles[1:]
    collectives = []
    for c, same in _with_matches(
        first.collectives,
        [p.collectives for p in others],
        key=lambda c: (c.op, c.group_size, c.placement, c.scope),
    ):
        collectives.append(
            replace(
                c,
                latency_s=_mean([d.latency_s for d in same]),
                bandwidth_bytes_per_s=1 / _mean([1 / d.bandwidth_bytes_per_s for d in same]),
            )
        )

    def work(values: list[Fitted | None]) -> Fitted | None:
        """Every float field of the fits of one cost averaged (over the profiles with one)."""
        present = [v for v in values if v is not None]
        if not present:
            return None
        x = present[0]
        # Numbers read from JSON may be ints (a fit of 0 s): not the origin, a string.
        floats = {f.name for f in fields(x) if isinstance(getattr(x, f.name), int | float)}
        return replace(x, **{name: _mean([getattr(v, name) for v in present]) for name in floats})

    return replace(
        first,
        collectives=tuple(collectives),
        compute=tuple(
            replace(c, flops_per_s=_mean([d.flops_per_s for d in same]))
            for c, same in _with_matches(
                first.compute, [p.compute for p in others], key=lambda c: c.dtype
            )
        ),
        overlap=work([p.overlap for p in profiles]),
        optimizer=work([p.optimizer for p in profiles]),
        fsdp_gather=work([p.fsdp_gather for p in profiles]),
        fsdp_reduce_scatter=work([p.fsdp_reduce_scatter for p in profiles]),
        ddp_reducer=work([p.ddp_reducer for p in profiles]),
        sync=work([p.sync for p in profiles]),
    )


# ---------------------------------------------------------------- statistics and output


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    out = np.empty(len(values))
    out[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def world_summary(cases: list[Case], world: int, cores: int) -> dict[str, object]:
    done = [c for c in cases if c.world == world and c.error is None]
    failed = [c for c in cases if c.world == world and c.error is not None]
    time_errors = [abs(c.as_json()["time_error"]) for c in done]  # type: ignore[arg-type]
    memory_errors = [abs(c.as_json()["memory_error"]) for c in done]  # type: ignore[arg-type]
    summary: dict[str, object] = {
        "world": world,
        "cores": cores,
        "oversubscribed": world > cores,
        "plans_run": len(done),
        "plans_failed": len(failed),
        "median_time_error": _quantile(time_errors, 0.5),
        "p90_time_error": _quantile(time_errors, 0.9),
        "median_memory_error": _quantile(memory_errors, 0.5),
        "p90_memory_error": _quantile(memory_errors, 0.9),
        "spearman_time": spearman(
            [c.predicted_time_s for c in done],  # type: ignore[misc]
            [c.measured_time_s for c in done],  # type: ignore[misc]
        ),
        "time_bias": _quantile([c.as_json()["time_error"] for c in done], 0.5),  # type: ignore[misc]
    }
    # Where the time error sits: the median over plans of predicted minus measured seconds
    # of each phase of the step (RankPhases).
    differences = [d for d in map(phase_differences, done) if d is not None]
    if differences:
        summary["phase_bias_s"] = {
            phase: _quantile([d[i] for d in differences], 0.5) for i, phase in enumerate(PHASES)
        }
    # The same plans predicted from each profile alone, and how far the two disagree.
    for label in ("before", "after"):
        key = f"predicted_time_s_{label}"
        alone = [c for c in done if key in c.extra]
        if alone:
            summary[f"median_time_error_profile_{label}_only"] = _quantile(
                [abs(float(c.extra[key]) / c.measured_time_s - 1) for c in alone],  # type: ignore[arg-type, operator]
                0.5,
            )
    paired = [c for c in done if "predicted_time_s_after" in c.extra]
    if paired:
        summary["profile_drift"] = _quantile(
            [
                abs(
                    float(c.extra["predicted_time_s_after"])
                    / float(c.extra["predicted_time_s_before"])
                    - 1
                )  # type: ignore[arg-type]
                for c in paired
            ],
            0.5,
        )
    # How far two trainings of the same plan agree: the noise floor of the errors above.
    repeated = [c for c in done if len(c.pass_times_s) > 1]
    if repeated:
        summary["measurement_spread"] = _quantile(
            [abs(c.pass_times_s[0] - c.pass_times_s[-1]) / c.measured_time_s for c in repeated],  # type: ignore[operator]
            0.5,
        )
        summary["spearman_between_passes"] = spearman(
            [c.pass_times_s[0] for c in repeated], [c.pass_times_s[-1] for c in repeated]
        )
    summary["targets"] = {
        key: (None if summary[key] is None else _meets(key, summary[key]))  # type: ignore[arg-type]
        for key in TARGETS
    }
    return summary


def _meets(key: str, value: float) -> bool:
    return value >= TARGETS[key] if key == "spearman_time" else value <= TARGETS[key]


def _signed_ms(seconds: object) -> str:
    return "-" if not isinstance(seconds, float) else f"{seconds * 1e3:+.2f} ms"


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def summary_table(summaries: list[dict[str, object]]) -> str:
    headers = ["world", "run", "failed", "time med", "time p90", "mem med", "mem p90",
               "spearman", "targets (time, mem, rank)"]  # fmt: skip
    rows = [headers]
    for s in summaries:
        targets = s["targets"]
        assert isinstance(targets, dict)
        marks = ", ".join(
            "-" if v is None else ("met" if v else "MISSED") for v in targets.values()
        )
        rows.append(
            [str(s["world"]) + (" (oversubscribed)" if s["oversubscribed"] else ""),
             str(s["plans_run"]), str(s["plans_failed"]), _fraction(s["median_time_error"]),
             _fraction(s["p90_time_error"]), _fraction(s["median_memory_error"]),
             _fraction(s["p90_memory_error"]), _correlation(s["spearman_time"]), marks]
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def plot(cases: list[Case] | list[SimpleNamespace], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    panels = [
        (left, "iteration time (ms)", "predicted_time_s", "measured_time_s", 1e3),
        (right, "peak memory per rank (MiB)", "predicted_memory_bytes", "measured_memory_bytes",
         1 / 2**20),
    ]  # fmt: skip
    worlds = sorted({c.world for c in cases})
    for axis, title, pred, meas, scale in panels:
        values = []
        for index, world in enumerate(worlds):
            done = [c for c in cases if c.world == world and c.error is None]
            xs = [getattr(c, meas) * scale for c in done]
            ys = [getattr(c, pred) * scale for c in done]
            values += xs + ys
            axis.scatter(xs, ys, color=f"C{index}", label=f"world {world}", alpha=0.8)
        if values:
            low, high = min(values) * 0.8, max(values) * 1.25
            axis.plot([low, high], [low, high], "k--", linewidth=1, label="y = x")
            axis.fill_between(
                [low, high], [low * 0.9, high * 0.9], [low * 1.1, high * 1.1],
                color="0.85", label="within 10%", zorder=0,
            )  # fmt: skip
            axis.set_xscale("log")
            axis.set_yscale("log")
            for ticks in (axis.xaxis, axis.yaxis):  # plain numbers, no crowded minor labels
                ticks.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ticks.set_major_formatter(ScalarFormatter())
                ticks.set_minor_formatter(NullFormatter())
        axis.set_xlabel(f"measured {title}")
        axis.set_ylabel(f"predicted {title}")
        axis.set_title(title)
        axis.legend()
    figure.suptitle("Partita simulator fidelity: predicted against measured (gloo, CPU)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def replot(report: Path, out: Path) -> int:
    """The scatter plot of an earlier run, from its JSON (no training)."""
    try:
        plans = json.loads(report.read_text())["plans"]
    except (OSError, ValueError, KeyError) as error:
        print(f"fidelity: error: {report}: cannot read the plans ({error})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    plot([SimpleNamespace(**plan) for plan in plans], out / "fidelity.png")
    print(out / "fidelity.png")
    return 0


def measured_again(case: Case, folder: Path) -> None:
    """A plan's measurement from its run folder: every pass's run report (``train/`` for the
    first, ``passN/train/`` for the others), as ``measure`` recorded it."""
    reports = [folder / "train", *sorted(folder.glob("pass*/train"))]
    for run in reports:
        report = load(run / "run_report.json", RunReport)
        if report.status != "completed":
            case.error = f"{run}: run report status {report.status}: {report.error}"
            return
        times = [s.time_s for s in report.steps]
        case.pass_times_s.append(statistics.median(times[WARMUP_STEPS:] or times))
        peak = max(m.peak_bytes for m in report.peak_memory)
        case.measured_memory_bytes = max(peak, case.measured_memory_bytes or 0)
        case.extra["memory_method"] = report.memory_method
        _add_measured_phases(case, report)
    case.measured_time_s = statistics.fmean(case.pass_times_s)


def rescore(run: Path, model: str, worlds: list[int]) -> list[Case]:
    """Every plan of an earlier run folder (``--out-dir``; stopped early or not) measured as it
    was recorded and predicted again with this checkout's simulator from the profiles the
    folder holds (before, between the passes, after)."""
    cases: list[Case] = []
    for world in worlds:
        folder = run / f"world{world}"
        if not (folder / "model_profile.json").is_file():
            raise ValueError(f"{folder}: no profiled world {world} in this run folder")
        taken = [("before", load_profiles(world=world, source=model, folder=folder))]
        for label in [f.name for f in sorted(folder.glob("between*"))] + ["after"]:
            if (folder / label / "model_profile.json").is_file():
                again = load_profiles(world=world, source=model, folder=folder, label=label)
                taken.append((label, again))
        plans = [d for d in sorted((folder / "plans").glob("*")) if (d / "train").is_dir()]
        for directory in plans:
            case = Case(name=directory.name, world=world, plan=load(directory / "plan.json", Plan))
            try:
                measured_again(case, directory)
            except (OSError, FormatError) as error:
                case.error = f"{type(error).__name__}: {error}"
            cases.append(case)
        predict_from_profiles(cases, taken)
        labels = ", ".join(label for label, _ in taken)
        print(f"[world {world}] {len(plans)} plans, profiles: {labels}")
    return cases


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--worlds", default="2,4", help="comma-separated world sizes")
    parser.add_argument("--model", default="gpt-tiny", help="a preset or a HF directory")
    parser.add_argument("--steps", type=int, default=None, help="training steps per plan")
    parser.add_argument("--quick", action="store_true", help="a small subset of the plans")
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="times each plan is trained, every other pass in reverse order (default 2)",
    )
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="redraw fidelity.png from a fidelity.json"
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        metavar="RUN",
        help="no training: predict the plans of an earlier --out-dir RUN (stopped early or not) "
        "again with this checkout's simulator, and write fidelity.json and .png to --out-dir",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        return replot(args.replot, args.out_dir)
    worlds = [int(w) for w in args.worlds.split(",") if w.strip()]
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    steps = args.steps or (10 if args.quick else 30)
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    started = time.monotonic()
    what = f"rescoring {args.rescore}" if args.rescore else f"{steps} steps"
    print(f"fidelity: {args.model}, worlds {worlds}, {what}, {cores} cores -> {out}")
    cases: list[Case] = []
    if args.rescore is not None:
        try:
            cases = rescore(args.rescore.resolve(), args.model, worlds)
        except (OSError, ValueError) as error:
            print(f"fidelity: error: {error}", file=sys.stderr)
            return 2
    for world in worlds if args.rescore is None else []:
        try:
            profiles = profile(
                model=args.model, world=world, folder=out / f"world{world}", quick=args.quick
            )
        except RuntimeError as error:
            print(f"[world {world}] profiling failed: {error}", flush=True)
            continue
        plans = all_plans(world, profiles.model, quick=args.quick)
        print(f"[world {world}] {len(plans)} plans, {args.passes} passes", flush=True)
        taken = [("before", profiles)]

        def between(
            done: int, before: Profiles = profiles, taken: list[tuple[str, Profiles]] = taken
        ) -> None:
            again = reprofile(before, f"between{done}")
            if again is not None:
                taken.append((f"between{done}", again))

        cases += run_passes(
            plans,
            profiles=profiles,
            model=args.model,
            steps=steps,
            passes=args.passes,
            between=between,
        )
        after = reprofile(profiles, "after")
        predict_from_profiles(cases, taken + ([("after", after)] if after is not None else []))
    summaries = [world_summary(cases, w, cores) for w in worlds if any(c.world == w for c in cases)]
    elapsed = time.monotonic() - started
    trained = {"steps": steps, "passes": args.passes, "quick": args.quick}
    if args.rescore is not None:  # how that run trained, not this command's defaults
        earlier = args.rescore / "fidelity.json"
        if earlier.exists():
            recorded = json.loads(earlier.read_text())
            trained = {key: recorded.get(key, value) for key, value in trained.items()}
    document = {
        "model": args.model,
        "global_batch_size": GLOBAL_BATCH,
        **trained,
        "warmup_steps_left_out": WARMUP_STEPS,
        "cores": cores,
        "load_average": os.getloadavg(),
        "wall_s": round(elapsed, 1),
        # Rescored: measured in that run folder, predicted by this checkout (no training).
        **({"rescored_from": str(args.rescore)} if args.rescore is not None else {}),
        "error_definition": "(predicted - measured) / measured; medians and p90 of its absolute",
        "targets": TARGETS,
        "worlds": summaries,
        "plans": [c.as_json() for c in cases],
    }
    (out / "fidelity.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(cases, out / "fidelity.png")
    print()
    print(summary_table(summaries))
    for summary in summaries:
        if "profile_drift" in summary:
            print(
                f"world {summary['world']}: predictions from the profiles averaged (above); from "
                "the profile before the plans alone: median time error "
                f"{_fraction(summary.get('median_time_error_profile_before_only'))}, after alone: "
                f"{_fraction(summary.get('median_time_error_profile_after_only'))}; the two "
                f"profiles' predictions differ by {_fraction(summary['profile_drift'])} (median)"
            )
        if "measurement_spread" in summary:
            print(
                f"world {summary['world']}: the first and last pass of a plan differ by "
                f"{_fraction(summary['measurement_spread'])} of its time (median); their rank "
                f"correlation is {_correlation(summary['spearman_between_passes'])}"
            )
        bias = summary.get("phase_bias_s")
        if isinstance(bias, dict):
            parts = ", ".join(f"{phase} {_signed_ms(seconds)}" for phase, seconds in bias.items())
            print(f"world {summary['world']}: predicted - measured by phase (median): {parts}")
    print(f"\n{out / 'fidelity.json'}\n{out / 'fidelity.png'}\nwall time {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

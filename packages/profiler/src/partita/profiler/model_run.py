"""Measuring every layer case of a model into a ``partita.model_profile``, saving as it goes.

Per case and configuration (see :mod:`model_cases`) the layer's shard is built once and, for
each micro-batch size, run ``warmup`` times, its memory measured, then timed ``repeats``
times. After each configuration the profile so far is saved to ``<out>.partial``; the last
one becomes ``<out>``. A failure (a micro-batch over ``memory_limit`` bytes, CUDA out of
memory) raises ``ValueError`` naming the partial file, which keeps what was measured.

Memory entries (one per configuration):

- ``param_bytes``, ``grad_bytes``: the shard's parameters counted tensor by tensor (a weight
  tied to an earlier layer, GPT-2's head, is counted there); gradients match them.
- ``optimizer_bytes``: AdamW's two moments, 8 bytes per parameter, plus a 4-byte fp32 master
  copy when training in bf16/fp16 (the simulator's convention; counted, not allocated).
- ``activation_bytes_per_sample``: bytes allocated during the forward and still live after it
  (what autograd saved for backward, and the output, which the next layer keeps), per
  sample: the slope of a least-squares line through the micro-batch sizes (origin
  ``fitted``) or, with one size, the bytes over it.
- ``checkpoint_activation_bytes_per_sample``: the same with the layer under
  ``torch.utils.checkpoint``: what stays is the output.
- ``backward_peak_bytes_per_sample``: the peak of a forward and backward above what the
  forward kept, per sample (the slope, so the parameter gradients, which do not grow with the
  batch, drop out): the gradients of inputs and outputs and the temporaries of backward.
- ``param_tensors``: the tensors holding the shard's parameters.

Timings of blocks are also taken with the block under activation checkpointing
(``checkpoint_forward_s``, ``checkpoint_backward_s``: the backward recomputes the forward),
and split for the schedules and recompute modes that need it: ``attention_forward_s``, the
time a forward spends in the attention cores (what ``ckpt: attention`` runs again), and
``weight_backward_s``, a backward less one that computes only the inputs' gradients, timed
in pairs (a split backward's W pass); ``attention_checkpoint_forward_s`` and
``attention_checkpoint_backward_s``, the passes with the attention cores checkpointed, as
``ckpt: attention`` runs them (the checkpoint's hooks cost more than a small core): the plain
passes plus what the mode adds, timed in pairs like the weight gradients. A block's
memory entry also has
``attention_saved_bytes_per_sample``: what its forward keeps less what it keeps with the
attention cores checkpointed.

``ckpt: selective-op`` (the executor's ``run_layer``: a checkpoint whose policy keeps every
other matmul's output and the attention kernel's) is measured on blocks too:
``selective_recompute_s``, the span of the recomputation inside a backward under that mode,
timed like the passes; ``selective_saved_bytes_per_sample``, counted like the activations
(allocated in the forward and live after it, the output included): the outputs the policy
keeps, held in the checkpoint's own cache, and the output, so between
``checkpoint_activation_bytes_per_sample`` and ``activation_bytes_per_sample``.

The head layer type is measured with the loss that follows it (as the executor runs them):
its times and memory hold the loss's forward and backward and what it saves (GPT's log-
softmax over the vocabulary, the size of the logits).
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from partita.executor.setups import SEQUENCE_PARALLEL_MODES
from partita.executor.vocab_parallel_loss import loss_for_split_head
from partita.formats import (
    LayerMemory,
    LayerTiming,
    LayerTypeProfile,
    ModelDescription,
    ModelProfile,
    save,
)
from partita.formats.common import BYTES_PER_ELEMENT
from partita.models.api import build_model, describe_model, synthetic_batch
from partita.models.attention import apply_attention
from partita.models.layered import Activations, LayeredModel
from partita.profiler import model_measure as measure
from partita.profiler.model_cases import Config, LayerCase, configurations, layer_cases
from partita.profiler.progress import MeasureProgress

ADAM_MOMENT_BYTES = 8
MASTER_COPY_BYTES = 4


@dataclass(frozen=True)
class Settings:
    model: str
    seq_len: int | None
    micro_batches: tuple[int, ...]
    tp_degrees: tuple[int, ...]
    out: Path
    device: torch.device
    dtype: str
    warmup: int = 2
    repeats: int = 10
    rounds: int = 1  # passes over every configuration; medians over them
    memory_limit: int | None = None
    seed: int = 0
    progress: bool = True
    nproc: int = 1  # > 1: real tensor-parallel groups of torchrun ranks
    attention: str = "auto"  # an --attention choice (partita.models.attention)


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass
class _Collected:
    """What was measured so far, per layer type, in model order."""

    order: list[str] = field(default_factory=list)
    timings: dict[str, list[LayerTiming]] = field(default_factory=dict)
    memory: dict[str, list[LayerMemory]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # configurations the executor refused

    def add(self, layer_type: str, timings: list[LayerTiming], memory: LayerMemory) -> None:
        if layer_type not in self.timings:
            self.order.append(layer_type)
            self.timings[layer_type], self.memory[layer_type] = [], []
        self.timings[layer_type].extend(timings)
        self.memory[layer_type].append(memory)

    def layer_types(self) -> tuple[LayerTypeProfile, ...]:
        return tuple(
            LayerTypeProfile(
                layer_type=name,
                timings=tuple(self.timings[name]),
                memory=tuple(self.memory[name]),
            )
            for name in self.order
        )


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def profile_model(
    settings: Settings, groups: measure.LocalGroups | measure.RankGroups | None = None
) -> ModelProfile:
    """Measure, save to ``settings.out`` and return the profile (module docstring).

    ``groups``: where tensor-parallel shards run (default: this process, ``LocalGroups``);
    with ``RankGroups`` every rank calls this and rank 0 writes.
    """
    groups = groups or measure.LocalGroups()
    description = describe_model(settings.model, seq_len=settings.seq_len)
    model, attention = _build(settings)
    sp_modes = SEQUENCE_PARALLEL_MODES.get(model.family, ())  # read now: the executor's
    cases = layer_cases(description, tp_degrees=settings.tp_degrees, sp_modes=sp_modes)
    _check_names(model, description)
    batches = {size: _batch(settings, size) for size in settings.micro_batches}
    refused: set[tuple[str, int, Config]] = set()  # (layer type, seq_len, config)
    allowed = _allowed(description, settings.tp_degrees, sp_modes=sp_modes, refused=refused)
    total = sum(len(case.configs) for case in cases) * len(settings.micro_batches)
    progress = MeasureProgress(total * settings.rounds, enabled=settings.progress and groups.writer)
    partial = partial_path(settings.out)
    if groups.writer:
        partial.unlink(missing_ok=True)
    rounds: list[_Collected] = []
    for _ in range(settings.rounds):
        collected = _Collected()
        rounds.append(collected)
        for case in cases:
            for config in case.configs:
                if (case.layer_type, case.layer.seq_len, config) in refused:
                    continue  # refused in the first round: not run again
                try:
                    measured = _measure_config(
                        settings,
                        model,
                        case,
                        config,
                        groups=groups,
                        batches=batches,
                        allowed=allowed,
                        progress=progress,
                    )
                except (ValueError, RuntimeError) as error:  # RuntimeError: CUDA out of memory
                    progress.close()
                    raise ValueError(_failure(error, case, config, partial, rounds[0])) from None
                if isinstance(measured, Refused):
                    refused.add((case.layer_type, case.layer.seq_len, config))
                    collected.refused.append(f"{case.layer_type} tp {config.tp} {config.sp}")
                elif measured is not None:  # None: this rank is not in the group
                    collected.add(case.layer_type, *measured)
                if groups.writer and len(rounds) == 1:
                    save(_profile(settings, description, collected, attention), partial)
    profile = _profile(settings, description, _median_over_rounds(rounds), attention)
    if groups.writer:
        save(profile, settings.out)
        partial.unlink(missing_ok=True)
    return profile


def _median_over_rounds(rounds: list[_Collected]) -> _Collected:
    """The first round's entries with each time the median over the rounds (rounds spread a
    configuration's measurements over the whole run, so a drift of the machine's speed in
    the meantime is shared by every configuration). Memory, counted exactly, is the first's."""
    first = rounds[0]
    if len(rounds) == 1:
        return first
    merged = _Collected(order=list(first.order), memory=first.memory, refused=first.refused)
    for layer_type in first.order:
        columns = list(zip(*(r.timings[layer_type] for r in rounds), strict=True))
        merged.timings[layer_type] = [_median_timing(column) for column in columns]
    return merged


def _median_timing(entries: Sequence[LayerTiming]) -> LayerTiming:
    """Every timing (``*_s``) and the spread, the median over ``entries``; a timing some entry
    lacks stays ``None``."""

    def median(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else statistics.median(values)  # type: ignore[type-var]

    names = [f.name for f in dataclasses.fields(LayerTiming) if f.name.endswith("_s")]
    medians = {name: median([getattr(e, name) for e in entries]) for name in [*names, "spread"]}
    return dataclasses.replace(entries[0], **medians)


def _failure(
    error: Exception, case: LayerCase, config: Config, partial: Path, collected: _Collected
) -> str:
    """One line: what failed, why, and where what was measured before it is."""
    text = str(error).strip().splitlines()
    reason = text[0] if text else type(error).__name__
    if isinstance(error, torch.OutOfMemoryError):
        reason = f"out of memory ({reason})"
    elif not isinstance(error, ValueError):
        reason = f"{case.layer_type} tp {config.tp} sp {config.sp} failed: {reason}"
    kept = f"what was measured is kept in {partial}" if collected.order else "nothing was saved"
    return f"{reason}; {kept}"


def _build(settings: Settings) -> tuple[LayeredModel, str]:
    """The model to measure, its attention core set as the executor sets it (before tensor or
    sequence parallelism wraps it), and the name of that kernel."""
    model = build_model(settings.model, seed=settings.seed)
    model.to(device=settings.device, dtype=measure.TORCH_DTYPES[settings.dtype])
    attention = apply_attention(model, settings.attention, settings.device)
    return model.train(), attention


def _batch(settings: Settings, size: int) -> Activations:
    batch = synthetic_batch(settings.model, batch_size=size, seq_len=settings.seq_len)
    dtype = measure.TORCH_DTYPES[settings.dtype]
    return {
        key: value.to(settings.device, dtype=dtype if value.is_floating_point() else None)
        for key, value in batch.items()
    }


def _allowed(
    description: ModelDescription,
    tp_degrees: Sequence[int],
    *,
    sp_modes: Sequence[str],
    refused: set[tuple[str, int, Config]],
) -> Callable[[int, Config], bool]:
    """Whether a plan may give block ``index`` this configuration (False for other layers):
    the plan checks allow it and the layer's type did not refuse it (read at each call)."""
    valid = {
        index: set(configurations(layer, description, tp_degrees=tp_degrees, sp_modes=sp_modes))
        for index, layer in enumerate(description.layers)
        if layer.kind == "block"
    }
    layers = description.layers
    return lambda index, config: (
        config in valid.get(index, ())
        and ((layers[index].layer_type, layers[index].seq_len, config) not in refused)
    )


def _check_names(model: LayeredModel, description: ModelDescription) -> None:
    names = tuple(layer.name for layer in description.layers)
    if names != model.layer_names:
        raise RuntimeError(f"model layers {model.layer_names} differ from description {names}")


def _measure_config(
    settings: Settings,
    model: LayeredModel,
    case: LayerCase,
    config: Config,
    *,
    groups: measure.LocalGroups | measure.RankGroups,
    batches: dict[int, Activations],
    allowed: Callable[[int, Config], bool],
    progress: MeasureProgress,
) -> tuple[list[LayerTiming], LayerMemory] | Refused | None:
    """The entries of one configuration; ``None`` on a rank outside its group; ``Refused``
    when the executor's layer refuses the sequence shard a uniform plan gives it (e.g. a Swin
    patch merging whose band of rows would be odd): no plan can run it, so it is left out,
    and later layers are measured as if a plan kept that layer whole."""
    origin = groups.origin(config.tp)
    what = f"{case.layer_type} tp {config.tp} {config.sp}"
    timings, retained = [], {}
    with groups.group(config.tp) as tp_groups:
        if tp_groups is None:
            return None
        placed = measure.place(model, case.index, config, tp_groups, allowed=allowed)
        layer = placed.layer
        params = measure.owned_parameters(model, case.index, layer)
        static = _static_bytes(params, settings.dtype)
        for batch in settings.micro_batches:
            acts = measure.layer_input(placed, batches[batch])
            if model.layer_names[case.index] == "head":
                head_group = placed.parallel.setups[case.index].groups.tp
                loss_fn = loss_for_split_head(model.loss_fn, head_group)
                layer = measure.WithLoss(placed.layer, loss_fn, batches[batch])
            try:
                measure.run_once(layer, acts, device=settings.device)
            except ValueError as error:
                if config.sp == "none":
                    raise
                for _ in settings.micro_batches:
                    progress.update(what, f"not run: {error}")
                return Refused(str(error))
            block = case.layer.kind == "block"  # the executor checkpoints blocks only
            memory = measure.measure_memory(layer, acts, device=settings.device, selective=block)
            _check_limit(
                settings, what=f"{what} micro-batch {batch}", need=sum(static) + memory.peak_bytes
            )
            times = measure.time_passes(
                layer,
                acts,
                warmup=settings.warmup,
                repeats=settings.repeats,
                device=settings.device,
            )
            checkpointed = split = None
            if block:
                timing = dict(warmup=settings.warmup, repeats=settings.repeats)
                checkpointed = measure.time_passes(
                    measure.Checkpointed(layer), acts, device=settings.device, **timing
                )
                split = _Split(
                    attention_forward_s=measure.time_attention_cores(
                        layer, acts, device=settings.device, **timing
                    ),
                    weight_backward_s=measure.time_weight_backward(
                        layer, acts, device=settings.device, **timing
                    ),
                    selective=measure.time_selective(layer, acts, device=settings.device, **timing),
                    attention_checkpointed=measure.time_attention_checkpointed(
                        layer, acts, plain=times, device=settings.device, **timing
                    ),
                )
            timings.append(_timing(case, config, batch, times, origin, checkpointed, split))
            retained[batch] = (
                memory.retained_bytes,
                memory.checkpoint_retained_bytes,
                memory.peak_bytes - memory.retained_bytes,
                memory.retained_bytes - memory.attention_retained_bytes
                if memory.attention_retained_bytes is not None
                else None,
                memory.selective_retained_bytes,
            )
            progress.update(f"{what} mb {batch}", _times_text(times))
    return timings, _memory(case, config, static, retained, origin, tensors=len(params))


def _static_bytes(params: Sequence[torch.nn.Parameter], dtype: str) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer) bytes of the shard."""
    weights = measure.tensor_bytes(params)
    count = sum(p.numel() for p in params)
    per_param = ADAM_MOMENT_BYTES + (0 if dtype == "fp32" else MASTER_COPY_BYTES)
    return weights, weights, count * per_param


def _check_limit(settings: Settings, *, what: str, need: int) -> None:
    if settings.memory_limit is not None and need > settings.memory_limit:
        raise ValueError(
            f"{what} does not fit --memory-limit {settings.memory_limit} bytes: it needs "
            f"{need} (parameters, gradients, optimizer states and the forward/backward peak)"
        )


@dataclass(frozen=True)
class _Split:
    attention_forward_s: float | None  # None: the layer has no attention core
    weight_backward_s: float  # the weights' gradients, part of the backward
    selective: measure.SelectiveTimes | None = None  # under ``ckpt: selective-op``
    attention_checkpointed: measure.PassTimes | None = None  # under ``ckpt: attention``


def _timing(
    case: LayerCase,
    config: Config,
    batch: int,
    times: measure.PassTimes,
    origin: str,
    checkpointed: measure.PassTimes | None = None,
    split: _Split | None = None,
) -> LayerTiming:
    selective = None if split is None else split.selective
    attention = None if split is None else split.attention_checkpointed
    return LayerTiming(
        tp=config.tp,
        sp=config.sp,  # type: ignore[arg-type]
        micro_batch=batch,
        seq_len=case.layer.seq_len,
        forward_s=times.forward_s,
        backward_s=times.backward_s,
        spread=times.spread,
        origin=origin,  # type: ignore[arg-type]
        checkpoint_forward_s=None if checkpointed is None else checkpointed.forward_s,
        checkpoint_backward_s=None if checkpointed is None else checkpointed.backward_s,
        attention_forward_s=None if split is None else split.attention_forward_s,
        # Timed in runs of their own, W and the backward scatter apart: W is kept within it.
        weight_backward_s=None if split is None else min(times.backward_s, split.weight_backward_s),
        selective_forward_s=selective.forward_s if selective else None,
        selective_recompute_s=selective.recompute_s if selective else None,
        attention_checkpoint_forward_s=attention.forward_s if attention else None,
        attention_checkpoint_backward_s=attention.backward_s if attention else None,
    )


def _times_text(times: measure.PassTimes) -> str:
    return (
        f"fwd {times.forward_s * 1e3:.3f} ms bwd {times.backward_s * 1e3:.3f} ms "
        f"(spread {times.spread * 100:.0f}%)"
    )


def _memory(
    case: LayerCase,
    config: Config,
    static: tuple[int, int, int],
    retained: dict[int, tuple[int, int, int, int | None, int | None]],
    origin: str,
    *,
    tensors: int,
) -> LayerMemory:
    full = per_sample({b: kept[0] for b, kept in retained.items()})
    checkpointed = per_sample({b: kept[1] for b, kept in retained.items()})
    backward = per_sample({b: kept[2] for b, kept in retained.items()})

    def optional(index: int) -> float | None:  # None where any micro-batch did not count it
        counts = {b: kept[index] for b, kept in retained.items()}
        if any(count is None for count in counts.values()):
            return None
        return per_sample({b: int(count or 0) for b, count in counts.items()})

    attention_saved, selective_saved = optional(3), optional(4)
    return LayerMemory(
        tp=config.tp,
        sp=config.sp,  # type: ignore[arg-type]
        seq_len=case.layer.seq_len,
        param_bytes=static[0],
        grad_bytes=static[1],
        optimizer_bytes=static[2],
        activation_bytes_per_sample=full,
        checkpoint_activation_bytes_per_sample=checkpointed,
        origin="fitted" if len(retained) > 1 else origin,  # type: ignore[arg-type]
        param_tensors=tensors,
        backward_peak_bytes_per_sample=backward,
        attention_saved_bytes_per_sample=attention_saved,
        selective_saved_bytes_per_sample=selective_saved,
    )


def per_sample(bytes_by_batch: dict[int, int]) -> float:
    """Slope of the least-squares line through (micro-batch, bytes); bytes/size for one point."""
    points = sorted(bytes_by_batch.items())
    if len(points) == 1:
        size, nbytes = points[0]
        return max(0.0, nbytes / size)
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return max(0.0, covariance / variance)


def _profile(
    settings: Settings, description: ModelDescription, collected: _Collected, attention: str
) -> ModelProfile:
    return ModelProfile(
        model=description.name,
        device=device_name(settings.device),
        dtype=settings.dtype,  # type: ignore[arg-type]
        origin="measured",
        layer_types=collected.layer_types(),
        tools=_tools(settings, collected.refused),
        attention=attention,  # type: ignore[arg-type]
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "unknown"
    threads = torch.get_num_threads()
    return f"cpu {cpu} ({threads} thread{'' if threads == 1 else 's'})"


def _groups_text(settings: Settings) -> str:
    if settings.nproc > 1:
        return f"rank 0 of real process groups ({settings.nproc} torchrun ranks)"
    return "rank 0's shard in one process, collectives not run"


def _tools(settings: Settings, refused: Sequence[str]) -> dict[str, str]:
    try:
        profiler = version("partita-profiler")
    except PackageNotFoundError:
        profiler = "0+unknown"
    memory_method = measure.PeakMemory(settings.device).method
    return {
        "partita-profiler": profiler,
        "torch": torch.__version__,
        "timing": (
            f"{'CUDA events' if settings.device.type == 'cuda' else 'perf_counter'}; median of "
            f"{settings.repeats} after {settings.warmup} warm-up runs; spread = IQR/median of "
            f"forward+backward; tp > 1: {_groups_text(settings)}"
        ),
        "memory": (
            f"{memory_method}; activations per sample = least-squares slope over micro-batches "
            f"{', '.join(map(str, settings.micro_batches))}; optimizer = AdamW moments counted"
        ),
        "bytes_per_element": str(BYTES_PER_ELEMENT[settings.dtype]),
        **(
            {"refused": "the executor refuses (not measured): " + ", ".join(refused)}
            if refused
            else {}
        ),
    }

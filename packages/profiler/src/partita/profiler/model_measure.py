"""Measuring one layer in isolation: its shard, its inputs, its pass times and its memory.

The shard of one tensor-parallel rank is built in this one process: the layer is sharded by
the executor's own ``apply_tensor_parallel`` (so exactly as rank 0 of a real group holds it)
over torch's ``fake`` process group of the wanted size, whose collectives return at once
without moving data. Timings therefore hold the shard's computation and none of its
communication (the simulator adds that from the hardware profile: origin
``measured_tp1_plus_comm``); memory holds everything a real rank allocates, the buffers the
collectives fill included. At tp 1 nothing is faked and nothing is left out.

The layer and its input come from a ``MeasuredPrefix`` (the executor's sharding over copies of the
layers up to the measured one) for a uniform plan giving every block the measured
configuration: the input is what ``MeasuredPrefix.forward`` hands the layer on a synthetic
batch (split or gathered along the sequence by the executor's rules), detached (a float
input that needed a gradient still gets one, as between pipeline stages).
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.executor.groups import LayerGroups
from partita.executor.memory import PeakMemory
from partita.executor.recompute import recomputed, run_layer
from partita.executor.setups import VOCAB_LAYERS, layer_setups
from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy
from partita.models.attention import Attends, AttentionCore
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel
from partita.models.tp_layout import TPLayout
from partita.profiler.fitting import trimmed_mean
from partita.profiler.measured_prefix import MeasuredPrefix
from partita.profiler.model_cases import Config

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


TpGroups = dict[int, dist.ProcessGroup]  # tensor-parallel group by size: 1 and the measured tp


@contextlib.contextmanager
def local_group(size: int) -> Iterator[dist.ProcessGroup]:
    """A process group of ``size`` in which this process is rank 0 and collectives do nothing."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield dist.group.WORLD  # type: ignore[misc]
    finally:
        dist.destroy_process_group()


class LocalGroups:
    """Every tp degree as rank 0 of a fake group in this process (see the module docstring)."""

    writer = True  # this process saves the file and shows progress

    def origin(self, tp: int) -> str:
        return "measured_tp_groups" if tp == 1 else "measured_tp1_plus_comm"

    @contextlib.contextmanager
    def group(self, tp: int) -> Iterator[TpGroups | None]:
        with local_group(tp) as group:
            yield {1: dist.new_group([0]) if tp > 1 else group, tp: group}


class RankGroups:
    """Real groups of an initialised world (torchrun): timings include the communication.

    The world is cut into groups of ``tp`` consecutive ranks and every group measures at once,
    as every rank computes at once in training (on shared cores, a rank measured alone runs
    faster than it trains: 1.17x here for a matmul); rank 0's group is recorded. Every rank
    must ask for the same degrees in the same order; ranks left over (``tp`` not dividing the
    world) get ``None`` and wait at a barrier until the groups are done.

    Where the ranks outnumber ``cores`` (gloo ranks sharing a CPU host), only the groups that
    fit in the cores measure and the rest wait at the barrier. With every rank busy, a timed
    layer ran at one or two times its speed by how the other ranks' phases happened to fall
    (world 4 on 2 cores: a block's backward 1.3 ms in one round, 2.5 ms in the next), while a
    training rank's compute fills the other ranks' waits, and the step came out as the
    uncontended layer times predicted (fidelity, docs/simulator.md). ``cores`` None: no
    limit (a GPU per rank)."""

    def __init__(self, cores: int | None = None) -> None:
        self.rank = dist.get_rank()
        self.writer = self.rank == 0
        self.cores = cores
        self._groups: dict[int, dist.ProcessGroup | None] = {}

    def origin(self, tp: int) -> str:
        return "measured_tp_groups"

    @contextlib.contextmanager
    def group(self, tp: int) -> Iterator[TpGroups | None]:
        if tp > dist.get_world_size():
            raise ValueError(f"tp {tp} needs {tp} ranks, the job has {dist.get_world_size()}")
        by_size = {size: self._group(size) for size in (1, tp)}
        measuring = measuring_ranks(world=dist.get_world_size(), tp=tp, cores=self.cores)
        mine = by_size[tp] if self.rank < measuring else None
        yield None if mine is None else by_size  # type: ignore[misc]
        dist.barrier()

    def _group(self, size: int) -> dist.ProcessGroup | None:
        """This rank's group of ``size`` consecutive ranks (created collectively, in order)."""
        if size not in self._groups:
            world = dist.get_world_size()
            mine = None
            for start in range(0, world - size + 1, size):
                members = list(range(start, start + size))
                created = dist.new_group(members)
                if self.rank in members:
                    mine = created
            self._groups[size] = mine
        return self._groups[size]


def measuring_ranks(*, world: int, tp: int, cores: int | None) -> int:
    """How many ranks (the first ones, in whole groups of ``tp``) measure a degree at once: all
    that form whole groups, or as many as ``cores`` holds, but always rank 0's group."""
    whole = world - world % tp
    if cores is None or cores >= whole:
        return whole
    return max(tp, cores - cores % tp)


def host_cores(device: torch.device) -> int | None:
    """The cores this process may run on where ranks share them (a CPU device), else None."""
    if device.type != "cpu":
        return None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


# --- the measured layer and its input, as the executor runs them -----------------------------


@dataclass(frozen=True)
class Placed:
    """Layers ``0..index`` of a model as one rank of a uniform plan runs them."""

    parallel: MeasuredPrefix
    index: int

    @property
    def layer(self) -> nn.Module:
        return self.parallel.layers[self.index]


def place(
    model: LayeredModel,
    index: int,
    config: Config,
    groups: TpGroups,
    *,
    allowed: Callable[[int, Config], bool],
) -> Placed:
    """A ``MeasuredPrefix`` over copies of layers ``0..index`` for a plan that gives
    every block ``config`` where ``allowed`` (the others tp 1, sp "none"), and the embedding
    and head ``config.tp`` when the measured layer is one of them or shares their vocabulary
    table (else tp 1). ``layer_setups`` decides each layer's layout (T5's bridge follows
    ``plan.vocab``), so what reaches layer ``index`` has the shapes and splits a real rank's
    has (e.g. T5's position bias with this rank's heads, a sequence shard under SP)."""
    copied = copy.deepcopy(nn.ModuleList(model.layers[: index + 1]))  # keeps ties
    prefix = LayeredModel(
        family=model.family,
        layer_names=model.layer_names[: index + 1],
        layer_types=model.layer_types[: index + 1],
        layers=list(copied),
        loss_fn=model.loss_fn,
        tied=model.tied,
        config=model.config,
    )
    layouts = family_of(model.config).tp_layouts(model.config)
    vocab = _holds_vocabulary(model, index, layouts)
    whole = Config(1, "none")
    blocks = tuple(
        LayerStrategy(tp=c.tp, sp=c.sp)  # type: ignore[arg-type]
        for j in range(index + 1)
        if model.layer_names[j] not in VOCAB_LAYERS
        for c in [config if allowed(j, config) else whole]
    )
    plan = Plan(
        world_size=config.tp,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=1,
        num_micro_batches=1,
        pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(len(blocks),)),
        layers=blocks,
        vocab=VocabStrategy(tp=config.tp if vocab else 1),
    )
    setups = layer_setups(prefix, plan, _StubGroups(groups))  # type: ignore[arg-type]
    return Placed(MeasuredPrefix(prefix, setups), index)


def _holds_vocabulary(model: LayeredModel, index: int, layouts: dict[str, TPLayout]) -> bool:
    layout = layouts[model.layer_types[index]]
    return model.layer_names[index] in VOCAB_LAYERS or layout.holds_vocabulary


@dataclass(frozen=True)
class _StubGroups:
    """What ``layer_setups`` asks of the executor's ``ParallelGroups``: a layer's tensor-
    parallel group (a measurement has no data parallelism, so no data-parallel groups)."""

    by_size: TpGroups

    def for_tp(self, tp: int) -> LayerGroups:
        return LayerGroups(
            tp=self.by_size[tp],
            dp=None,  # type: ignore[arg-type]
            dp_mesh=None,  # type: ignore[arg-type]
            tp_size=tp,
            dp_size=1,
            tp_rank=0,
            dp_rank=0,
        )


class _Reached(Exception):
    """Stops ``MeasuredPrefix.forward`` at the measured layer."""


def layer_input(placed: Placed, batch: Activations) -> Activations:
    """What the measured layer receives in ``MeasuredPrefix.forward`` (split or gathered along
    the sequence as there), as detached leaves: float ones keep needing a gradient if they
    did."""
    seen: list[Activations] = []

    def stop(_module: nn.Module, args: tuple[Activations, ...]) -> None:
        seen.append(args[0])
        raise _Reached

    handle = placed.layer.register_forward_pre_hook(stop)
    try:
        placed.parallel(batch)
    except _Reached:
        pass
    finally:
        handle.remove()
    assert len(seen) == 1, "the measured layer was not reached"
    return {
        key: value.detach().requires_grad_(value.requires_grad and value.is_floating_point())
        for key, value in seen[0].items()
    }


def owned_parameters(model: LayeredModel, index: int, layer: nn.Module) -> list[nn.Parameter]:
    """The layer's parameters, less those tied to (and counted with) an earlier layer."""
    prefix = f"layers.{index}."
    later_copies = {
        name[len(prefix) :]
        for tied in model.tied
        for name in tied.names[1:]
        if name.startswith(prefix)
    }
    return [p for name, p in layer.named_parameters() if name not in later_copies]


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class WithLoss(nn.Module):
    """A head followed by its loss on ``batch`` (``{"loss": scalar}`` out), measured as one
    layer: in training the loss always follows the head."""

    def __init__(self, head: nn.Module, loss_fn: Callable[..., torch.Tensor], batch: Activations):
        super().__init__()
        self.head, self.loss_fn, self.batch = head, loss_fn, batch

    def forward(self, acts: Activations) -> Activations:
        return {"loss": self.loss_fn(self.head(acts), self.batch)}


class Checkpointed(nn.Module):
    """A layer under activation checkpointing, as the executor wraps it."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, acts: Activations) -> Activations:
        return checkpoint(self.layer, acts, use_reentrant=False)  # type: ignore[no-any-return]


# --- running a layer -----------------------------------------------------------------------


def _differentiable(outputs: Activations) -> list[torch.Tensor]:
    """Outputs that backward flows through (pass-through inputs are left out)."""
    return [t for t in outputs.values() if t.grad_fn is not None]


def _clear_grads(layer: nn.Module, inputs: Activations) -> None:
    for tensor in (*layer.parameters(), *inputs.values()):
        tensor.grad = None


@dataclass
class _Clock:
    device: torch.device

    def now(self) -> object:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: object, stop: object) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(stop) / 1e3  # type: ignore[attr-defined]
        return float(stop) - float(start)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PassTimes:
    forward_s: float  # medians
    backward_s: float
    spread: float  # interquartile range over median, of forward + backward


def run_once(layer: nn.Module, inputs: Activations, *, device: torch.device) -> None:
    """One forward and backward, untimed: lazy buffers and caches get made."""
    time_passes(layer, inputs, warmup=0, repeats=1, device=device)


def time_passes(
    layer: nn.Module, inputs: Activations, *, warmup: int, repeats: int, device: torch.device
) -> PassTimes:
    """Forward and backward seconds over ``repeats`` (>= 1) runs after ``warmup``: their
    trimmed means (``fitting``: a step takes the sum of its layers' times, whose slow repeats
    a median would drop)."""
    clock = _Clock(device)
    grads: list[torch.Tensor] | None = None
    forwards, backwards = [], []
    for step in range(warmup + repeats):
        _clear_grads(layer, inputs)
        start = clock.now()
        outputs = _differentiable(layer(inputs))
        middle = clock.now()
        if grads is None:
            generator = torch.Generator(device=device).manual_seed(0)
            grads = [_random_like(t, generator) for t in outputs]
        torch.autograd.backward(outputs, grads)
        stop = clock.now()
        if step >= warmup:
            forwards.append(clock.seconds(start, middle))
            backwards.append(clock.seconds(middle, stop))
    _clear_grads(layer, inputs)
    totals = [f + b for f, b in zip(forwards, backwards, strict=True)]
    return PassTimes(
        forward_s=trimmed_mean(forwards),
        backward_s=trimmed_mean(backwards),
        spread=_relative_iqr(totals),
    )


def time_weight_backward(
    layer: nn.Module, inputs: Activations, *, warmup: int, repeats: int, device: torch.device
) -> float:
    """Seconds of the backward's weight gradients (a split backward's W pass): a whole
    backward less one that computes only the inputs' gradients (autograd skips the weight
    products nothing asks for), timed in pairs, back to back, so that the machine's drift
    cancels; the trimmed mean of the differences, at least 0. All of the backward where no
    input needs a gradient."""
    wanted = [t for t in inputs.values() if t.requires_grad]
    clock = _Clock(device)
    grads: list[torch.Tensor] | None = None
    differences = []
    for step in range(warmup + repeats):
        seconds = []
        for only_inputs in (False, True):
            _clear_grads(layer, inputs)
            outputs = _differentiable(layer(inputs))
            if grads is None:
                generator = torch.Generator(device=device).manual_seed(0)
                grads = [_random_like(t, generator) for t in outputs]
            start = clock.now()
            if not only_inputs:
                torch.autograd.backward(outputs, grads)
            elif wanted:
                torch.autograd.backward(outputs, grads, inputs=wanted)
            seconds.append(clock.seconds(start, clock.now()))
        if step >= warmup:
            differences.append(seconds[0] - seconds[1])
    _clear_grads(layer, inputs)
    return max(0.0, trimmed_mean(differences))


@contextlib.contextmanager
def attention_cores_wrapped(
    layer: nn.Module, wrap: Callable[[AttentionCore], AttentionCore]
) -> Iterator[int]:
    """Every attention core of ``layer`` wrapped by ``wrap``, restored after; yields how many
    there are. Under Ulysses the core inside the all-to-alls is wrapped, as the executor
    wraps it (``recompute``) before sequence parallelism does."""
    modules = [m for m in layer.modules() if isinstance(m, Attends)]
    originals = [m.core for m in modules]
    try:
        for module, core in zip(modules, originals, strict=True):
            rewrapped = getattr(core, "rewrapped", None)
            module.core = rewrapped(wrap) if rewrapped is not None else wrap(core)
        yield len(modules)
    finally:
        for module, core in zip(modules, originals, strict=True):
            module.core = core


def time_attention_cores(
    layer: nn.Module, inputs: Activations, *, warmup: int, repeats: int, device: torch.device
) -> float | None:
    """Seconds per forward spent in the layer's attention cores (what selective recompute runs
    again), the trimmed mean over ``repeats`` forwards; None where the layer has none."""
    clock = _Clock(device)
    spans: list[tuple[object, object]] = []

    def timed(core: AttentionCore) -> AttentionCore:
        def run(*args: Any, **options: Any) -> torch.Tensor:
            start = clock.now()
            out = core(*args, **options)
            spans.append((start, clock.now()))
            return out

        return run  # type: ignore[return-value]

    per_forward = []
    with attention_cores_wrapped(layer, timed) as cores:
        if not cores:
            return None
        for step in range(warmup + repeats):
            spans.clear()
            _clear_grads(layer, inputs)
            outputs = layer(inputs)
            del outputs
            if step >= warmup:
                per_forward.append(sum(clock.seconds(a, b) for a, b in spans))
    _clear_grads(layer, inputs)
    return trimmed_mean(per_forward)


def time_attention_checkpointed(
    layer: nn.Module,
    inputs: Activations,
    *,
    plain: PassTimes,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> PassTimes | None:
    """The layer's passes with its attention cores under ``ckpt: attention`` (wrapped as the
    executor wraps them): the checkpoint's hooks in the forward, and in the backward the
    core's recomputation with them, which the core's own time leaves out. Each is ``plain``'s
    (the passes timed in their own run) plus what the mode adds, timed in pairs of a plain and
    a checkpointed pass back to back so that the machine's drift cancels (timed in runs of
    their own, the two scattered apart by more than the difference on small layers): the
    trimmed mean of the differences, at least 0. None where the layer has no attention core."""
    with attention_cores_wrapped(layer, recomputed) as cores:
        if not cores:
            return None
    forwards, backwards = [], []
    for step in range(warmup + repeats):
        plain_pass = time_passes(layer, inputs, warmup=0, repeats=1, device=device)
        with attention_cores_wrapped(layer, recomputed):
            checkpointed = time_passes(layer, inputs, warmup=0, repeats=1, device=device)
        if step >= warmup:
            forwards.append(checkpointed.forward_s - plain_pass.forward_s)
            backwards.append(checkpointed.backward_s - plain_pass.backward_s)
    return PassTimes(
        forward_s=plain.forward_s + max(0.0, trimmed_mean(forwards)),
        backward_s=plain.backward_s + max(0.0, trimmed_mean(backwards)),
        spread=plain.spread,
    )


class _Spanned(nn.Module):
    """``layer`` whose calls are timed: a span per call, the forward's first, then each
    recomputation (non-reentrant checkpointing calls the function again in the backward)."""

    def __init__(self, layer: nn.Module, clock: _Clock) -> None:
        super().__init__()
        self.layer, self.clock = layer, clock
        self.spans: list[tuple[object, object]] = []

    def forward(self, acts: Activations) -> Activations:
        start = self.clock.now()
        try:
            return self.layer(acts)  # type: ignore[no-any-return]
        finally:  # a recomputation stops early (an exception) once it has what backward needs
            self.spans.append((start, self.clock.now()))


@dataclass(frozen=True)
class SelectiveTimes:
    forward_s: float  # the forward under the mode's policy
    recompute_s: float  # what the backward runs again


def time_selective(
    layer: nn.Module, inputs: Activations, *, warmup: int, repeats: int, device: torch.device
) -> SelectiveTimes:
    """Seconds of ``ckpt: selective-op``'s forward, and of the forward work it runs again per
    backward: the layer is run forward and backward as the executor runs it under that mode
    (``run_layer``); the first call is the forward, and the span of the recomputation inside
    the backward is timed (from the call to where the recomputation stops, the ops the policy
    kept read from its cache); trimmed means over ``repeats``. Timed directly rather than as
    the difference of two backwards, whose scatter is larger than the difference on small
    layers."""
    clock = _Clock(device)
    spanned = _Spanned(layer, clock)
    grads: list[torch.Tensor] | None = None
    per_forward, per_backward = [], []
    for step in range(warmup + repeats):
        spanned.spans.clear()
        _clear_grads(layer, inputs)
        outputs = _differentiable(run_layer(spanned, inputs, "selective-op"))
        if grads is None:
            generator = torch.Generator(device=device).manual_seed(0)
            grads = [_random_like(t, generator) for t in outputs]
        torch.autograd.backward(outputs, grads)
        del outputs
        if step >= warmup:
            (start, end), *recomputations = spanned.spans  # the first call is the forward
            per_forward.append(clock.seconds(start, end))
            per_backward.append(sum(clock.seconds(a, b) for a, b in recomputations))
    _clear_grads(layer, inputs)
    return SelectiveTimes(trimmed_mean(per_forward), trimmed_mean(per_backward))


def _random_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device)


def _relative_iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (quartiles[2] - quartiles[0]) / middle if middle > 0 else 0.0


# --- memory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassMemory:
    retained_bytes: int  # allocated during forward and still live after it
    checkpoint_retained_bytes: int  # the same with the layer under torch.utils.checkpoint
    peak_bytes: int  # above what was live before: forward and backward, no checkpointing
    # The same as retained_bytes with the attention cores checkpointed (``ckpt: attention``);
    # None where the layer has no attention.
    attention_retained_bytes: int | None = None
    # The same under ``ckpt: selective-op``: what its policy keeps (in the checkpoint's cache)
    # and the output; None where not measured (``selective`` False).
    selective_retained_bytes: int | None = None


def measure_memory(
    layer: nn.Module, inputs: Activations, *, device: torch.device, selective: bool = False
) -> PassMemory:
    """Bytes of one micro-batch (call after a warm-up run, so lazy buffers exist);
    ``selective``: also under ``ckpt: selective-op`` (blocks, which the executor checkpoints).

    Every count is the allocator's (``PeakMemory``): what was allocated in the forward and is
    still live after it, however it is held, by autograd's saved tensors or by a selective
    checkpoint's own cache of the outputs its policy keeps, which saved-tensor hooks do not
    see. The layer's inputs, allocated before, are not counted (they are the previous layer's
    output); a checkpoint keeps them by reference."""
    retained = _retained(layer, inputs, device=device, ckpt="none")
    kept = _retained(layer, inputs, device=device, ckpt="full")
    with attention_cores_wrapped(layer, recomputed) as cores:
        attention = _retained(layer, inputs, device=device, ckpt="none") if cores else None
    op_kept = _retained(layer, inputs, device=device, ckpt="selective-op") if selective else None
    peak = _peak(layer, inputs, device=device)
    return PassMemory(retained, kept, peak, attention, op_kept)


def _allocated(device: torch.device) -> int:
    # The CPU window counts only its own allocations; CUDA counts everything.
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _retained(layer: nn.Module, inputs: Activations, *, device: torch.device, ckpt: str) -> int:
    """Bytes allocated by a forward under ``ckpt`` (the executor's ``run_layer``) and live
    after it."""
    _clear_grads(layer, inputs)
    before = _allocated(device)
    with PeakMemory(device) as memory:
        outputs = run_layer(layer, inputs, ckpt)
    del outputs
    return memory.current_bytes - before


def _peak(layer: nn.Module, inputs: Activations, *, device: torch.device) -> int:
    _clear_grads(layer, inputs)
    before = _allocated(device)
    with PeakMemory(device) as memory:
        outputs = _differentiable(layer(inputs))
        generator = torch.Generator(device=device).manual_seed(0)
        torch.autograd.backward(outputs, [_random_like(t, generator) for t in outputs])
        del outputs
    _clear_grads(layer, inputs)
    return memory.peak_bytes - before

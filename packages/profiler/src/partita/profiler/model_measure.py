"""Measuring one layer in isolation: its shard, its inputs, its pass times and its memory.

The shard of one tensor-parallel rank is built in this one process: the layer is sharded by
the executor's own ``apply_tensor_parallel`` (so exactly as rank 0 of a real group holds it)
over torch's ``fake`` process group of the wanted size, whose collectives return at once
without moving data. Timings therefore hold the shard's computation and none of its
communication (the simulator adds that from the hardware profile: origin
``measured_tp1_plus_comm``); memory holds everything a real rank allocates, the buffers the
collectives fill included. At tp 1 nothing is faked and nothing is left out.

Inputs are what the preceding layers of the whole model produce on a synthetic batch,
detached (a float input that needed a gradient still gets one, as between pipeline stages)
and, under sequence parallelism, cut to rank 0's sequence shard as the executor cuts them.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from partita.executor import comm
from partita.executor.memory import PeakMemory
from partita.executor.parallel_model import SPLIT_KEYS
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.models.families import family_of
from partita.models.layered import Activations, LayeredModel
from partita.profiler.model_cases import Config

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    def group(self, tp: int) -> Iterator[dist.ProcessGroup | None]:
        with local_group(tp) as group:
            yield group


class RankGroups:
    """Real groups of ranks 0..tp-1 of an initialised world (torchrun): timings include the
    communication. Every rank must ask for the same degrees in the same order; ranks outside
    a group get ``None`` and wait at a barrier until its members are done."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.writer = self.rank == 0
        self._groups: dict[int, dist.ProcessGroup] = {}

    def origin(self, tp: int) -> str:
        return "measured_tp_groups"

    @contextlib.contextmanager
    def group(self, tp: int) -> Iterator[dist.ProcessGroup | None]:
        if tp > dist.get_world_size():
            raise ValueError(f"tp {tp} needs {tp} ranks, the job has {dist.get_world_size()}")
        if tp not in self._groups:
            self._groups[tp] = dist.new_group(list(range(tp)))
        yield self._groups[tp] if self.rank < tp else None
        dist.barrier()


def shard_layer(
    model: LayeredModel, index: int, config: Config, group: dist.ProcessGroup
) -> nn.Module:
    """A copy of layer ``index`` as rank 0 of a ``config.tp`` group holds it."""
    layer = copy.deepcopy(model.layers[index])
    layout = family_of(model.config).tp_layouts(model.config)[model.layer_types[index]]
    apply_tensor_parallel(layer, layout, group=group, sp=config.sp, record=ShardRecord())
    return layer


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


@dataclass(frozen=True)
class Step:
    layer: nn.Module
    sp: str  # "none", or the sequence-parallel mode whose sequence shard the layer takes


def prefix(
    model: LayeredModel,
    index: int,
    config: Config,
    group: dist.ProcessGroup,
    *,
    allowed: Callable[[int, Config], bool],
) -> list[Step]:
    """The layers before ``index`` as a plan giving every block ``config`` runs them.

    Blocks that ``allowed`` refuses ``config`` and the embedding stay whole (sp "none"), so
    what reaches the measured layer has the shapes a real rank sees (e.g. T5's position bias
    with this rank's heads only).
    """
    steps = []
    for j in range(index):
        if allowed(j, config):
            steps.append(Step(shard_layer(model, j, config, group), _mode(config)))
        else:
            steps.append(Step(model.layers[j], "none"))
    return steps


def _mode(config: Config) -> str:
    return config.sp if config.tp > 1 else "none"


def layer_input(
    steps: Sequence[Step], batch: Activations, config: Config, group: dist.ProcessGroup
) -> Activations:
    """What the measured layer receives, as detached leaves (float ones keep needing a
    gradient if they did), split or gathered along the sequence as the executor does."""
    acts, current = dict(batch), "none"
    for step in [*steps, None]:
        wanted = _mode(config) if step is None else step.sp
        if current != wanted:
            if current != "none":
                acts = _resequence(acts, current, group, comm.gather_from_region)
            if wanted != "none":
                acts = _resequence(acts, wanted, group, comm.split_sequence)
            current = wanted
        if step is not None:
            acts = step.layer(acts)
    return {
        key: value.detach().requires_grad_(value.requires_grad and value.is_floating_point())
        for key, value in acts.items()
    }


def _resequence(
    acts: Activations,
    sp: str,
    group: dist.ProcessGroup,
    move: Callable[[torch.Tensor, dist.ProcessGroup, int], torch.Tensor],
) -> Activations:
    out = dict(acts)
    for key in SPLIT_KEYS[sp]:
        if key in out:
            out[key] = move(out[key], group, 1)
    return out


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
    """Median forward and backward seconds over ``repeats`` (>= 1) runs after ``warmup``."""
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
        forward_s=statistics.median(forwards),
        backward_s=statistics.median(backwards),
        spread=_relative_iqr(totals),
    )


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


def measure_memory(layer: nn.Module, inputs: Activations, *, device: torch.device) -> PassMemory:
    """Bytes of one micro-batch (call after a warm-up run, so lazy buffers exist)."""
    retained = _retained(layer, inputs, device=device, checkpointed=False)
    kept = _retained(layer, inputs, device=device, checkpointed=True)
    return PassMemory(retained, kept, _peak(layer, inputs, device=device))


def _allocated(device: torch.device) -> int:
    # The CPU window counts only its own allocations; CUDA counts everything.
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _retained(
    layer: nn.Module, inputs: Activations, *, device: torch.device, checkpointed: bool
) -> int:
    _clear_grads(layer, inputs)
    before = _allocated(device)
    with PeakMemory(device) as memory:
        outputs = checkpoint(layer, inputs, use_reentrant=False) if checkpointed else layer(inputs)
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

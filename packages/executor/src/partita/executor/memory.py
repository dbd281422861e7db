"""Peak memory of one rank, measured from its allocations rather than estimated.

Use: one :class:`PeakMemory` per rank, with the model and optimizer as ``baseline`` on CPU, and
one window per training step; time the step inside the window, since ``stop()`` is where the
CPU method spends its time::

    memory = PeakMemory(device, baseline=[model, optimizer])
    for batch in batches:
        with memory:
            start = time.perf_counter()
            train_step(batch)
            step_time = time.perf_counter() - start
    report(memory.peak_bytes, memory.method)

Methods
=======

``cuda`` (``memory_method`` ``cuda-max-memory-allocated``)
    The CUDA caching allocator's own counters: ``start()`` synchronises the device and calls
    ``torch.cuda.reset_peak_memory_stats``, ``stop()`` synchronises and reads
    ``torch.cuda.max_memory_allocated`` and ``torch.cuda.memory_allocated``. These count the
    bytes of the blocks handed to tensors (rounded up by the allocator to multiples of 512 bytes),
    including everything already allocated when the window starts, so no baseline is needed;
    memory the allocator keeps cached but unused (``memory_reserved``), the CUDA context and
    libraries' own workspaces (cuBLAS, NCCL) are not counted. Not run in this project's CPU CI.

``cpu`` (``memory_method`` ``cpu-profiler-allocation-events``)
    Torch's CPU allocator reports every allocation and every free of a block it handed out
    while memory profiling is on, with its address and size (``ProfiledCPUMemoryReporter`` in
    c10). ``start()`` opens a kineto profiler session with ``profile_memory`` on that records
    user-scope ops only, not every ATen op; ``stop()`` closes it and replays the allocation
    records in time order: ``current_bytes`` is the running sum of live blocks and
    ``peak_bytes`` its maximum. Blocks that existed before ``start()`` are invisible to the
    reporter (it ignores their frees), so memory that should count from the start (parameters,
    gradients, optimizer states) is passed as ``baseline``: its storages are counted at
    ``start()``, and a ``weakref.finalize`` on each storage writes a marker into the same
    profiler timeline when it is freed (the storage's Python object lives exactly as long as
    the storage), so a baseline gradient freed by ``zero_grad`` is subtracted at the right
    point. A window opened before the model and optimizer are built needs no baseline.

    Rejected: a ``TorchDispatchMode`` tracking op outputs does not see the buffers kernels
    allocate internally, and on the gpt-tiny step below an empty mode alone costs 1.8x; the
    public ``torch.profiler`` API records every op, which costs 3.2x for the same numbers.

Accuracy (torch 2.13, CPU)
    Known allocations are counted to the byte (``test_memory.py``). gpt-tiny with AdamW, batch
    2 x 128 tokens, model and optimizer as baseline: after the step ``current_bytes`` is
    3,856,656, exactly the parameters (964,096), gradients (964,096) and optimizer state
    (1,928,464); the peak is 8,826,648, 1.01x parameters + gradients + optimizer state + the
    4,889,604 bytes autograd saved for backward. A window opened before the model was built
    and run for 3 steps peaks at exactly that plus the 4,096-byte batch it also saw, and
    recording every op gives the same numbers.

Cost (same step, 2 cores shared, medians)
    Inside the window the step runs 5% slower (14.7 -> 15.5 ms). ``stop()`` reads about
    2,200 allocation records per step at ~5 us each (kineto closing its session, then reading
    the records from Python): with it the window costs 2.0-2.1x a 13 ms step at batch 2, 1.4x
    at batch 8 and 1.08x at batch 32, since the record count does not grow with the batch.
    Records are held until ``stop()``: 200 one-step windows grew RSS by 6 MB, while a single
    100-step window took 370 MB at ``stop()`` (~1.7 kB a record) - hence windows per step.

Limits
    * CPU: counts the bytes requested from torch's CPU allocator, not malloc's padding or
      headers, Python objects, or memory libraries allocate on their own (BLAS/oneDNN scratch,
      gloo transport buffers). It is not RSS.
    * CPU: the profiler is per thread. Allocations on threads that did not inherit its state
      (plain ``threading`` threads, OpenMP workers, gloo's threads) are not seen; the calling
      thread's and CPU autograd's are; a baseline storage freed on such a thread stays counted
      until its address is reused. ``start()`` and ``stop()`` must run on the same thread, and
      no other torch profiler may be running on it.
    * CPU: tensors that are neither in the baseline nor allocated inside a window (e.g. a batch
      made between windows) are not counted; nothing is seen between windows.
    * CPU: a baseline storage that is resized in place is still counted at its first size.
    * CPU: kineto logs two ``USDT`` lines to stderr per session; the first window sets
      ``KINETO_LOG_LEVEL=6`` (above kineto's ERROR) unless it is already set, which silences
      kineto in this process if it has not logged yet. c10 also warns on the first (and every
      1000th) free of a block allocated before profiling began.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch._C._autograd import _disable_profiler, _enable_profiler, _prepare_profiler
from torch._C._profiler import (
    ProfilerActivity,
    ProfilerConfig,
    ProfilerState,
    RecordScope,
    _ExperimentalConfig,
    _ExtraFields_Allocation,
    _ProfilerEvent,
)

__all__ = ["CPU_METHOD", "CUDA_METHOD", "Baseline", "PeakMemory", "live_storages", "measure"]

CPU_METHOD = "cpu-profiler-allocation-events"
CUDA_METHOD = "cuda-max-memory-allocated"

# What can hold memory that exists before a window opens.
Baseline = torch.Tensor | torch.nn.Module | torch.optim.Optimizer

T = TypeVar("T")

_FREE_MARKER = "partita.memory.free:"
_NOT_MEASURED = "no measurement yet: call start() and stop() first"


def _check_baseline(obj: object) -> Baseline:
    if not isinstance(obj, Baseline):
        raise TypeError(f"expected a tensor, module or optimizer, got {type(obj).__name__}")
    return obj


def _tensors(obj: Baseline) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
        if obj.is_leaf and obj.grad is not None:  # only leaves have gradients
            yield obj.grad
    elif isinstance(obj, torch.nn.Module):
        for tensor in (*obj.parameters(), *obj.buffers()):
            yield from _tensors(tensor)
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from (value for value in state.values() if isinstance(value, torch.Tensor))
        # ZeroRedundancyOptimizer keeps this rank's shard of the state in an inner optimizer.
        inner = getattr(obj, "optim", None)
        if isinstance(inner, torch.optim.Optimizer):
            yield from _tensors(inner)


def live_storages(objects: Iterable[Baseline]) -> dict[int, torch.UntypedStorage]:
    """The CPU storages behind ``objects``, by address: each counted once, views included."""
    storages: dict[int, torch.UntypedStorage] = {}
    for obj in objects:
        for tensor in _tensors(_check_baseline(obj)):
            # DTensor and similar wrappers hold their memory in a local tensor.
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            if local.device.type == "cpu" and local.layout == torch.strided:
                storage = local.untyped_storage()
                if storage.nbytes() > 0:
                    storages[storage.data_ptr()] = storage
    return storages


class _Ledger:
    """Live blocks by address, replayed from allocation and free records."""

    def __init__(self, live: dict[int, int]) -> None:
        self.live = dict(live)
        self.current = sum(live.values())
        self.peak = self.current

    def alloc(self, ptr: int, nbytes: int) -> None:
        # A block still listed at a reused address was freed where no record was made
        # (on another thread, or a baseline storage without its marker): it is gone.
        self.free(ptr)
        self.live[ptr] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def free(self, ptr: int) -> None:
        # Frees of blocks allocated before the window and not in the baseline are unknown here
        # and ignored: they were never counted.
        self.current -= self.live.pop(ptr, 0)


def _mark_free(ptr: int) -> None:
    # Runs when a baseline storage dies; the marker lands in the profiler's timeline between
    # the allocation records around it, which a clock read here could not guarantee.
    with torch.autograd.profiler.record_function(f"{_FREE_MARKER}{ptr}"):
        pass


def _start_profiler() -> None:
    # kineto reads this when it first starts; otherwise every window would write two "USDT"
    # lines to stderr, among the progress bar. Its only level above them also hides ERROR.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    if torch._C._autograd._profiler_enabled():
        raise RuntimeError("a torch profiler is already running on this thread")
    config = ProfilerConfig(
        ProfilerState.KINETO, False, True, False, False, False, _ExperimentalConfig()
    )
    activities = {ProfilerActivity.CPU}
    _prepare_profiler(config, activities)
    # Recording only user scopes (record_function, hence the free markers) skips the record of
    # every ATen op, which cost 3.2x on a gpt-tiny step; allocation records are kept regardless.
    _enable_profiler(config, activities, {RecordScope.USER_SCOPE})  # type: ignore[call-arg]


def _walk(events: list[_ProfilerEvent]) -> Iterator[_ProfilerEvent]:
    stack = list(events)
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        yield event


def _records(events: list[_ProfilerEvent]) -> list[tuple[int, int, int | None]]:
    """(time, address, bytes allocated or None for a free) of CPU blocks, in time order."""
    records: list[tuple[int, int, int | None]] = []
    for event in _walk(events):
        fields = event.extra_fields
        if isinstance(fields, _ExtraFields_Allocation):
            if fields.device.type == "cpu":
                size = fields.alloc_size
                records.append((event.start_time_ns, fields.ptr, size if size > 0 else None))
        elif event.name.startswith(_FREE_MARKER):
            records.append((event.start_time_ns, int(event.name[len(_FREE_MARKER) :]), None))
    records.sort(key=lambda record: record[0])
    return records


class _CpuWindow:
    def __init__(self, baseline: Iterable[Baseline]) -> None:
        storages = live_storages(baseline)
        self._ledger = _Ledger({ptr: storage.nbytes() for ptr, storage in storages.items()})
        self._finalizers = [weakref.finalize(s, _mark_free, ptr) for ptr, s in storages.items()]
        del storages  # holding them would keep the baseline alive past its frees
        try:
            _start_profiler()
        except BaseException:
            self._detach()
            raise

    def _detach(self) -> None:
        for finalizer in self._finalizers:
            finalizer.detach()

    def stop(self) -> tuple[int, int]:
        try:
            result = _disable_profiler()
        finally:
            self._detach()
        for _, ptr, nbytes in _records(result.experimental_event_tree()):
            if nbytes is None:
                self._ledger.free(ptr)
            else:
                self._ledger.alloc(ptr, nbytes)
        return self._ledger.peak, self._ledger.current


class _CudaWindow:
    def __init__(self, device: torch.device) -> None:
        self._device = device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    def stop(self) -> tuple[int, int]:
        torch.cuda.synchronize(self._device)
        peak = torch.cuda.max_memory_allocated(self._device)
        return peak, torch.cuda.memory_allocated(self._device)


class PeakMemory:
    """Peak and current memory of this rank on ``device`` over a window (see the module doc).

    ``baseline``: tensors, modules (parameters, buffers and their gradients) and optimizers
    (their state) whose memory exists before ``start()`` and should count; CPU only, since the
    CUDA allocator already counts everything; it is walked again at every ``start()``, so
    gradients and optimizer state created since the last window count too.

    Each ``start()``/``stop()`` pair (or ``with`` block) is a window; one object can measure a
    run window by window (one per step): ``peak_bytes`` is the highest over all its windows,
    ``current_bytes`` the value at the end of the last one. Between windows nothing is seen.
    """

    def __init__(
        self, device: torch.device | str = "cpu", *, baseline: Iterable[Baseline] = ()
    ) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"peak memory is measured on cpu or cuda, not {self.device.type}")
        # Weak references: holding the baseline would keep it alive past the frees to measure.
        self._baseline = [weakref.ref(_check_baseline(obj)) for obj in baseline]
        self._window: _CpuWindow | _CudaWindow | None = None
        self._peak: int | None = None
        self._current = 0

    @property
    def method(self) -> str:
        """The ``memory_method`` string a run report records for this device."""
        return CUDA_METHOD if self.device.type == "cuda" else CPU_METHOD

    def start(self) -> None:
        if self._window is not None:
            raise RuntimeError("PeakMemory.start() called twice without stop()")
        if self.device.type == "cuda":
            self._window = _CudaWindow(self.device)
        else:
            alive = (obj() for obj in self._baseline)
            self._window = _CpuWindow([obj for obj in alive if obj is not None])

    def stop(self) -> None:
        if self._window is None:
            raise RuntimeError("PeakMemory.stop() called without start()")
        window, self._window = self._window, None
        peak, self._current = window.stop()
        self._peak = peak if self._peak is None else max(self._peak, peak)

    @property
    def peak_bytes(self) -> int:
        """Most bytes live at once in any window so far, baseline included."""
        if self._peak is None:
            raise RuntimeError(_NOT_MEASURED)
        return self._peak

    @property
    def current_bytes(self) -> int:
        """Bytes live at the end of the last window, baseline included."""
        if self._peak is None:
            raise RuntimeError(_NOT_MEASURED)
        return self._current

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def measure(
    fn: Callable[[], T], *, device: torch.device | str = "cpu", baseline: Iterable[Baseline] = ()
) -> tuple[T, int]:
    """Run ``fn()`` inside a :class:`PeakMemory` window: its result and the peak bytes."""
    with PeakMemory(device, baseline=baseline) as memory:
        result = fn()
    return result, memory.peak_bytes

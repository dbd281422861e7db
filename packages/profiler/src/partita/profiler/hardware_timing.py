"""How a rank times things, and which device and backend it uses.

On CUDA a call is bracketed by CUDA events on the current stream, and the stream (not the whole
device) is synchronised before and after: the overlap measurement runs a collective on a side
stream while the main thread computes, and a device-wide synchronise would serialise the two.
``all_reduce`` and friends with ``async_op=False`` make the current stream wait for NCCL's
stream, so the events bracket the collective. On CPU a call is blocking and
``time.perf_counter`` brackets it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol

import torch

Backend = Literal["gloo", "nccl"]
BACKEND_CHOICES = ("auto", "gloo", "nccl")


class Timer(Protocol):
    def seconds(self, call: Callable[[], object]) -> float:
        """Wall time of one ``call()``, including the device work it started."""
        ...


class PerfCounterTimer:
    method = "perf_counter"

    def seconds(self, call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


class CudaEventTimer:
    method = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def seconds(self, call: Callable[[], object]) -> float:
        stream = torch.cuda.current_stream(self.device)
        stream.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        call()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # milliseconds -> seconds


def timer_for(device: torch.device) -> PerfCounterTimer | CudaEventTimer:
    if device.type == "cuda":
        return CudaEventTimer(device)
    return PerfCounterTimer()


def choose_backend(requested: str, *, cuda_available: bool) -> Backend:
    """``auto`` is NCCL when CUDA is available, else gloo; NCCL without CUDA is a user error."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(
            f"--backend: expected one of {', '.join(BACKEND_CHOICES)}, got {requested!r}"
        )
    if requested == "nccl" and not cuda_available:
        raise ValueError("--backend nccl needs CUDA, and torch finds no CUDA device here")
    if requested == "auto":
        return "nccl" if cuda_available else "gloo"
    return "nccl" if requested == "nccl" else "gloo"


def device_for(backend: Backend, *, local_rank: int) -> torch.device:
    """One CUDA device per local rank under NCCL; CPU (one thread per rank) under gloo."""
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def matmul_dtypes(device: torch.device) -> tuple[str, ...]:
    """Dtypes whose matmul throughput is measured: fp32 on CPU; fp32, bf16 and fp16 on CUDA."""
    return ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32",)


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

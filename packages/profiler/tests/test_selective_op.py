"""``ckpt: selective-op`` measured on one layer: what its policy keeps, counted by the
allocator, against an independent count of the kept ops' outputs, and its recomputation
timed inside the backward (CPU, fake tp groups, well under a second each)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from partita.executor.recompute import _ATTENTION_KERNELS, _MATMULS
from partita.models.api import build_model, synthetic_batch
from partita.models.attention import Attends
from partita.models.layered import Activations
from partita.profiler import model_measure as measure
from partita.profiler.model_cases import Config

CPU = torch.device("cpu")
SEQ = 32


class _KeptOutputs(TorchDispatchMode):
    """Bytes of the outputs ``selective_op_contexts``' policy keeps, counted op by op on a
    plain forward: every other matmul (the 1st, 3rd, ...) and the attention kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.matmuls = 0
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kept = func in _ATTENTION_KERNELS
        if func in _MATMULS:
            self.matmuls += 1
            kept = self.matmuls % 2 == 1
        if kept:
            outputs = out if isinstance(out, tuple | list) else (out,)
            self.bytes += sum(
                t.untyped_storage().nbytes() for t in outputs if isinstance(t, torch.Tensor)
            )
        return out


@contextlib.contextmanager
def _block(model_name: str, config: Config, batch: int) -> Iterator[tuple[nn.Module, Activations]]:
    """Block 0 of ``model_name`` as rank 0 of ``config`` holds it, and its input, run once."""
    model = build_model(model_name, seed=0).train()
    with measure.LocalGroups().group(config.tp) as groups:
        assert groups is not None
        placed = measure.place(model, 1, config, groups, allowed=lambda _i, _c: True)
        batch_acts = synthetic_batch(model_name, batch_size=batch, seq_len=SEQ)
        inputs = measure.layer_input(placed, batch_acts)
        measure.run_once(placed.layer, inputs, device=CPU)
        yield placed.layer, inputs


@pytest.mark.parametrize(
    ("model_name", "config"),
    [
        ("gpt-tiny", Config(1, "none")),
        ("gpt-tiny", Config(2, "megatron")),
        ("llama-tiny", Config(1, "none")),
    ],
)
def test_selective_op_keeps_the_policys_outputs_between_full_and_no_checkpointing(
    model_name: str, config: Config
) -> None:
    with _block(model_name, config, batch=2) as (layer, inputs):
        memory = measure.measure_memory(layer, inputs, device=CPU, selective=True)
        with _KeptOutputs() as counted:
            layer(inputs)
    kept = memory.selective_retained_bytes
    assert kept is not None
    # Full checkpointing keeps the output (and the RNG state); selective-op also the kept
    # outputs, held in the checkpoint's cache: to the byte what the policy's ops produced.
    assert counted.bytes > 0
    assert kept == memory.checkpoint_retained_bytes + counted.bytes
    assert memory.checkpoint_retained_bytes < kept < memory.retained_bytes


def test_without_selective_nothing_is_measured_for_it() -> None:
    with _block("gpt-tiny", Config(1, "none"), batch=1) as (layer, inputs):
        assert measure.measure_memory(layer, inputs, device=CPU).selective_retained_bytes is None


class _SlowStart(nn.Module):
    """A layer whose Python forward waits ``pause`` seconds before its ops: a recomputation
    runs the forward again, so it waits again (before the saved tensors it rebuilds)."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, acts: Activations) -> Activations:
        time.sleep(self.pause)
        return {"hidden": self.down(torch.relu(self.up(acts["hidden"])))}


def test_the_recomputation_is_timed_inside_the_backward() -> None:
    inputs = {"hidden": torch.randn(4, 8, requires_grad=True)}
    pause = 0.01
    times = measure.time_selective(_SlowStart(pause), inputs, warmup=1, repeats=3, device=CPU)
    assert pause <= times.recompute_s < 10 * pause
    assert pause <= times.forward_s < 10 * pause
    assert inputs["hidden"].grad is None  # cleared after, as the other timers leave it


def test_a_real_blocks_recomputation_is_timed() -> None:
    # On a tiny CPU block the policy's Python hook per op dominates (measured here: the
    # recomputation 0.8 ms against a 0.3 ms forward), so only a loose bound.
    with _block("gpt-tiny", Config(1, "none"), batch=1) as (layer, inputs):
        selective = measure.time_selective(layer, inputs, warmup=1, repeats=5, device=CPU)
        times = measure.time_passes(layer, inputs, warmup=1, repeats=5, device=CPU)
    assert 0 < selective.recompute_s < 20 * times.forward_s
    assert 0 < selective.forward_s < 20 * times.forward_s


class _SlowCore(Attends):
    """A layer whose attention core sleeps: what a checkpointed core costs again in the
    backward, and only there."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause
        self.core = self._core  # type: ignore[assignment]
        self.proj = nn.Linear(8, 8)

    def _core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **_: Any) -> torch.Tensor:
        time.sleep(self.pause)
        return q * k + v

    def forward(self, acts: Activations) -> Activations:
        x = self.proj(acts["hidden"])
        return {"hidden": self.core(x, x, x)}


def test_attention_checkpointing_is_timed_as_run_the_core_again_in_the_backward() -> None:
    inputs = {"hidden": torch.randn(4, 8, requires_grad=True)}
    pause = 0.01
    layer = _SlowCore(pause)
    plain = measure.time_passes(layer, inputs, warmup=1, repeats=3, device=CPU)
    times = measure.time_attention_checkpointed(
        layer, inputs, plain=plain, warmup=1, repeats=3, device=CPU
    )
    assert times is not None
    assert times.forward_s >= plain.forward_s >= pause  # the plain passes plus what it adds
    assert times.backward_s - plain.backward_s >= 0.8 * pause  # the core ran again
    assert times.backward_s < 10 * pause
    assert plain.backward_s < pause  # ... which it does not unless checkpointed
    assert layer.core == layer._core  # unwrapped after
    assert inputs["hidden"].grad is None
    untimed = measure.time_attention_checkpointed(
        _SlowStart(0.0), inputs, plain=plain, warmup=0, repeats=1, device=CPU
    )
    assert untimed is None

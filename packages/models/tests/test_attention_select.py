"""``--attention`` dispatch on CPU, with a stand-in ``flash_attn`` module.

flash-attn has no CPU build, so a fake module in ``sys.modules`` plays it: its
``flash_attn_func`` records each call and computes with torch's SDPA in flash-attn's
``[batch, seq, heads, head_dim]`` layout. A CUDA device is named (``torch.device("cuda")``
needs no GPU) where only the selection is tested; where the flash core must run on CPU
tensors, ``is_flash_device`` is replaced so that the CPU counts as a flash device.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from partita.formats.common import ATTENTION_KERNELS, AttentionKernel
from partita.models import attention
from partita.models.api import build_model, synthetic_batch
from partita.models.attention import (
    ATTENTION_CHOICES,
    Attends,
    apply_attention,
    eager_attention,
    flash_attention,
    sdpa_attention,
    select_attention,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
BATCH, HEADS, SEQ, HEAD_DIM = 2, 3, 5, 8  # all different: a wrong layout cannot pass


@dataclass
class FakeFlashAttn:
    """What the stand-in ``flash_attn_func`` was called with: one shape per call."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    window_sizes: list[tuple[int, int]] = field(default_factory=list)

    def flash_attn_func(
        self,
        q_bshd: torch.Tensor,
        k_bshd: torch.Tensor,
        v_bshd: torch.Tensor,
        dropout_p: float = 0.0,
        softmax_scale: float | None = None,
        causal: bool = False,
        window_size: tuple[int, int] = (-1, -1),
    ) -> torch.Tensor:
        self.shapes.append(tuple(q_bshd.shape))
        self.window_sizes.append(window_size)
        # flash-attn's documented window: query i sees keys i - left .. i + right (-1: no end).
        seq_q, seq_k = q_bshd.shape[1], k_bshd.shape[1]
        offset_qk = torch.arange(seq_k)[None, :] - torch.arange(seq_q)[:, None]
        left, right = window_size
        visible_qk = torch.ones(seq_q, seq_k, dtype=torch.bool)
        if left >= 0:
            visible_qk &= offset_qk >= -left
        if right >= 0 or causal:
            visible_qk &= offset_qk <= (0 if causal else right)
        out_bhsd = F.scaled_dot_product_attention(
            q_bshd.transpose(1, 2),
            k_bshd.transpose(1, 2),
            v_bshd.transpose(1, 2),
            attn_mask=visible_qk,
            dropout_p=dropout_p,
            scale=softmax_scale,
        )
        return out_bhsd.transpose(1, 2)


@pytest.fixture
def fake_flash(monkeypatch: pytest.MonkeyPatch) -> FakeFlashAttn:
    fake = FakeFlashAttn()
    module = types.ModuleType("flash_attn")
    # importlib.util.find_spec reads a module in sys.modules by its __spec__.
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", loader=None)
    module.flash_attn_func = fake.flash_attn_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return fake


@pytest.fixture
def no_flash(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules: find_spec answers None and an import fails, installed or not.
    monkeypatch.setitem(sys.modules, "flash_attn", None)


@pytest.fixture
def cpu_is_a_flash_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "is_flash_device", lambda device: device.type == "cpu")


def _qkv(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(  # type: ignore[return-value]
        torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, generator=generator).to(dtype) for _ in range(3)
    )


def test_auto_is_flash_on_cuda_where_flash_attn_is_installed(fake_flash: FakeFlashAttn) -> None:
    assert select_attention("auto", CUDA) == (flash_attention, "flash")


def test_auto_is_sdpa_on_cpu_even_where_flash_attn_is_installed(
    fake_flash: FakeFlashAttn,
) -> None:
    assert select_attention("auto", CPU) == (sdpa_attention, "sdpa")


def test_auto_is_sdpa_on_cuda_without_flash_attn(no_flash: None) -> None:
    assert select_attention("auto", CUDA) == (sdpa_attention, "sdpa")


def test_flash_on_cpu_is_one_line(fake_flash: FakeFlashAttn) -> None:
    with pytest.raises(ValueError) as error:
        select_attention("flash", CPU)
    assert str(error.value) == "--attention flash: flash-attn needs a CUDA device, got cpu"


def test_flash_without_flash_attn_is_one_line(no_flash: None) -> None:
    with pytest.raises(ValueError) as error:
        select_attention("flash", CUDA)
    assert str(error.value) == (
        "--attention flash: flash-attn is not installed (pip install flash-attn)"
    )


def test_flash_is_honoured_where_usable(fake_flash: FakeFlashAttn) -> None:
    assert select_attention("flash", CUDA) == (flash_attention, "flash")


@pytest.mark.parametrize("device", [CPU, CUDA], ids=str)
@pytest.mark.parametrize(("choice", "core"), [("sdpa", sdpa_attention), ("eager", eager_attention)])
def test_sdpa_and_eager_are_honoured_even_where_flash_is_usable(
    fake_flash: FakeFlashAttn, device: torch.device, choice: str, core: object
) -> None:
    assert select_attention(choice, device) == (core, choice)


def test_an_unknown_choice_names_the_choices() -> None:
    with pytest.raises(ValueError) as error:
        select_attention("xformers", CPU)
    assert str(error.value) == (
        "--attention: expected one of auto, flash, sdpa, eager, got 'xformers'"
    )


def test_the_kernel_names_are_the_ones_the_formats_record() -> None:
    assert ("auto", *ATTENTION_KERNELS) == ATTENTION_CHOICES
    assert set(get_args(AttentionKernel)) == {"", *ATTENTION_KERNELS}


@pytest.mark.usefixtures("cpu_is_a_flash_device")
@pytest.mark.parametrize("causal", [False, True])
def test_the_flash_core_calls_flash_attn_and_agrees_with_sdpa(
    fake_flash: FakeFlashAttn, causal: bool
) -> None:
    q, k, v = _qkv(torch.bfloat16)
    out = flash_attention(q, k, v, causal=causal, scale=0.3)
    assert fake_flash.shapes == [(BATCH, SEQ, HEADS, HEAD_DIM)]
    assert out.shape == q.shape
    expected = sdpa_attention(q, k, v, causal=causal, scale=0.3)
    torch.testing.assert_close(out, expected)
    # The layout matters: the stand-in handed [b, h, s, d] attends over heads instead.
    assert not torch.allclose(fake_flash.flash_attn_func(q, k, v), expected)


@pytest.mark.usefixtures("cpu_is_a_flash_device")
def test_the_flash_core_hands_sdpa_what_flash_attn_cannot_take(
    fake_flash: FakeFlashAttn,
) -> None:
    q, k, v = _qkv(torch.bfloat16)
    bias = torch.zeros(1, 1, SEQ, SEQ, dtype=torch.bfloat16)
    flash_attention(q, k, v, bias=bias)  # an additive bias
    flash_attention(*_qkv(torch.float32))  # fp32
    flash_attention(q, k[:, :, 1:], v[:, :, 1:], causal=True)  # causal over unequal lengths
    assert fake_flash.shapes == []
    flash_attention(q, k, v)
    assert len(fake_flash.shapes) == 1


def test_the_flash_core_on_cpu_without_the_stand_in_device_is_sdpa(
    fake_flash: FakeFlashAttn,
) -> None:
    q, k, v = _qkv(torch.bfloat16)
    torch.testing.assert_close(flash_attention(q, k, v), sdpa_attention(q, k, v))
    assert fake_flash.shapes == []  # the production predicate: CPU is no flash device


@pytest.mark.usefixtures("cpu_is_a_flash_device")
@pytest.mark.parametrize(
    ("choice", "core", "flash_calls"),
    [("flash", flash_attention, True), ("sdpa", sdpa_attention, False)],
)
def test_apply_attention_sets_every_core_and_a_model_runs_on_it(
    fake_flash: FakeFlashAttn, choice: str, core: object, flash_calls: bool
) -> None:
    model = build_model("gpt-tiny", seed=0).to(torch.bfloat16)
    batch = synthetic_batch("gpt-tiny", batch_size=2, seq_len=16)
    reference = model(batch)["logits"]  # the default core: SDPA
    assert apply_attention(model, choice, CPU) == choice
    attends = [m for m in model.modules() if isinstance(m, Attends)]
    assert attends and all(m.core is core for m in attends)
    torch.testing.assert_close(model(batch)["logits"], reference)
    assert len(fake_flash.shapes) == (len(attends) if flash_calls else 0)


def test_apply_attention_eager_on_cpu() -> None:
    model = build_model("gpt-tiny", seed=0)
    assert apply_attention(model, "eager", CPU) == "eager"
    assert all(m.core is eager_attention for m in model.modules() if isinstance(m, Attends))


@pytest.mark.usefixtures("cpu_is_a_flash_device")
@pytest.mark.parametrize("window", [1, 2, SEQ])
def test_flash_sliding_window_matches_sdpa_and_eager(
    fake_flash: FakeFlashAttn, window: int
) -> None:
    q, k, v = _qkv(torch.bfloat16)
    flash = flash_attention(q, k, v, causal=True, window=window)
    # A window spanning the sequence hides nothing: flash-attn then gets no window at all.
    assert fake_flash.window_sizes == [(window - 1, 0) if window < SEQ else (-1, -1)]
    for core in (sdpa_attention, eager_attention):
        expected = core(q.float(), k.float(), v.float(), causal=True, window=window)
        torch.testing.assert_close(flash.float(), expected, rtol=2e-2, atol=2e-2)

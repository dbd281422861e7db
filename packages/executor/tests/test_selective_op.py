"""``ckpt: selective-op`` keeps every other matmul and the attention kernel, recomputes the rest.

On real partita blocks (gpt-tiny, llama-tiny, t5-tiny built from their presets; one process,
fp32, nothing downloaded): a dispatch mode outside the checkpoint sees every op that really
runs (an output the checkpoint kept is handed back without running its op), and the backward's
ops that run with gradients enabled are the recomputation (the backward's own ops run without).
With early stopping off, the recomputation is the forward less exactly the 1st, 3rd, ...
matmul (``mm``/``addmm``) and the attention kernel; the outputs and every gradient equal the
un-checkpointed layer's bit for bit, with dropout on; and a second backward pass through the
same graph (ZB-H1's ``W`` after ``B``) recomputes again, as under ``full`` (torch's own
selective checkpoint refuses it), while a backward that frees the graph frees what was kept.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import set_checkpoint_early_stop

from partita.executor import recompute
from partita.executor.recompute import run_layer, selective_op_contexts
from partita.executor.setups import LayerSetup
from partita.executor.trainer import _split_weight_pass
from partita.models.api import build_model, synthetic_batch
from partita.models.layered import Activations
from partita.models.presets import all_presets

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
DETACH = torch.ops.aten.detach.default  # the checkpoint's own, on what it keeps
DROPOUT = {
    "gpt-tiny": {"resid_pdrop": 0.1, "attn_pdrop": 0.1, "embd_pdrop": 0.1},
    "llama-tiny": {"attention_dropout": 0.1},
    "t5-tiny": {"dropout_rate": 0.1},
}


class _Ops(TorchDispatchMode):
    """Every op that runs, with whether gradients were enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.ran: list[tuple[Any, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ran.append((func, torch.is_grad_enabled()))
        return func(*args, **(kwargs or {}))


def _block(model_name: str, *, dropout: bool) -> tuple[nn.Module, Activations]:
    """The model's first block, with dropout where asked, and its inputs (leaves)."""
    config = {**all_presets()[model_name], **(DROPOUT[model_name] if dropout else {})}
    model = build_model(config, seed=0)
    batch = synthetic_batch(config, batch_size=2, seq_len=16, seed=1)
    with torch.no_grad():
        acts = model.layers[0](batch)
    return model.layers[1], acts


def _leaves(acts: Activations) -> Activations:
    return {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in acts.items()}


def _output_grad(out: torch.Tensor) -> torch.Tensor:
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)


@pytest.mark.parametrize("model_name", ["gpt-tiny", "llama-tiny", "t5-tiny"])
def test_the_recomputation_skips_exactly_the_odd_matmuls_and_the_attention_kernel(
    model_name: str,
) -> None:
    block, acts = _block(model_name, dropout=False)
    inputs = _leaves(acts)
    with set_checkpoint_early_stop(False), _Ops() as forward:
        out = run_layer(block, inputs, "selective-op")["hidden"]
    grad = _output_grad(out)
    with set_checkpoint_early_stop(False), _Ops() as backward:
        out.backward(grad)

    ran = [op for op, _ in forward.ran if op != DETACH]
    recomputed = [op for op, grad_mode in backward.ran if grad_mode and op != DETACH]
    matmuls = [i for i, op in enumerate(ran) if op in MATMULS]
    kernels = [i for i, op in enumerate(ran) if op == ATTENTION]
    assert len(matmuls) >= 6  # q, k, v, output and the MLP's projections
    # GPT and LLaMA attend with torch's fused CPU kernel; T5's relative bias (eager
    # attention: bmm and softmax) has no kernel to keep.
    assert len(kernels) == (0 if model_name == "t5-tiny" else 1)
    kept = set(matmuls[0::2]) | set(kernels)
    assert recomputed == [op for i, op in enumerate(ran) if i not in kept]
    # So the even matmuls run again (with everything elementwise), the odd ones do not.
    assert sum(op in MATMULS for op in recomputed) == len(matmuls) // 2
    assert ATTENTION not in recomputed


@pytest.mark.parametrize("model_name", ["gpt-tiny", "llama-tiny", "t5-tiny"])
@pytest.mark.parametrize("dropout", [True, False])
def test_outputs_and_gradients_equal_the_plain_layer(model_name: str, dropout: bool) -> None:
    block, acts = _block(model_name, dropout=dropout)
    results = {}
    for ckpt in ("none", "selective-op", "full"):
        inputs = _leaves(acts)
        block.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the same dropout masks in each run
        out = run_layer(block, inputs, ckpt)["hidden"]
        torch.manual_seed(4)  # the recomputation restores the forward's random state itself
        out.backward(_output_grad(out))
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        assert inputs["hidden"].grad is not None
        results[ckpt] = (out.detach(), inputs["hidden"].grad.clone(), grads)

    plain_out, plain_input_grad, plain_grads = results["none"]
    if dropout:  # the masks matter: without dropout the output would not change
        block.eval()
        assert not torch.equal(run_layer(block, _leaves(acts), "none")["hidden"], plain_out)
        block.train()
    for ckpt in ("selective-op", "full"):
        out, input_grad, grads = results[ckpt]
        assert torch.equal(out, plain_out), ckpt
        assert torch.equal(input_grad, plain_input_grad), ckpt
        assert grads.keys() == plain_grads.keys() and grads, ckpt
        for name, g in grads.items():
            assert torch.equal(g, plain_grads[name]), (ckpt, name)


@pytest.mark.parametrize("model_name", ["gpt-tiny", "llama-tiny"])
def test_a_second_backward_pass_recomputes_again_as_zb_w_runs_it(model_name: str) -> None:
    # B: the input gradients, graph kept; W: the weights' gradients through the same graph
    # (``Trainer._backward_weight`` where the chunk holds a checkpointed layer).
    block, acts = _block(model_name, dropout=True)
    expected = {}
    for ckpt in ("none", "selective-op"):
        inputs = _leaves(acts)
        block.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        out = run_layer(block, inputs, ckpt)["hidden"]
        grad = _output_grad(out)
        (input_grad,) = torch.autograd.grad([out], [inputs["hidden"]], [grad], retain_graph=True)
        assert all(p.grad is None for p in block.parameters())
        with _Ops() as second:
            torch.autograd.backward([out], [grad], inputs=list(block.parameters()))
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        if ckpt == "none":
            expected = {"input": input_grad, **grads}
            continue
        assert any(mode for _, mode in second.ran), "W recomputes the layer"
        assert torch.equal(input_grad, expected["input"])
        for name, g in grads.items():
            assert torch.equal(g, expected[name]), name


def test_the_kept_outputs_go_with_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recompute context holds the kept outputs for any later pass; a backward that frees
    # the graph frees them too, as it frees an un-checkpointed layer's saved tensors.
    made: list[weakref.ref[Any]] = []

    def recording() -> tuple[Any, Any]:
        forward, again = selective_op_contexts()
        made.append(weakref.ref(again))
        return forward, again

    monkeypatch.setattr(recompute, "selective_op_contexts", recording)
    block, acts = _block("gpt-tiny", dropout=False)
    out = run_layer(block, _leaves(acts), "selective-op")["hidden"]
    assert made and made[0]() is not None
    out.backward(_output_grad(out))
    assert made[0]() is None


def test_zb_w_runs_the_whole_backward_of_a_chunk_with_a_selective_op_layer() -> None:
    # A split W would recompute the layer once per weight branch, as under ``full``.
    groups = SimpleNamespace(dp_size=1)

    def stage(*ckpts: str) -> Any:
        setups = [
            LayerSetup(f"b{i}", 1, "none", "ddp", c, groups)  # type: ignore[arg-type]
            for i, c in enumerate(ckpts)
        ]
        return SimpleNamespace(setups=setups, chunks=[[i] for i in range(len(ckpts))])

    assert _split_weight_pass(stage("none", "attention", "selective-op", "full")) == [
        True,
        True,
        False,
        False,
    ]

"""The split backward's B and W give what one backward gives, and W runs only weight branches.

On gpt-tiny and llama-tiny blocks (one process, fp32): the inputs' gradients from B and every
weight's gradient after W equal a plain backward's; each weight's post-accumulate hook fires
once (the data-parallel buckets count on it); selective recompute inside the chunk works; and
W asks autograd for no activation gradient (it never runs the chain B ran).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from partita.executor.recompute import recompute_attention_cores
from partita.executor.split_backward import SplitBackward
from partita.models.api import build_model, resolve_config, synthetic_batch


def _chunk(model_name: str, *, selective: bool) -> tuple[nn.ModuleList, dict[str, torch.Tensor]]:
    model = build_model(model_name, seed=0)
    batch = synthetic_batch(resolve_config(model_name), batch_size=2, seq_len=16, seed=1)
    with torch.no_grad():
        acts = model.layers[0](batch)
    blocks = nn.ModuleList(model.layers[1:-1])
    if selective:
        for block in blocks:
            recompute_attention_cores(block)
    return blocks, {
        k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in acts.items()
    }


def _run(blocks: nn.ModuleList, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    acts = dict(inputs)
    for block in blocks:
        acts = block(acts)
    return acts


@pytest.mark.parametrize("model_name", ["gpt-tiny", "llama-tiny", "t5-tiny"])
@pytest.mark.parametrize("selective", [False, True])
def test_b_then_w_equal_one_backward(model_name: str, selective: bool) -> None:
    blocks, start = _chunk(model_name, selective=selective)
    outputs = _run(blocks, start)
    roots = [outputs["hidden"]]
    grads = [torch.randn_like(roots[0], generator=torch.Generator().manual_seed(2))]
    torch.autograd.backward(roots, grads)
    expected_input = start["hidden"].grad.clone()
    expected = {n: p.grad.clone() for n, p in blocks.named_parameters()}
    for p in blocks.parameters():
        p.grad = None
    start = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in start.items()}

    fired: dict[str, int] = {}
    for name, param in blocks.named_parameters():
        param.register_post_accumulate_grad_hook(
            lambda _p, name=name: fired.__setitem__(name, fired.get(name, 0) + 1)
        )
    outputs = _run(blocks, start)
    split = SplitBackward([outputs["hidden"]], grads, start.values(), blocks.parameters())
    # T5's decoder stream starts from the vocabulary table (no input below it) and meets the
    # encoder's: its weights lie on both sides of split points, so W runs the whole backward.
    assert split.separable == (model_name != "t5-tiny")
    wanted = [x for x in start.values() if x.requires_grad]
    (input_grad,) = [
        g for x, g in zip(wanted, split.input_gradients(), strict=True) if x is start["hidden"]
    ]
    assert torch.allclose(input_grad, expected_input, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in blocks.parameters())  # B made no weight gradient
    assert not fired
    split.weight_gradients()
    for name, param in blocks.named_parameters():
        assert param.grad is not None, name
        assert torch.allclose(param.grad, expected[name], rtol=1e-6, atol=1e-7), name
    assert fired == {name: 1 for name, _ in blocks.named_parameters()}


def test_w_runs_no_activation_gradient() -> None:
    # Every backward W runs starts at a split point and ends at weights: hooks on the chain's
    # activations (the blocks' outputs between layers) see nothing in W.
    blocks, start = _chunk("gpt-tiny", selective=False)
    acts, between = dict(start), []
    for block in blocks:
        acts = block(acts)
        between.append(acts["hidden"])
    seen: list[int] = []
    for tensor in between[:-1]:
        tensor.register_hook(lambda g: seen.append(1))
    grads = [torch.ones_like(acts["hidden"])]
    split = SplitBackward([acts["hidden"]], grads, start.values(), blocks.parameters())
    split.input_gradients()
    in_b = len(seen)
    split.weight_gradients()
    assert in_b == len(between) - 1 and len(seen) == in_b


def test_without_inputs_needing_gradients_w_is_the_whole_backward() -> None:
    blocks, start = _chunk("gpt-tiny", selective=False)
    start = {k: v.detach() for k, v in start.items()}  # the first stage: token embeddings fixed
    outputs = _run(blocks, start)
    split = SplitBackward(
        [outputs["hidden"]],
        [torch.ones_like(outputs["hidden"])],
        start.values(),
        blocks.parameters(),
    )
    assert split.input_gradients() == []
    split.weight_gradients()
    assert all(p.grad is not None for p in blocks.parameters())

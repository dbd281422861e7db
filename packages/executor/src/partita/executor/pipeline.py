"""Point-to-point transfers of activation dicts between neighbouring pipeline stages.

A forward transfer sends a small header (keys, shapes, dtypes, whether each needs a gradient)
and then the tensors; the backward transfer sends the gradients of the tensors that needed
one, in key order (the sender of the activations knows their shapes). Sends are
asynchronous and their handles are kept until the step ends; receives block (up to the
process group's timeout). Per (sender, receiver) pair transfers arrive in the order they were
sent, and both sides walk their schedules in micro-batch order, so no tags are needed
beyond telling forward from backward.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from partita.models.layered import Activations

FORWARD_TAG, BACKWARD_TAG = 1, 2


class Transfers:
    """Sends in flight, kept alive (with their tensors) until :meth:`wait`."""

    def __init__(self) -> None:
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, dst=dst, tag=tag)
        assert work is not None
        self._pending.append((work, tensor))

    def send_activations(self, acts: Activations, dst: int) -> None:
        header = [
            [key, list(x.shape), str(x.dtype).removeprefix("torch."), bool(x.requires_grad)]
            for key, x in sorted(acts.items())
        ]
        encoded = torch.tensor(list(json.dumps(header).encode()), dtype=torch.uint8)
        self.send(torch.tensor([encoded.numel()], dtype=torch.int64), dst, FORWARD_TAG)
        self.send(encoded, dst, FORWARD_TAG)
        for key, _, _, _ in header:
            self.send(acts[key], dst, FORWARD_TAG)

    def send_gradients(self, grads: list[torch.Tensor], dst: int) -> None:
        for grad in grads:
            self.send(grad, dst, BACKWARD_TAG)

    def wait(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()


def recv_activations(src: int) -> Activations:
    """The activations ``src`` sent; those that needed a gradient become leaves that need one."""
    length = torch.empty(1, dtype=torch.int64)
    dist.recv(length, src=src, tag=FORWARD_TAG)
    encoded = torch.empty(int(length), dtype=torch.uint8)
    dist.recv(encoded, src=src, tag=FORWARD_TAG)
    acts = {}
    for key, shape, dtype, needs_grad in json.loads(bytes(encoded.tolist()).decode()):
        x = torch.empty(shape, dtype=getattr(torch, dtype))
        dist.recv(x, src=src, tag=FORWARD_TAG)
        acts[key] = x.requires_grad_(needs_grad)
    return acts


def recv_gradients(like: list[torch.Tensor], src: int) -> list[torch.Tensor]:
    grads = []
    for x in like:
        grad = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dist.recv(grad, src=src, tag=BACKWARD_TAG)
        grads.append(grad)
    return grads


def needing_grad(acts: Activations) -> list[str]:
    return [key for key, x in sorted(acts.items()) if x.requires_grad]

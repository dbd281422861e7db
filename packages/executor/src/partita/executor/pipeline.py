"""Point-to-point transfers of activation dicts between neighbouring pipeline stages.

Within a step every micro-batch sends the same tensors (keys, shapes, dtypes, whether each
needs a gradient) to a virtual stage, so they are agreed once per step and receiving virtual
stage: its first forward transfer is two messages, the sizes (of the whole payload and of its
header), then one payload holding a header and every tensor's bytes; the later ones are the
tensors' bytes alone, in one message, which the receiver takes into a buffer of the size it
already knows. One message per transfer instead of one per tensor, and one instead of two
after the first: on gloo each costs a latency of ~0.1-0.2 ms of the sender's and receiver's
time, and on CUDA reading a size or a header back is a host sync that stops the host from
queuing ahead. The backward transfer is one message holding the gradients of the tensors that
needed one, in key order (the sender of the activations knows their shapes). Sends are
asynchronous and their handles are kept until known to be done; receives block (up to the
process group's timeout). Transfers go between virtual stages (a rank holds several under
interleaved 1F1B); per (sender, receiver) pair they arrive in the order they were sent, and
every schedule receives them in that order (the formats package tests it for each generated
schedule), so no tags are needed beyond telling forward from backward, and the n-th transfer
to a virtual stage is the n-th it receives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import torch.distributed as dist

from partita.models.layered import Activations

FORWARD_TAG, BACKWARD_TAG = 1, 2
ALIGN = 8  # bytes: every tensor starts at a multiple, so its bytes view back as its dtype


class Transfers:
    """Sends in flight, each kept alive (with its tensor) until it is known to have
    completed, at the latest until :meth:`wait`.

    Kept to the step's end, every micro-batch's payload (a copy of the stage's output, of its
    input's gradient) stayed allocated: m copies of a boundary activation, 4 GiB for a 70B
    model's 64 micro-batches. A send is let go once it has completed (NCCL tells), or once
    its receiver is known to have taken it: the activations sent for a micro-batch have
    arrived when its gradient comes back (:meth:`release`; gloo's sends say they completed
    only when waited on)."""

    def __init__(self) -> None:
        self._pending: list[tuple[dist.Work, torch.Tensor, int]] = []
        self._sent = 0
        self._agreed: dict[int, Header] = {}  # by receiving virtual stage

    def send(self, tensor: torch.Tensor, dst: int, tag: int, *, token: int = -1) -> None:
        self._pending = [p for p in self._pending if not p[0].is_completed()]
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, dst=dst, tag=tag)
        assert work is not None
        self._pending.append((work, tensor, token))

    def send_activations(self, acts: Activations, dst: int, *, stage: int) -> int:
        """Send ``acts`` to virtual stage ``stage`` on rank ``dst``; returns the token that
        :meth:`release` takes once the receiver has answered (its gradient came back)."""
        self._sent += 1
        token = self._sent
        header = _header(acts)
        data = [_padded(_bytes(acts[key])) for key, *_ in header]
        agreed = self._agreed.get(stage)
        if agreed is not None:
            assert header == agreed, f"stage {stage}: micro-batches differ: {header} {agreed}"
            self.send(torch.cat(data) if len(data) > 1 else data[0], dst, FORWARD_TAG, token=token)
            return token
        self._agreed[stage] = header
        device = acts[header[0][0]].device
        encoded = _padded(
            torch.tensor(list(json.dumps(header).encode()), dtype=torch.uint8, device=device)
        )
        payload = torch.cat([encoded, *data])
        sizes = torch.tensor([payload.numel(), encoded.numel()], dtype=torch.int64, device=device)
        self.send(sizes, dst, FORWARD_TAG, token=token)
        self.send(payload, dst, FORWARD_TAG, token=token)
        return token

    def release(self, token: int) -> None:
        """Let go of the sends of ``token``, which the receiver has taken (wait returns at
        once)."""
        for work, _, sent in self._pending:
            if sent == token:
                work.wait()
        self._pending = [p for p in self._pending if p[2] != token]

    def send_gradients(self, grads: list[torch.Tensor], dst: int) -> None:
        if grads:
            self.send(torch.cat([_padded(_bytes(g)) for g in grads]), dst, BACKWARD_TAG)

    @property
    def in_flight(self) -> int:
        """Sends not yet let go of."""
        return len(self._pending)

    def wait(self) -> None:
        for work, _, _ in self._pending:
            work.wait()
        self._pending.clear()


class Inbox:
    """The receiving side of a step's forward transfers: the header each virtual stage
    agreed with its sender at its first transfer, for the later ones."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._agreed: dict[int, Header] = {}

    def activations(self, src: int, *, stage: int) -> Activations:
        """The activations ``src`` sent to virtual stage ``stage``, on the device; those that
        needed a gradient become leaves that need one."""
        header = self._agreed.get(stage)
        if header is None:
            sizes = torch.empty(2, dtype=torch.int64, device=self.device)
            dist.recv(sizes, src=src, tag=FORWARD_TAG)
            total, header_bytes = (int(n) for n in sizes.tolist())  # one sync per step
            payload = torch.empty(total, dtype=torch.uint8, device=self.device)
            dist.recv(payload, src=src, tag=FORWARD_TAG)
            text = bytes(payload[:header_bytes].tolist()).rstrip(b"\0").decode()
            header = [(str(k), list(shape), str(t), bool(g)) for k, shape, t, g in json.loads(text)]
            self._agreed[stage] = header
            offset = header_bytes
        else:
            payload = torch.empty(_data_bytes(header), dtype=torch.uint8, device=self.device)
            dist.recv(payload, src=src, tag=FORWARD_TAG)
            offset = 0
        acts = {}
        for key, shape, dtype, needs_grad in header:
            x, offset = _unpack(payload, offset, list(shape), getattr(torch, dtype))
            acts[key] = x.requires_grad_(needs_grad)
        return acts


def recv_gradients(like: list[torch.Tensor], src: int) -> list[torch.Tensor]:
    if not like:
        return []
    total = sum(_slot_bytes(x.shape, x.dtype) for x in like)
    payload = torch.empty(total, dtype=torch.uint8, device=like[0].device)
    dist.recv(payload, src=src, tag=BACKWARD_TAG)
    grads, offset = [], 0
    for x in like:
        grad, offset = _unpack(payload, offset, list(x.shape), x.dtype)
        grads.append(grad)
    return grads


# (key, shape, dtype name, needs a gradient) of each tensor, in key order
Header = list[tuple[str, list[int], str, bool]]


def _header(acts: Activations) -> Header:
    return [
        (key, list(x.shape), str(x.dtype).removeprefix("torch."), bool(x.requires_grad))
        for key, x in sorted(acts.items())
    ]


def _data_bytes(header: Header) -> int:
    return sum(_slot_bytes(shape, getattr(torch, dtype)) for _, shape, dtype, _ in header)


def needing_grad(acts: Activations) -> list[str]:
    return [key for key, x in sorted(acts.items()) if x.requires_grad]


def _bytes(x: torch.Tensor) -> torch.Tensor:
    return x.detach().contiguous().reshape(-1).view(torch.uint8)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _slot_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """The bytes a tensor takes in a transfer's payload: its data, padded to ``ALIGN``."""
    return _aligned(int(torch.Size(shape).numel()) * dtype.itemsize)


def _padded(data: torch.Tensor) -> torch.Tensor:
    extra = _aligned(data.numel()) - data.numel()
    return torch.cat([data, data.new_zeros(extra)]) if extra else data


def _unpack(
    payload: torch.Tensor, offset: int, shape: list[int], dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """The tensor stored at ``offset`` (a copy of its own), and where the next one starts."""
    nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
    x = payload[offset : offset + nbytes].view(dtype).reshape(shape).clone()
    return x, offset + _slot_bytes(shape, dtype)


def weight_leaves(roots: list[torch.Tensor], *, exclude: set[int]) -> list[torch.Tensor]:
    """The leaves of ``roots``' autograd graph that accumulate a gradient (the parameters the
    graph used: FSDP's unsharded ones included), but those whose id is in ``exclude``."""
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    seen: set[object] = set()
    leaves: list[torch.Tensor] = []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node's tensor
        if leaf is not None:
            if id(leaf) not in exclude:
                leaves.append(leaf)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves

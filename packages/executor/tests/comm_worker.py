"""One rank of the communication-step check; ``test_comm.py`` runs it under torchrun (gloo).

Every rank builds the same full tensors from fixed seeds, feeds its own part of them to a
step of ``partita.executor.comm`` in a process group, and compares the step's output and the
gradient autograd gives for its input against a single-process reference computed on the
full tensors. The reference is the global function: the per-rank outputs as torch ops of the
full inputs, and the loss ``sum_r <out_r, y_r>`` with a different cotangent ``y_r`` per rank,
or ``<out, y>`` counted once where the step assumes a replicated loss downstream (outputs
every rank then uses identically). A rank's expected gradient is its part of the reference
gradient of the full inputs.

The checks run in the whole world, in groups of two (consecutive and strided) and in groups
of one, with the single-tensor collectives and again with the all-gather-list /
all-reduce + chunk fallbacks. A rank that finds a mismatch prints it and exits non-zero; an
exception raised inside a step ends the rank at once, since its collectives may be out of step.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from partita.executor import comm
from partita.executor.vocab_parallel_loss import vocab_parallel_cross_entropy
from partita.models.attention import sdpa_attention
from partita.models.losses import IGNORE_INDEX

TIMEOUT = timedelta(seconds=30)
Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    make_full: Callable[[torch.Generator, int], Tensors]  # (generator, group size) -> inputs
    local_of: Callable[[Tensors, int, int], Tensors]  # (full, rank, size) -> this rank's part
    run: Callable[[Tensors, dist.ProcessGroup], torch.Tensor]  # the distributed step
    reference: Callable[[Tensors, int], Tensors]  # (full, size) -> every rank's output
    replicated_loss: bool = False  # downstream of the output is identical on every rank
    summed_grads: frozenset[int] = field(default_factory=frozenset)  # partial per rank


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _chunks(x: torch.Tensor, size: int, dim: int) -> Tensors:
    return list(x.chunk(size, dim=dim))


def _replicated(full: Tensors, rank: int, size: int) -> Tensors:
    return list(full)


def _shard(dim: int) -> Callable[[Tensors, int, int], Tensors]:
    def local_of(full: Tensors, rank: int, size: int) -> Tensors:
        return [full[0].chunk(size, dim=dim)[rank]]

    return local_of


def _one_per_rank(full: Tensors, rank: int, size: int) -> Tensors:
    return [full[0][rank]]  # full[0] stacks every rank's own input on dim 0


def _per_rank_inputs(*shape: int) -> Callable[[torch.Generator, int], Tensors]:
    return lambda gen, size: [_randn(gen, size, *shape)]


def _one_input(*shape: int) -> Callable[[torch.Generator, int], Tensors]:
    return lambda gen, size: [_randn(gen, *shape)]


def _cases() -> list[Case]:
    cases = [
        Case(
            "copy_to_region",
            _one_input(3, 8, 5),
            _replicated,
            lambda xs, g: comm.copy_to_region(xs[0], g),
            lambda full, p: [full[0]] * p,
        ),
        Case(
            "reduce_from_region",
            _per_rank_inputs(3, 8, 5),
            _one_per_rank,
            lambda xs, g: comm.reduce_from_region(xs[0], g),
            lambda full, p: [full[0].sum(0)] * p,
            replicated_loss=True,
        ),
    ]
    for dim in (-1, 0, 1):
        cases += [
            Case(
                f"gather_from_region(dim={dim})",
                _one_input(8, 8, 8),
                _shard(dim),
                lambda xs, g, dim=dim: comm.gather_from_region(xs[0], g, dim),
                lambda full, p: [full[0]] * p,
                replicated_loss=True,
            ),
            Case(
                f"scatter_to_region(dim={dim})",
                _one_input(8, 8, 8),
                _replicated,
                lambda xs, g, dim=dim: comm.scatter_to_region(xs[0], g, dim),
                lambda full, p, dim=dim: _chunks(full[0], p, dim),
            ),
        ]
    for dim in (1, 0, -1):
        cases += [
            Case(
                f"gather_sequence(dim={dim})",
                _one_input(4, 8, 8),
                _shard(dim),
                lambda xs, g, dim=dim: comm.gather_sequence(xs[0], g, dim),
                lambda full, p: [full[0]] * p,
            ),
            Case(
                f"reduce_scatter_sequence(dim={dim})",
                _per_rank_inputs(4, 8, 8),
                _one_per_rank,
                lambda xs, g, dim=dim: comm.reduce_scatter_sequence(xs[0], g, dim),
                lambda full, p, dim=dim: _chunks(full[0].sum(0), p, dim),
            ),
            Case(
                f"split_sequence(dim={dim})",
                _one_input(4, 8, 8),
                _replicated,
                lambda xs, g, dim=dim: comm.split_sequence(xs[0], g, dim),
                lambda full, p, dim=dim: _chunks(full[0], p, dim),
            ),
            Case(
                f"all_gather_sequence_no_reduce(dim={dim})",
                _one_input(4, 8, 8),
                _shard(dim),
                lambda xs, g, dim=dim: comm.all_gather_sequence_no_reduce(xs[0], g, dim),
                lambda full, p: [full[0]] * p,
                replicated_loss=True,
            ),
        ]
    b, h, s, d = 2, 4, 8, 3
    cases += [
        Case(
            "seq_to_heads",
            _one_input(b, h, s, d),
            _shard(2),
            lambda xs, g: comm.seq_to_heads(xs[0], g),
            lambda full, p: _chunks(full[0], p, 1),
        ),
        Case(
            "heads_to_seq",
            _one_input(b, h, s, d),
            _shard(1),
            lambda xs, g: comm.heads_to_seq(xs[0], g),
            lambda full, p: _chunks(full[0], p, 2),
        ),
    ]
    # The vocabulary-parallel loss: logits split along the classes, every rank's loss the
    # whole loss (replicated downstream); targets in every shard, two of them ignored.
    targets = torch.tensor([0, 7, 3, IGNORE_INDEX, 4, 1, IGNORE_INDEX, 6, 2, 5])
    for label, scale in (("", 1.0), (", large logits", 60.0)):
        cases.append(
            Case(
                f"vocab_parallel_cross_entropy{label}",
                lambda gen, size, scale=scale: [_randn(gen, 10, 8) * scale],
                _shard(-1),
                lambda xs, g: vocab_parallel_cross_entropy(g)(
                    xs[0], targets, ignore_index=IGNORE_INDEX
                ).reshape(1),
                lambda full, p: (
                    [F.cross_entropy(full[0], targets, ignore_index=IGNORE_INDEX).reshape(1)] * p
                ),
                replicated_loss=True,
            )
        )
    # Ulysses attention: q, k, v sequence-sharded, the bias (if any) full and replicated.
    for label, bias_shape, causal, scale in (
        ("no bias", None, False, None),
        ("causal", None, True, None),
        ("per-head bias [b,h,s,s], causal", (b, h, s, s), True, None),
        ("per-head bias [1,h,s,s], scale", (1, h, s, s), False, 0.3),
        ("shared bias [b,1,s,s], causal", (b, 1, s, s), True, None),
        ("per-head bias [h,s,s]", (h, s, s), False, None),
        ("bias [s,s]", (s, s), False, None),
    ):

        def make_full(
            gen: torch.Generator, size: int, bias_shape: tuple[int, ...] | None = bias_shape
        ) -> Tensors:
            qkv = [_randn(gen, b, h, s, d) for _ in range(3)]
            return qkv if bias_shape is None else [*qkv, _randn(gen, *bias_shape)]

        def local_of(full: Tensors, rank: int, size: int) -> Tensors:
            return [t.chunk(size, dim=2)[rank] for t in full[:3]] + full[3:]

        def run(
            xs: Tensors, g: dist.ProcessGroup, causal: bool = causal, scale: float | None = scale
        ) -> torch.Tensor:
            core = comm.ulysses_attention(sdpa_attention, g)
            bias = xs[3] if len(xs) > 3 else None
            return core(xs[0], xs[1], xs[2], bias=bias, causal=causal, scale=scale)

        def reference(
            full: Tensors, size: int, causal: bool = causal, scale: float | None = scale
        ) -> Tensors:
            bias = full[3] if len(full) > 3 else None
            out = sdpa_attention(*full[:3], bias=bias, causal=causal, scale=scale)
            return _chunks(out, size, 2)

        cases.append(
            Case(
                f"ulysses_attention({label})",
                make_full,
                local_of,
                run,
                reference,
                summed_grads=frozenset({3}),
            )
        )
    return cases


def _check_case(case: Case, group: dist.ProcessGroup, seed: int) -> None:
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    gen = torch.Generator().manual_seed(seed)
    full = case.make_full(gen, size)

    # Reference: the global function on the full tensors, in this process.
    ref_full = [t.clone().requires_grad_() for t in full]
    ref_outs = case.reference(ref_full, size)
    cotangents = [_randn(gen, *ref_outs[0].shape) for _ in range(size)]
    if case.replicated_loss:
        cotangents = [cotangents[0]] * size
        ref_loss = (ref_outs[0] * cotangents[0]).sum()
    else:
        ref_loss = sum((o * y).sum() for o, y in zip(ref_outs, cotangents, strict=True))
    ref_grads = torch.autograd.grad(ref_loss, ref_full)
    expected_grads = case.local_of(list(ref_grads), rank, size)

    # The distributed step on this rank's part.
    local = [t.detach().requires_grad_() for t in case.local_of(full, rank, size)]
    out = case.run(local, group)
    torch.testing.assert_close(out, ref_outs[rank].detach(), msg=lambda m: f"forward: {m}")
    grads = list(torch.autograd.grad((out * cotangents[rank]).sum(), local))
    for i in case.summed_grads & set(range(len(grads))):
        grads[i] = grads[i].clone()
        dist.all_reduce(grads[i], group=group)
    for i, (got, want) in enumerate(zip(grads, expected_grads, strict=True)):
        torch.testing.assert_close(got, want, msg=lambda m, i=i: f"gradient of input {i}: {m}")


def _groups(rank: int, world: int) -> dict[str, dist.ProcessGroup]:
    """This rank's group in each layout; every rank creates every group, in the same order."""
    layouts: dict[str, Sequence[Sequence[int]]] = {
        "pairs [0,1],[2,3]": [[0, 1], [2, 3]],
        "strided [0,2],[1,3]": [[0, 2], [1, 3]],
        "singletons": [[r] for r in range(world)],
    }
    mine: dict[str, dist.ProcessGroup] = {"world": dist.group.WORLD}
    for name, partition in layouts.items():
        for ranks in partition:
            group = dist.new_group(list(ranks), timeout=TIMEOUT)
            if rank in ranks:
                mine[name] = group
    return mine


def main() -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 4, f"expected 4 ranks, got {world}"
    groups = _groups(rank, world)
    cases = _cases()
    failures: list[str] = []
    timings: list[str] = []
    mode = "single-tensor collectives"
    started = time.perf_counter()
    for group_name, group in groups.items():
        for seed, case in enumerate(cases):
            try:
                _check_case(case, group, seed)
            except AssertionError:  # a mismatch: local, the ranks stay in step
                failures.append(
                    f"rank {rank}, {mode}, group {group_name}, {case.name}:\n"
                    + traceback.format_exc()
                )
            except Exception:
                # Raised inside a step, perhaps on some ranks only: the collectives may be
                # out of step now, so stop at once (torchrun then stops the other ranks).
                print(
                    f"rank {rank}, {mode}, group {group_name}, {case.name} raised:\n"
                    + traceback.format_exc(),
                    file=sys.stderr,
                    flush=True,
                )
                return 2
    timings.append(f"{mode}: {time.perf_counter() - started:.2f}s")
    count = torch.tensor([len(failures)])
    dist.all_reduce(count, group=dist.group.WORLD)
    if rank == 0:
        print(
            f"{len(cases)} cases x {len(groups)} group layouts x 1 mode; "
            f"{'; '.join(timings)}; failures on all ranks: {int(count)}",
            flush=True,
        )
    for failure in failures:
        print(failure, file=sys.stderr, flush=True)
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

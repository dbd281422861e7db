"""Peak memory of one device per pipeline rank, from its chunks' work and the schedule.

What a device holds over a step:

* parameters and optimizer states, the whole step;
* gradients: DDP's buckets (``LayerWork.grads_held``) the whole step; every other gradient
  from the backward that makes it (the executor zeroes gradients to ``None``, and autograd,
  FSDP and the layer-wise trainer allocate them in the backward) until the step's end;
* each micro-batch's activations from its forward until its backward, where they go layer by
  layer, last layer first (under a split backward, until its W pass);
* a layer's transient (its backward's temporaries, a checkpointed layer's recomputed
  activations, ZeRO-3's gathered parameters, an FSDP layer's whole gradients and their
  reduce-scatter input) during that layer's backward.

So the peak is reached inside a backward, at some layer: the first backward of the step (the
other layers' gradients not made yet, the most micro-batches in flight under GPipe) or a
later one (all gradients made).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from partita.formats.schedules import Action, build_schedule, splits_backward
from partita.simulator.result import MemoryBreakdown
from partita.simulator.workload import StageWork


def _held(work: StageWork) -> tuple[float, float, float]:
    """(parameters, optimizer states, DDP's gradient buckets): held for the whole step."""
    params, grads, optimizer = work.tied_copy_bytes
    return (
        sum(layer.param_bytes for layer in work.layers) + params,
        sum(layer.optimizer_bytes for layer in work.layers) + optimizer,
        sum(layer.grad_bytes for layer in work.layers if layer.grads_held) + grads,
    )


def late_gradients(work: StageWork) -> float:
    """The gradients the step's first backward allocates and the step keeps."""
    return sum(layer.grad_bytes for layer in work.layers if not layer.grads_held)


def static_bytes(work: StageWork) -> float:
    """What the device holds before the step's first backward: parameters, optimizer states
    and DDP's gradient buckets."""
    return sum(_held(work))


def _backward_peak(work: StageWork, *, in_flight: int, gradients_made: bool) -> MemoryBreakdown:
    """The highest point inside one backward that starts with ``in_flight`` micro-batches'
    activations held and, if ``gradients_made``, every gradient allocated."""
    parameters, optimizer_states, held = _held(work)
    late = late_gradients(work)
    others = (in_flight - 1) * work.activation_bytes  # the other micro-batches in flight
    best: MemoryBreakdown | None = None
    made = 0.0  # gradients of the layers from here to the last, made in this backward
    remaining = work.activation_bytes  # this micro-batch's, of the layers up to here
    for layer in reversed(work.layers):
        if not layer.grads_held:
            made += layer.grad_bytes
        here = MemoryBreakdown(
            parameters=parameters,
            gradients=held + (late if gradients_made else made),
            optimizer_states=optimizer_states,
            activations=others + remaining,
            transient=layer.transient_bytes,
        )
        if best is None or here.total > best.total:
            best = here
        remaining -= layer.activation_bytes
    assert best is not None, "a stage has at least one layer"
    return best


def backward_excess(work: StageWork, *, gradients_made: bool) -> float:
    """How far one backward rises above what the device holds as it starts (static bytes,
    the gradients if made, the micro-batches in flight)."""
    peak = _backward_peak(work, in_flight=1, gradients_made=gradients_made)
    before = static_bytes(work) + work.activation_bytes
    if gradients_made:
        before += late_gradients(work)
    return peak.total - before


def rank_static_bytes(works: Sequence[StageWork]) -> float:
    """What a rank holds before the step's first backward, over its chunks."""
    return sum(static_bytes(work) for work in works)


@dataclass(frozen=True)
class Point:
    """A moment of a rank's step that may hold its peak: after a forward (``F``), inside a
    backward (``B``: the chunk's backward excess on top), or as a W pass makes the gradients
    (``W``). ``live`` counts the micro-batches holding activations per chunk, ``made``
    whether each chunk's gradients exist (before a B, after a W), ``between`` the
    micro-batches past their B and before their W (holding the gradients B kept for W)."""

    kind: str
    chunk: int
    live: tuple[int, ...]
    made: tuple[bool, ...]
    between: tuple[int, ...]


def memory_points(actions: Sequence[Action], chunks: int, *, split: bool) -> tuple[Point, ...]:
    """The distinct moments of ``actions`` that may hold the rank's peak (a steady state
    repeats a few), replayed as the engine replays them."""
    live, made, between = [0] * chunks, [False] * chunks, [0] * chunks
    points: dict[Point, None] = {}

    def point(kind: str, c: int) -> None:
        points[Point(kind, c, tuple(live), tuple(made), tuple(between))] = None

    for action in actions:
        c = action.chunk
        if action.kind == "F":
            live[c] += 1
            point("F", c)
        elif action.kind == "B":
            point("B", c)
            if split:
                between[c] += 1
            else:
                made[c] = True
                live[c] -= 1
            point("F", c)
        else:
            made[c] = True
            point("W", c)
            live[c] -= 1
            between[c] -= 1
    return tuple(points)


@functools.lru_cache(maxsize=1024)
def schedule_points(
    name: str, ranks: int, micro_batches: int, chunks: int
) -> tuple[tuple[Point, ...], ...]:
    """:func:`memory_points` of every rank of a named schedule (the search prices thousands
    of plans over a few schedules)."""
    schedule = build_schedule(name, ranks, micro_batches, chunks)
    split = splits_backward(schedule)
    return tuple(memory_points(actions, chunks, split=split) for actions in schedule)


def peak_breakdown(
    works: Sequence[StageWork], actions: Sequence[Action], *, split: bool = False
) -> MemoryBreakdown:
    """A rank's peak over the step under its schedule ``actions``, by what holds it.

    ``works`` are its chunks' (one without an interleaved schedule). The actions are replayed
    as the engine replays them: a forward adds its chunk's activations; a backward rises by
    its excess (``backward_excess``) while it runs; the first backward of a chunk makes its
    gradients, and the backward frees the micro-batch's activations. Where the backward is
    ``split``, B keeps the activations, and W makes the gradients and frees them.
    """
    return points_peak(works, memory_points(actions, len(works), split=split), split=split)


def points_peak(
    works: Sequence[StageWork], points: Sequence[Point], *, split: bool
) -> MemoryBreakdown:
    """The highest of ``points`` (:func:`memory_points`) for a rank holding ``works``."""
    held = [_held(w) for w in works]
    parameters = sum(h[0] for h in held)
    optimizer_states = sum(h[1] for h in held)
    held_grads = sum(h[2] for h in held)
    late = [late_gradients(w) for w in works]
    activation = [w.activation_bytes for w in works]
    kept = [w.split_kept_bytes for w in works]
    backward = {  # one backward's own breakdown, by chunk and whether its gradients exist
        (c, made): _backward_peak(work, in_flight=1, gradients_made=made)
        for c, work in enumerate(works)
        for made in (False, True)
    }
    best: MemoryBreakdown | None = None
    for point in points:
        c = point.chunk
        live = sum(n * a for n, a in zip(point.live, activation, strict=True))
        live += sum(n * k for n, k in zip(point.between, kept, strict=True))
        made = sum(g for g, m in zip(late, point.made, strict=True) if m)
        rises = point.kind == "B" or (point.kind == "W" and works[c].whole_weight_pass)
        if not rises:
            here = MemoryBreakdown(parameters, held_grads + made, optimizer_states, live, 0.0)
        else:
            own = backward[(c, point.made[c] or split)]
            # ``own`` counts its chunk's held and (made or being made) gradients, and one
            # micro-batch's activations as its backward has them at the peak.
            others = made - (late[c] if point.made[c] else 0.0)
            here = MemoryBreakdown(
                parameters=parameters,
                gradients=held_grads
                - held[c][2]
                + own.gradients
                + others
                - (late[c] if split and not point.made[c] else 0.0),
                optimizer_states=optimizer_states,
                activations=live - activation[c] + own.activations,
                transient=own.transient,
            )
        if best is None or here.total > best.total:
            best = here
    assert best is not None, "every rank's schedule runs an action"
    return best

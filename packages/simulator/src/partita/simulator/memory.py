"""Peak memory of one device per stage, from the stage's work and the schedule.

What a device holds over a step:

* parameters and optimizer states, the whole step;
* gradients: DDP's buckets (``LayerWork.grads_held``) the whole step; every other gradient
  from the backward that makes it (the executor zeroes gradients to ``None``, and autograd,
  FSDP and the layer-wise trainer allocate them in the backward) until the step's end;
* each micro-batch's activations from its forward until its backward, where they go layer by
  layer, last layer first;
* a layer's transient (its backward's temporaries, a checkpointed layer's recomputed
  activations, ZeRO-3's gathered parameters, an FSDP layer's whole gradients and their
  reduce-scatter input) during that layer's backward.

So the peak is reached inside a backward, at some layer: the first backward of the step (the
other layers' gradients not made yet, the most micro-batches in flight under GPipe) or a
later one (all gradients made).
"""

from __future__ import annotations

from collections.abc import Sequence

from partita.formats.schedules import Action
from partita.simulator.result import MemoryBreakdown
from partita.simulator.workload import StageWork


def backward_in_flight(actions: Sequence[Action]) -> tuple[int, ...]:
    """Micro-batches in flight (forward ran, backward not finished) as each backward starts,
    in the stage's order; the backward's own micro-batch is counted."""
    live, counts = 0, []
    for action in actions:
        if action.kind == "F":
            live += 1
        else:
            counts.append(live)
            live -= 1
    return tuple(counts)


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


def peak_breakdown(work: StageWork, actions: Sequence[Action]) -> MemoryBreakdown:
    """The stage's peak over the step under its schedule ``actions``, by what holds it."""
    counts = backward_in_flight(actions)
    assert counts, "every stage's schedule runs a backward"
    peaks = [_backward_peak(work, in_flight=counts[0], gradients_made=False)]
    if len(counts) > 1:
        peaks.append(_backward_peak(work, in_flight=max(counts[1:]), gradients_made=True))
    return max(peaks, key=lambda p: p.total)

"""Peak memory of one device per stage, from the stage's work and the schedule."""

from __future__ import annotations

from partita.simulator.result import MemoryBreakdown
from partita.simulator.workload import StageWork


def static_bytes(work: StageWork) -> float:
    """Parameters, gradients and optimizer states held for the whole iteration."""
    held = peak_breakdown(work, in_flight=0)
    return held.parameters + held.gradients + held.optimizer_states


def peak_breakdown(work: StageWork, *, in_flight: int) -> MemoryBreakdown:
    """The peak: ``in_flight`` micro-batches' activations plus the largest transient buffer.

    The transient (a checkpointed layer's recomputed activations, ZeRO-3's gathered
    parameters) lives during a backward, when the micro-batch being processed is still
    counted among those in flight.
    """
    params, grads, optimizer = work.tied_copy_bytes
    return MemoryBreakdown(
        parameters=sum(layer.param_bytes for layer in work.layers) + params,
        gradients=sum(layer.grad_bytes for layer in work.layers) + grads,
        optimizer_states=sum(layer.optimizer_bytes for layer in work.layers) + optimizer,
        activations=in_flight * work.activation_bytes,
        transient=max((layer.transient_bytes for layer in work.layers), default=0.0),
    )

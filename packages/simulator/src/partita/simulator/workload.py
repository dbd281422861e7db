"""Plan + model description + cost model -> the work of each pipeline stage, as plain data.

Per layer: forward and backward compute on one device for its local micro-batch (backward
includes the recomputed forward when the layer is checkpointed); the blocking
tensor-parallel collectives that the profile did not already include; a redistribution when
the layout changes from the previous layer; the parameter gathers of ZeRO-2 (before each
forward) and ZeRO-3 (before each forward and backward); the data-parallel gradient
synchronisation, which the engine overlaps with backward; its share of the optimizer step;
and ZeRO-1's parameter gather after the step. Per stage: p2p sends per micro-batch, static
memory, the optimizer step and what every step ends with (the loss all-reduce and the
barrier the executor runs).

How the executor runs each data-parallel mode (``partita.executor``): DDP all-reduces
gradient buckets during backward; ZeRO-1 all-reduces them too, steps its shard of the
parameters and broadcasts it (an all-gather) after the step; ZeRO-2 and ZeRO-3 are FSDP
units that gather parameters before forward (ZeRO-3 again before backward) and
reduce-scatter gradients after every micro-batch's backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import TypeVar

from partita.formats import LayerDescription, LayerMemory, LayerStrategy, ModelDescription, Plan
from partita.formats.common import BYTES_PER_ELEMENT, DDP_BUCKET_BYTES, WHOLE_LAYER_CKPT_MODES
from partita.simulator import selective_op
from partita.simulator.cost import (
    CostModel,
    LayerTimes,
    ProfileOverflowError,
    TensorWorkKind,
    overflows,
)
from partita.simulator.placement import GroupPlacement, group_placement

T = TypeVar("T")

# Bytes per parameter read and written by one AdamW step (fp32 param, grad, two moments):
# the optimizer's cost from the memory bandwidth when the profile has no measured step.
OPTIMIZER_STEP_BYTES_PER_PARAM_BYTE = 4.0
# What every step of the executor ends with: the all-reduce of the loss and a barrier (one
# small all-reduce's time each, over all ranks). Each rank counts the labelled tokens from the
# whole batch it builds; a third meeting priced for that count since the executor stopped
# summing it was 0.4 ms a step on the 2-core host (the measured step end: 0.65 ms, median).
STEP_END_ALL_REDUCES = 2
SMALL_MESSAGE_BYTES = 8
MASTER_BYTES = 4  # the executor keeps fp32 parameters under every precision
ZERO_FACTORS = {  # share of (parameters, gradients, optimizer states) each device keeps
    "ddp": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
}


@dataclass(frozen=True)
class Strategy:
    tp: int
    sp: str
    dp: str
    ckpt: str  # "none", "attention" (the core recomputed) or "full"

    @property
    def splits_sequence(self) -> bool:
        """Sequence parallel over more than one rank: each holds a part of the sequence."""
        return self.sp != "none" and self.tp > 1


@dataclass(frozen=True)
class LayerWork:
    name: str
    forward_s: float  # compute and blocking communication, one micro-batch
    backward_s: float
    grad_sync: tuple[tuple[str, float], ...]  # (collective, seconds), overlappable
    grad_sync_every_micro_batch: bool  # FSDP (ZeRO-2/3) reduce-scatters after every backward
    activation_bytes: float  # kept per micro-batch in flight, one device
    transient_bytes: float  # recomputation or gathered ZeRO-3 parameters during backward
    param_bytes: float  # one device, after sharding
    grad_bytes: float
    optimizer_bytes: float
    optimizer_s: float = 0.0  # this layer's part of the optimizer step (per tensor and byte)
    # Gradients in the executor's DDP/ZeRO-1 buckets (``grad_sync.GradientBuckets``),
    # allocated once and kept between steps; others are made by each step's backward
    # (``partita.simulator.memory``).
    grads_held: bool = False
    # FSDP all-gathers a device that runs ahead prefetches (CUDA: the host issues the next
    # unit's gather while the device computes this one), on their own stream: not in
    # forward_s/backward_s until the stage adds what they leave exposed (``_prefetched``).
    forward_gather_s: float = 0.0
    backward_gather_s: float = 0.0
    # Of backward_s, the weight gradients: what a split backward (zero-bubble schedules)
    # runs in its W pass; the rest, with any recomputation, is its B pass.
    weight_backward_s: float = 0.0
    # The gradients of the weight products' outputs, one micro-batch, one device: what a
    # split backward's B keeps for W.
    branch_gradient_bytes: float = 0.0
    # Of grad_bytes, a tied vocabulary table's whole gradient, which FSDP leaves to the
    # executor (``_fsdp_and_table``).
    table_grad_bytes: float = 0.0


@dataclass(frozen=True)
class StageWork:
    """One virtual stage's work: a pipeline rank's, or one of its chunks' under an
    interleaved schedule (virtual stage ``stage`` is chunk ``stage // degree`` of rank
    ``stage % degree``)."""

    stage: int
    devices: int
    layers: tuple[LayerWork, ...]
    send_forward_s: float  # activations to the next stage, one micro-batch
    send_backward_s: float  # gradients to the previous stage, one micro-batch
    optimizer_step_s: float
    after_step_s: float = 0.0  # the step's end: the loss all-reduce and the barrier
    # The DDP reducer's fixed part once a step, after the last backward (with the gradient
    # sync, as the executor finishes its buckets), and ZeRO-1's gather of the updated
    # parameters (with the optimizer step, as the executor runs it).
    reducer_s: float = 0.0
    zero1_gather_s: float = 0.0
    # The all-reduce of a vocabulary table's gradient between the stages holding a copy
    # (before the optimizer; every holder waits for the others), and the copy this stage
    # keeps beyond what its layers' profiles count: (parameter, gradient, optimizer) bytes.
    tied_sync_s: float = 0.0
    tied_copy_bytes: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Under a split backward, whether W runs this chunk's whole backward again (restricted to
    # the weights) instead of the weight gradients alone: the executor does for a chunk with a
    # fully checkpointed or an FSDP (ZeRO-2/3) layer (``partita.executor.split_backward``).
    whole_weight_pass: bool = False
    # The activations received from the previous virtual stage, one micro-batch: held until
    # this stage's backward of it.
    received_bytes: float = 0.0

    def weight_pass_s(self, layer: LayerWork) -> float:
        """What a split backward's W runs for ``layer``."""
        return layer.backward_s if self.whole_weight_pass else layer.weight_backward_s

    @property
    def split_kept_bytes(self) -> float:
        """What one micro-batch holds between its B and its W beyond its activations: the
        gradients B keeps where each weight's branch leaves the chain (none where W runs the
        whole backward again)."""
        if self.whole_weight_pass:
            return 0.0
        return sum(layer.branch_gradient_bytes for layer in self.layers)

    @property
    def tail_s(self) -> float:
        """What follows the last gradient sync: the tied table's sum, the DDP reducer's fixed
        part, the optimizer step, ZeRO-1's gather and the step's end."""
        return (
            self.tied_sync_s
            + self.reducer_s
            + self.optimizer_step_s
            + self.zero1_gather_s
            + self.after_step_s
        )

    @property
    def forward_s(self) -> float:
        return sum(layer.forward_s for layer in self.layers)

    @property
    def backward_s(self) -> float:
        return sum(layer.backward_s for layer in self.layers)

    @property
    def activation_bytes(self) -> float:
        """Kept per micro-batch in flight: the layers' activations and the input received
        from the previous virtual stage (no layer here made it, so no profile counts it)."""
        return sum(layer.activation_bytes for layer in self.layers) + self.received_bytes


def layer_signature(layer: LayerDescription) -> tuple[object, ...]:
    """What a layer's work depends on: everything but its name."""
    return (
        layer.layer_type,
        layer.kind,
        layer.seq_len,
        layer.hidden_size,
        layer.num_heads,
        layer.num_kv_heads,
        layer.ffn_size,
        layer.output_bytes_per_sample,
    )


def stage_layers(
    plan: Plan, model: ModelDescription
) -> list[list[tuple[LayerDescription, Strategy]]]:
    """Each virtual stage's layers with their strategies; embedding first, head last."""
    vocab = vocab_strategy(plan)
    blocks = iter(zip(model.blocks, plan.layers, strict=True))
    stages: list[list[tuple[LayerDescription, Strategy]]] = []
    for count in plan.pipeline.stage_num_layers:
        stages.append(
            [(layer, _block_strategy(layer, s, plan)) for layer, s in _take(blocks, count)]
        )
    for layer in model.layers:
        if layer.kind == "embedding":
            stages[0].insert(0, (layer, vocab))
        elif layer.kind == "head":
            stages[-1].append((layer, vocab))
    return stages


def vocab_strategy(plan: Plan) -> Strategy:
    """The embedding's and the head's: vocab-parallel over ``vocab.tp``, their activations
    split along the sequence with ``vocab.sp`` (Megatron-SP: the embedding reduce-scatters
    its output, the head gathers its input)."""
    vocab = plan.vocab
    sp = "megatron" if vocab.sp and vocab.tp > 1 else "none"
    return Strategy(tp=vocab.tp, sp=sp, dp=vocab.dp, ckpt="none")


def _block_strategy(layer: LayerDescription, s: LayerStrategy, plan: Plan) -> Strategy:
    if layer.vocab_parallel:  # shares the vocabulary table: split as the embedding is
        return Strategy(plan.vocab.tp, "none", s.dp, s.ckpt)
    return Strategy(s.tp, s.sp, s.dp, s.ckpt)


def _take(iterator: Iterator[T], count: int) -> list[T]:
    return [next(iterator) for _ in range(count)]


@dataclass(frozen=True)
class WorkloadBuilder:
    plan: Plan
    model: ModelDescription
    cost: CostModel
    # Shared between builders of plans with the same shape (the search prices thousands):
    # a layer's work depends on its description, strategy and previous layout, and on the
    # plan only through the shape in ``_shape``.
    cache: dict[tuple[object, ...], LayerWork] | None = field(default=None, compare=False)

    def _shape(self) -> tuple[object, ...]:
        plan = self.plan
        return (
            plan.world_size,
            plan.pipeline.degree,
            plan.micro_batch_size,
            plan.mesh_axis_order,
            plan.precision,
        )

    @property
    def element_bytes(self) -> int:
        return BYTES_PER_ELEMENT[self.plan.precision]

    def build(self) -> list[StageWork]:
        stages = stage_layers(self.plan, self.model)
        works = [
            self._stage(index, layers, sender=stages[index - 1][-1] if index else None)
            for index, layers in enumerate(stages)
        ]
        return self._with_tied_table(works, stages)

    def _with_tied_table(
        self, works: list[StageWork], stages: list[list[tuple[LayerDescription, Strategy]]]
    ) -> list[StageWork]:
        """A vocabulary table shared by layers on several stages (GPT's embedding and head
        in a pipeline): each holder stage keeps a copy and all-reduces its gradient with the
        others after the backward, as the executor does."""
        shared = self.model.shared_vocabulary
        holders = [
            i for i, layers in enumerate(stages) if any(layer.name in shared for layer, _ in layers)
        ]
        if len(holders) < 2:
            return works
        first = next(layer for layer in self.model.layers if layer.name == shared[0])
        vocab_tp = self.plan.vocab.tp
        memory = self.cost.layer_memory(first, tp=vocab_tp, sp="none")
        table_share = min(1.0, self.model.vocab_size * first.hidden_size / max(first.params, 1))
        copy = (
            memory.param_bytes * table_share,
            memory.grad_bytes * table_share,
            memory.optimizer_bytes * table_share,
        )
        along_pp = self._placement("pp", vocab_tp)
        group = replace(along_pp, size=len(holders))
        seconds = self._meeting("all_reduce", memory.grad_bytes * table_share, group)
        out = list(works)
        for i in holders:
            owns_first = any(layer.name == shared[0] for layer, _ in stages[i])
            out[i] = replace(
                out[i],
                tied_sync_s=seconds,
                tied_copy_bytes=(0.0, 0.0, 0.0) if owns_first else copy,
            )
        return out

    def _placement(self, axis: str, tp: int) -> GroupPlacement:
        hardware = self.cost.hardware
        return group_placement(
            self.plan,
            axis=axis,  # type: ignore[arg-type]
            tp=tp,
            devices_per_node=hardware.devices_per_node,
            num_nodes=hardware.num_nodes,
        )

    def _collective(self, op: str, nbytes: float, group: GroupPlacement) -> float:
        return self.cost.collective(
            op, nbytes, group_size=group.size, placement=group.placement, scope=group.scope
        )

    def _meeting(self, op: str, nbytes: float, group: GroupPlacement) -> float:
        """A blocking collective, where the ranks meet: its time and, where profiled, what a
        meeting costs in training beyond it (``HardwareProfile.sync``: the ranks arrive apart
        and it starts cold)."""
        sync = self.cost.hardware.sync
        seconds = self._collective(op, nbytes, group)
        return seconds + sync.latency_s if sync is not None and group.size > 1 else seconds

    def _compute_scale(self) -> float:
        """Ranks that meet wait for the slowest: compute between meetings takes longer by the
        profile's ``sync.compute_fraction`` (every multi-rank step meets, at least at its end)."""
        sync = self.cost.hardware.sync
        return 1.0 + sync.compute_fraction if sync and self.plan.world_size > 1 else 1.0

    def _stage(
        self,
        index: int,
        layers: list[tuple[LayerDescription, Strategy]],
        *,
        sender: tuple[LayerDescription, Strategy] | None,
    ) -> StageWork:
        works = []
        previous: Strategy | None = None
        for layer, strategy in layers:
            works.append(self.layer_work(layer, strategy, previous))
            previous = strategy
        strategies = [strategy for _, strategy in layers]
        works = self._bucketed(self._prefetched(works), strategies)
        works = self._table_gradient_from_first_backward(works)
        last_layer, last_strategy = layers[-1]
        first_layer, first_strategy = layers[0]
        pipeline = self.plan.pipeline
        last_stage = pipeline.num_virtual_stages - 1
        send_forward = self._p2p(last_layer, last_strategy) if index < last_stage else 0.0
        if send_forward:  # once a step the executor sends the sizes first: spread over it
            handshake = self._p2p_message(SMALL_MESSAGE_BYTES, last_strategy)
            send_forward += handshake / self.plan.num_micro_batches
        send_backward = self._p2p(first_layer, first_strategy) if index > 0 else 0.0
        return StageWork(
            stage=index,
            devices=self.plan.devices_per_stage,
            layers=tuple(works),
            send_forward_s=send_forward,
            send_backward_s=send_backward,
            optimizer_step_s=self._optimizer_step(works),
            zero1_gather_s=self._zero1_gathers(works, strategies),
            reducer_s=self._ddp_reducer_latency(strategies),
            # once a step on each rank: counted with its first chunk
            after_step_s=self._step_end() if index < pipeline.degree else 0.0,
            whole_weight_pass=any(self._needs_whole_weight_pass(s) for s in strategies),
            received_bytes=self._boundary_bytes(*sender) if sender else 0.0,
        )

    def _table_gradient_from_first_backward(self, works: list[LayerWork]) -> list[LayerWork]:
        """A tied table's whole gradient (FSDP leaves it to the executor, and it is counted
        with the table's first holder) is made by the first backward that reaches the table:
        where a stage holds the head as well as the embedding, the head's, at the start of
        the backward, not the embedding's at its end. It moves to the stage's last holder."""
        holders = [i for i, w in enumerate(works) if w.name in self.model.shared_vocabulary]
        owner = next((i for i in holders if works[i].table_grad_bytes), None)
        if owner is None or holders[-1] == owner:
            return works
        last, moved = holders[-1], works[owner].table_grad_bytes
        out = list(works)
        out[owner] = replace(
            works[owner], grad_bytes=works[owner].grad_bytes - moved, table_grad_bytes=0.0
        )
        out[last] = replace(
            works[last], grad_bytes=works[last].grad_bytes + moved, table_grad_bytes=moved
        )
        return out

    def _needs_whole_weight_pass(self, strategy: Strategy) -> bool:
        fsdp = strategy.dp in ("zero2", "zero3") and self._placement("dp", strategy.tp).size > 1
        return strategy.ckpt in WHOLE_LAYER_CKPT_MODES or fsdp

    def _fsdp_transient(
        self, strategy: Strategy, memory: LayerMemory, gathered: float, dp: int
    ) -> float:
        """What an FSDP layer adds during its backward: its unsharded gradients (in the
        dtype it gathers in) and the fp32 reduce-scatter input they are copied into, both
        whole; for ZeRO-3 also the parameters gathered again, a whole copy beside the shard
        (FSDP2 gathers into tensors of their own). ZeRO-2's stay gathered from the forward
        and count with the parameters (``_held_parameters``)."""
        if strategy.dp not in ("zero2", "zero3") or dp == 1:
            return 0.0
        gradients = gathered + memory.param_bytes
        return gradients + (gathered if strategy.dp == "zero3" else 0.0)

    def _fsdp_and_table(
        self, layer: LayerDescription, strategy: Strategy, memory: LayerMemory, dp: int
    ) -> tuple[LayerMemory, tuple[float, float, float]]:
        """(what FSDP shards of the layer, the (parameter, gradient, optimizer) bytes it
        leaves whole). FSDP ignores a vocabulary table tied across layers (the executor sums
        its gradient by hand, ``parallelize``): under ZeRO-2/3 every rank keeps the whole
        table, its gradient and its optimizer states, in the layer that counts the table (the
        first holder); nothing is left whole otherwise."""
        shared = self.model.shared_vocabulary
        if strategy.dp not in ("zero2", "zero3") or dp == 1 or not shared:
            return memory, (0.0, 0.0, 0.0)
        if layer.name != shared[0]:
            return memory, (0.0, 0.0, 0.0)
        share = min(1.0, self.model.vocab_size * layer.hidden_size / max(layer.params, 1))
        table = (
            memory.param_bytes * share,
            memory.grad_bytes * share,
            memory.optimizer_bytes * share,
        )
        rest = replace(
            memory,
            param_bytes=round(memory.param_bytes - table[0]),
            grad_bytes=round(memory.grad_bytes - table[1]),
            optimizer_bytes=round(memory.optimizer_bytes - table[2]),
            param_tensors=max(0, memory.param_tensors - 1),
        )
        return rest, table

    def _held_parameters(
        self, strategy: Strategy, memory: LayerMemory, gathered: float, dp: int
    ) -> float:
        """Parameter bytes a device holds over the step: whole, or its fp32 shard; ZeRO-2's
        FSDP also keeps the whole parameters it gathered (in the compute precision) from the
        forward to the backward, beside the shard."""
        if strategy.dp == "zero2" and dp > 1:
            return memory.param_bytes / dp + gathered
        sharded = ZERO_FACTORS[strategy.dp][0]
        return memory.param_bytes / (dp if sharded else 1)

    def _prefetches(self) -> bool:
        """Whether FSDP's all-gathers run ahead of the compute: on CUDA the host queues the
        next unit's gather on FSDP's all-gather stream while the device still computes, so
        it overlaps; a CPU rank waits for each gather (gloo) before computing."""
        return self.cost.hardware.device.kind == "cuda"

    def _prefetched(self, works: list[LayerWork]) -> list[LayerWork]:
        """Each layer's forward with what of its prefetched gather the previous layer's
        forward did not hide (the first layer's, whole), and the same in backward order;
        the compute a gather overlaps runs slower by the overlap factor."""
        if not any(w.forward_gather_s or w.backward_gather_s for w in works):
            return works
        slowdown = self.cost.hardware.overlap.compute - 1.0

        def exposed(gather: float, hiding: float) -> float:
            return max(0.0, gather - hiding) + min(gather, hiding) * slowdown

        out = list(works)
        for i, work in enumerate(works):
            before = works[i - 1].forward_s if i > 0 else 0.0
            after = works[i + 1].backward_s if i + 1 < len(works) else 0.0
            out[i] = replace(
                work,
                forward_s=work.forward_s + exposed(work.forward_gather_s, before),
                backward_s=work.backward_s + exposed(work.backward_gather_s, after),
            )
        return out

    def _bucketed(self, works: list[LayerWork], strategies: list[Strategy]) -> list[LayerWork]:
        """DDP and ZeRO-1 all-reduce gradients in buckets (of layers sharing a data-parallel
        group, from the last layer back, up to ``DDP_BUCKET_BYTES``), as DDP and the
        executor's layer-wise trainer do: one collective a bucket, issued when the backward of
        the bucket's last layer (in backward order) ends, carried by that layer."""
        out = list(works)
        open_buckets: dict[int, tuple[list[int], float]] = {}  # tp -> (layer indices, bytes)

        def close(tp: int) -> None:
            members, nbytes = open_buckets.pop(tp)
            group = self._placement("dp", tp)
            seconds = self._collective("all_reduce", nbytes, group)
            for index in members:
                out[index] = replace(out[index], grad_sync=())
            out[members[-1]] = replace(out[members[-1]], grad_sync=(("all_reduce", seconds),))

        for index in reversed(range(len(works))):
            work, strategy = works[index], strategies[index]
            if strategy.dp not in ("ddp", "zero1") or not work.grad_sync:
                continue
            members, nbytes = open_buckets.get(strategy.tp, ([], 0.0))
            if members and nbytes + work.grad_bytes > DDP_BUCKET_BYTES:
                close(strategy.tp)
                members, nbytes = [], 0.0
            open_buckets[strategy.tp] = ([*members, index], nbytes + work.grad_bytes)
        for tp in list(open_buckets):
            close(tp)
        return out

    def _zero1_gathers(self, works: list[LayerWork], strategies: list[Strategy]) -> float:
        """After the optimizer step each ZeRO-1 rank broadcasts its shard of the parameters
        as one bucket: an all-gather of the ZeRO-1 layers' parameters per data-parallel group."""
        by_tp: dict[int, float] = {}
        for work, strategy in zip(works, strategies, strict=True):
            if strategy.dp == "zero1":
                by_tp[strategy.tp] = by_tp.get(strategy.tp, 0.0) + work.param_bytes
        return sum(
            self._meeting("all_gather", nbytes, self._placement("dp", tp))
            for tp, nbytes in by_tp.items()
        )

    def _local_batch(self, strategy: Strategy) -> float:
        return self.plan.micro_batch_size / self.plan.dp_degree(strategy.tp)

    def _hidden_bytes(self, layer: LayerDescription, strategy: Strategy) -> float:
        return layer.seq_len * layer.hidden_size * self.element_bytes * self._local_batch(strategy)

    def _p2p(self, layer: LayerDescription, strategy: Strategy) -> float:
        return self._p2p_message(self._boundary_bytes(layer, strategy), strategy)

    def _boundary_bytes(self, layer: LayerDescription, strategy: Strategy) -> float:
        """What ``layer``, the last of a virtual stage, sends the next one per micro-batch."""
        scale = self.element_bytes / self.model.activation_bytes_per_element
        nbytes = layer.output_bytes_per_sample * scale * self._local_batch(strategy)
        if overflows(nbytes):
            raise ProfileOverflowError(
                f"model description layer {layer.name!r}: output_bytes_per_sample "
                f"{layer.output_bytes_per_sample:.6g} makes the bytes sent to the next pipeline "
                "stage overflow (2^1023 or more)"
            )
        if strategy.sp != "none":
            nbytes /= strategy.tp  # the sequence stays split across the group
        return nbytes

    def _p2p_message(self, nbytes: float, strategy: Strategy) -> float:
        pp = self._placement("pp", strategy.tp)
        return self._meeting("p2p", nbytes, GroupPlacement(2, pp.placement, pp.scope))

    def layer_work(
        self, layer: LayerDescription, strategy: Strategy, previous: Strategy | None
    ) -> LayerWork:
        work = self.layer_cost(layer, strategy, previous)
        return work if work.name == layer.name else replace(work, name=layer.name)

    def layer_cost(
        self, layer: LayerDescription, strategy: Strategy, previous: Strategy | None
    ) -> LayerWork:
        """Like :meth:`layer_work`, but a cached result may carry an identical layer's name."""
        if self.cache is None:
            return self._layer_work(layer, strategy, previous)
        layout = None if previous is None else (previous.tp, previous.sp, previous.tp)
        key = (self._shape(), layer_signature(layer), strategy, layout)
        work = self.cache.get(key)
        if work is None:
            work = self.cache[key] = self._layer_work(layer, strategy, previous)
        return work

    def _layer_work(
        self, layer: LayerDescription, strategy: Strategy, previous: Strategy | None
    ) -> LayerWork:
        batch = self._local_batch(strategy)
        # An embedding or head is measured (and priced from a spec sheet) without sequence
        # parallelism: under vocab SP only its communication and layout change.
        measured_sp = strategy.sp if layer.kind == "block" else "none"
        times = self.cost.layer_times(layer, tp=strategy.tp, sp=measured_sp, micro_batch=batch)
        times = _scaled(times, self._compute_scale())
        tp_comm = 0.0 if times.includes_tp_comm else self._tp_comm(layer, strategy)
        into_forward, into_backward = self._redistribution(layer, strategy, previous)
        whole = self.cost.layer_memory(layer, tp=strategy.tp, sp=measured_sp)
        dp_group = self._placement("dp", strategy.tp)
        memory, table = self._fsdp_and_table(layer, strategy, whole, dp_group.size)
        # FSDP gathers in the compute precision (``data_parallel.shard_layer``): a bf16 copy
        # of the fp32 master shards; in fp32 where the layer also holds a tied table.
        holds_table = layer.name in self.model.shared_vocabulary
        ratio = 1.0 if holds_table else min(1.0, self.element_bytes / MASTER_BYTES)
        gathered_bytes = memory.param_bytes * ratio
        gather = self._meeting("all_gather", gathered_bytes, dp_group)
        forward = times.forward_s + tp_comm + into_forward
        backward = times.backward_s + tp_comm + into_backward
        # Weight gradients: what a split backward leaves to its W pass (no recomputation, no
        # tensor-parallel communication: those serve the input gradients).
        weight_backward = self._weight_backward(layer, times)
        full = strategy.ckpt == "full"
        checkpointed = _both(times.checkpoint_forward_s, times.checkpoint_backward_s)
        attention_checkpointed = _both(
            times.attention_checkpoint_forward_s, times.attention_checkpoint_backward_s
        )
        if full and checkpointed is not None:  # measured so
            forward = checkpointed[0] + tp_comm + into_forward
            backward = checkpointed[1] + 2 * tp_comm + into_backward
        elif full:  # the backward recomputes the forward
            backward += times.forward_s + tp_comm
        elif strategy.ckpt == "attention" and attention_checkpointed is not None:  # as run
            forward = attention_checkpointed[0] + tp_comm + into_forward
            backward = attention_checkpointed[1] + tp_comm + into_backward
        elif strategy.ckpt == "attention":  # ... or only the attention core's
            backward += self._attention_forward(layer, times)
        elif strategy.ckpt == "selective-op":  # ... or every other matmul and the rest
            if times.selective_forward_s is not None:  # its policy sees every op
                forward = times.selective_forward_s + tp_comm + into_forward
            backward += self._selective_recompute(layer, times) + tp_comm
        dp = dp_group.size
        forward_gather = backward_gather = 0.0
        if strategy.dp in ("zero2", "zero3") and dp > 1:  # FSDP units
            # Gathered before the unit's forward: blocking, or prefetched on its own stream
            # where the device runs ahead (``_prefetched`` adds what stays exposed).
            prefetched = gather if self._prefetches() else 0.0
            unit = gather - prefetched + self._fsdp("fsdp_gather", memory)
            forward, forward_gather = forward + unit, prefetched
            if strategy.dp == "zero3":  # resharded after forward: gathered again for backward
                backward, backward_gather = backward + unit, prefetched
            # FSDP's copies around the reduce-scatter run on the compute thread; the
            # collective itself overlaps (``grad_sync``).
            backward += self._fsdp("fsdp_reduce_scatter", memory)
            weight_backward += self._fsdp("fsdp_reduce_scatter", memory)
        if self._under_ddp(strategy, dp):  # its reducer's hooks and copies, this layer's part
            reducer = self._tensor_work_share(
                "ddp_reducer", tensors=memory.param_tensors, nbytes=memory.param_bytes
            )
            backward += reducer or 0.0
            weight_backward += reducer or 0.0
        _, shard_grads, shard_optimizer = ZERO_FACTORS[strategy.dp]
        full_activations = memory.activation_bytes_per_sample * batch
        if full:
            kept, recomputed = (
                memory.checkpoint_activation_bytes_per_sample * batch,
                full_activations,
            )
        elif strategy.ckpt == "selective-op":
            kept = min(full_activations, self._selective_saved(layer, strategy, memory) * batch)
            recomputed = full_activations - kept
        elif strategy.ckpt == "attention":
            recomputed = min(
                full_activations, self._attention_saved(layer, strategy, memory) * batch
            )
            kept = full_activations - recomputed
        else:
            kept, recomputed = full_activations, 0.0
        table_params, table_grads, table_optimizer = table
        whole_table = replace(whole, param_bytes=round(table_params), param_tensors=1)
        table_sync = (
            (("all_reduce", self._collective("all_reduce", table_grads, dp_group)),)
            if table_grads
            else ()
        )
        work = LayerWork(
            name=layer.name,
            forward_s=forward,
            backward_s=backward,
            grad_sync=self._grad_sync(strategy, memory.grad_bytes, dp_group) + table_sync,
            grad_sync_every_micro_batch=strategy.dp in ("zero2", "zero3"),
            activation_bytes=kept,
            transient_bytes=recomputed
            + memory.backward_peak_bytes_per_sample * batch
            + self._fsdp_transient(strategy, memory, gathered_bytes, dp),
            param_bytes=self._held_parameters(strategy, memory, gathered_bytes, dp) + table_params,
            grad_bytes=memory.grad_bytes / (dp if shard_grads else 1) + table_grads,
            optimizer_bytes=memory.optimizer_bytes / (dp if shard_optimizer else 1)
            + table_optimizer,
            optimizer_s=self._layer_optimizer_step(memory, strategy.dp, dp)
            + (self._layer_optimizer_step(whole_table, "ddp", dp) if table_params else 0.0),
            grads_held=self._under_ddp(strategy, dp),
            forward_gather_s=forward_gather,
            backward_gather_s=backward_gather,
            weight_backward_s=min(weight_backward, backward),
            branch_gradient_bytes=self._branch_gradients(layer) * batch,
            table_grad_bytes=table_grads,
        )
        return self._finite(work, memory)

    def _branch_gradients(self, layer: LayerDescription) -> float:
        """Bytes per sample of the gradients arriving at the layer's weight products: one
        per output element of each, in the compute precision. From the FLOPs: a product of
        a ``[tokens, k]`` input by a ``[k, n]`` weight costs ``2 tokens k n`` and outputs
        ``tokens n``; dividing the weights' FLOPs by ``2 hidden`` counts every product as if
        ``k`` were the hidden size, which over-counts the ones that narrow the FFN back (never
        under: this is memory), and is not split by tensor parallelism for the same reason."""
        weights = max(0.0, layer.forward_flops_per_sample - layer.attention_flops_per_sample)
        return weights / (2 * layer.hidden_size) * self.element_bytes

    def _weight_backward(self, layer: LayerDescription, times: LayerTimes) -> float:
        """The weight-gradient part of the layer's backward compute: measured, or its share
        of the backward's FLOPs (each weight's gradient costs its forward matmul again; the
        attention core has no weights)."""
        if times.weight_backward_s is not None:
            return times.weight_backward_s
        if layer.backward_flops_per_sample <= 0:
            return 0.0
        weights = max(0.0, layer.forward_flops_per_sample - layer.attention_flops_per_sample)
        return times.backward_s * min(1.0, weights / layer.backward_flops_per_sample)

    def _attention_forward(self, layer: LayerDescription, times: LayerTimes) -> float:
        """The attention core's forward, run again under ``ckpt: attention``: measured, or its
        share of the layer's forward FLOPs."""
        if times.attention_forward_s is not None:
            return times.attention_forward_s
        if layer.forward_flops_per_sample <= 0:
            return 0.0
        core = layer.attention_kernel_flops_per_sample or layer.attention_flops_per_sample
        return times.forward_s * min(1.0, core / layer.forward_flops_per_sample)

    def _selective_recompute(self, layer: LayerDescription, times: LayerTimes) -> float:
        """The forward work ``ckpt: selective-op`` runs again: measured (or priced by the
        spec-sheet compute model), else the forward's time in the share of its FLOPs the
        recomputed matmuls make up (profiles before version 5: the elementwise work it also
        reruns is not known apart, so this is a lower bound)."""
        if times.selective_recompute_s is not None:
            return times.selective_recompute_s
        return times.forward_s * selective_op.recomputed_flops_share(layer)

    def _selective_saved(
        self, layer: LayerDescription, strategy: Strategy, memory: LayerMemory
    ) -> float:
        """Bytes per sample a layer keeps under ``ckpt: selective-op``: measured, or its
        input, kept matmul outputs and attention outputs by shape (``selective_op``); what
        ``none`` keeps where the layer's matmuls are not known."""
        if memory.selective_saved_bytes_per_sample is not None:
            return memory.selective_saved_bytes_per_sample
        elements = selective_op.saved_elements_per_sample(
            layer,
            tp=strategy.tp,
            sp=strategy.sp,  # type: ignore[arg-type]
        )
        if elements is None:
            return memory.activation_bytes_per_sample
        return elements * self.element_bytes

    def _attention_saved(
        self, layer: LayerDescription, strategy: Strategy, memory: LayerMemory
    ) -> float:
        """Bytes per sample the attention core keeps for its backward beyond its inputs (what
        ``ckpt: attention`` frees): measured, or from the kernel: an eager one keeps the
        scores and their softmax (one element per query-key pair and head), a fused one its
        fp32 softmax statistics (one per query and head); under Ulysses also the core's
        output, which the exchange back to sequence shards does not keep."""
        if memory.attention_saved_bytes_per_sample is not None:
            return memory.attention_saved_bytes_per_sample
        if not layer.num_heads or not layer.attention_flops_per_sample:
            return 0.0
        head_dim = layer.hidden_size / layer.num_heads
        # Every pair costs 2 head_dim multiply-adds twice (scores, mixing): 4 head_dim FLOPs.
        pairs = layer.attention_flops_per_sample / (4 * head_dim) / strategy.tp
        queries = layer.num_heads * layer.seq_len / strategy.tp  # (query, head) pairs
        output = queries * head_dim * self.element_bytes if strategy.sp == "ulysses" else 0.0
        if self.cost.model_profile.attention == "eager":
            return 2 * pairs * self.element_bytes + output
        return queries * 4 + output

    def _finite(self, work: LayerWork, memory: LayerMemory) -> LayerWork:
        """``work``, whose every term the cost model checked, unless their sums overflow:
        a stage adds them up, and infinities there would become NaN further on."""
        seconds = work.forward_s + work.backward_s + work.optimizer_s
        if overflows(seconds + sum(t for _, t in work.grad_sync)):
            raise self.cost.time_overflow(f"predicted time of layer {work.name!r}")
        if overflows(work.activation_bytes + work.transient_bytes):
            raise self.cost.memory_overflow(memory, f"predicted memory of layer {work.name!r}")
        return work

    def _tp_comm(self, layer: LayerDescription, strategy: Strategy) -> float:
        if strategy.tp == 1:
            return 0.0
        group = self._placement("tp", strategy.tp)
        hidden = self._hidden_bytes(layer, strategy)
        if layer.kind != "block":  # vocab-parallel embedding or head: one all-reduce, or
            # under vocab SP a reduce-scatter (embedding) or an all-gather (head) instead
            op = "all_gather" if strategy.sp == "megatron" else "all_reduce"
            return self._meeting(op, hidden, group)
        attentions, ffns = _sublayers(layer)
        if strategy.sp == "ulysses":  # q, k, v in and the output back, per attention
            return 4 * attentions * self._meeting("all_to_all", hidden / strategy.tp, group)
        count = attentions + ffns
        if strategy.sp == "megatron":
            gather = self._meeting("all_gather", hidden, group)
            scatter = self._meeting("reduce_scatter", hidden, group)
            return count * (gather + scatter)
        return count * self._meeting("all_reduce", hidden, group)

    def _redistribution(
        self, layer: LayerDescription, strategy: Strategy, previous: Strategy | None
    ) -> tuple[float, float]:
        """(forward, backward) seconds of moving the activations from the previous layer's
        layout to this one's, as ``partita.executor.layout`` does: the previous layer's split
        sequence is gathered going forward, a batch slice that grows is gathered going forward
        and one that shrinks going backward, and this layer's split sequence is gathered
        going backward. Splits and slices taken from what a rank holds cost nothing."""
        if previous is None or (previous.tp, previous.sp, previous.tp) == (
            strategy.tp,
            strategy.sp,
            strategy.tp,
        ):
            return 0.0, 0.0
        group = self._placement("tp", max(previous.tp, strategy.tp))
        gather = self._meeting("all_gather", self._hidden_bytes(layer, strategy), group)
        forward = previous.splits_sequence + (previous.tp < strategy.tp)
        backward = (previous.tp > strategy.tp) + strategy.splits_sequence
        return forward * gather, backward * gather

    def _grad_sync(
        self, strategy: Strategy, grad_bytes: float, group: GroupPlacement
    ) -> tuple[tuple[str, float], ...]:
        if group.size == 1:
            return ()
        if strategy.dp in ("ddp", "zero1"):
            return (("all_reduce", self._collective("all_reduce", grad_bytes, group)),)
        return (("reduce_scatter", self._collective("reduce_scatter", grad_bytes, group)),)

    def _fsdp(self, kind: TensorWorkKind, memory: LayerMemory) -> float:
        """FSDP's own work on one unit (this layer) beyond its collective, where profiled."""
        seconds = self.cost.tensor_work(
            kind, tensors=memory.param_tensors, nbytes=memory.param_bytes
        )
        return seconds or 0.0

    def _under_ddp(self, strategy: Strategy, dp: int) -> bool:
        """The executor sums DDP and ZeRO-1 gradients over more than one rank in its buckets
        (hooks, a kept flat buffer per bucket), overlapping the backward."""
        return strategy.dp in ("ddp", "zero1") and dp > 1

    def _tensor_work_share(
        self, kind: TensorWorkKind, *, tensors: float, nbytes: float
    ) -> float | None:
        """A layer's part (per tensor and byte, not the latency, which is paid once a step)
        of once-a-step work; None where the profile does not have it."""
        seconds = self.cost.tensor_work(kind, tensors=tensors, nbytes=nbytes)
        if seconds is None:
            return None
        latency: float = getattr(self.cost.hardware, kind).latency_s
        return seconds - latency

    def _ddp_reducer_latency(self, strategies: list[Strategy]) -> float:
        """The reducer's fixed part, once a step (when the executor finishes its buckets)."""
        work = self.cost.hardware.ddp_reducer
        if work is None or not any(
            self._under_ddp(s, self._placement("dp", s.tp).size) for s in strategies
        ):
            return 0.0
        return work.latency_s

    def _layer_optimizer_step(self, memory: LayerMemory, dp_mode: str, dp: int) -> float:
        """Seconds of this layer's share of the AdamW step on one device.

        ZeRO-1 steps whole parameters, 1/dp of them; FSDP (ZeRO-2/3) steps every parameter's
        1/dp shard; DDP steps all of them whole.
        """
        nbytes = memory.param_bytes / (dp if dp_mode != "ddp" else 1)
        tensors = memory.param_tensors / (dp if dp_mode == "zero1" else 1)
        measured = self._tensor_work_share("optimizer", tensors=tensors, nbytes=nbytes)
        if measured is not None:  # the step's latency is counted once, per stage
            return measured
        bandwidth = self.cost.hardware.device.memory_bandwidth_bytes_per_s
        if not bandwidth:
            return 0.0
        return OPTIMIZER_STEP_BYTES_PER_PARAM_BYTE * nbytes / bandwidth

    def _optimizer_step(self, layers: list[LayerWork]) -> float:
        measured = self.cost.hardware.optimizer
        latency = measured.latency_s if measured is not None else 0.0
        return (latency + sum(layer.optimizer_s for layer in layers)) * self._compute_scale()

    def _step_end(self) -> float:
        """The executor's per-step all-reduce of the loss and its barrier."""
        hardware = self.cost.hardware
        world = GroupPlacement(
            size=self.plan.world_size,
            placement="consecutive",
            scope="inter_node" if hardware.num_nodes > 1 else "intra_node",
        )
        return STEP_END_ALL_REDUCES * self._meeting("all_reduce", SMALL_MESSAGE_BYTES, world)


def _scaled(times: LayerTimes, scale: float) -> LayerTimes:
    if scale == 1.0:
        return times
    seconds = {
        f.name: getattr(times, f.name) * scale
        for f in fields(times)
        if f.name.endswith("_s") and getattr(times, f.name) is not None
    }
    return replace(times, **seconds)


def _both(first: float | None, second: float | None) -> tuple[float, float] | None:
    """A mode's measured forward and backward, where the profile has both."""
    return None if first is None or second is None else (first, second)


def _sublayers(layer: LayerDescription) -> tuple[int, int]:
    """(attentions, FFNs) whose outputs a tensor-parallel group must combine.

    The description does not list sub-layers; T5 decoder blocks have a cross-attention.
    """
    attentions = selective_op.attention_count(layer) if layer.num_heads else 0
    return attentions, 1 if layer.ffn_size else 0

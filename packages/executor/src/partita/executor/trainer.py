"""The training loop under any plan: build, parallelize, step by the schedule, measure.

One trainer runs every plan; a whole-model plan is the one-stage, one-micro-batch case. Each
rank builds the model on the meta device, keeps and parallelizes its stage, materialising only
the shards it holds, as the seed's one-process model holds them
(``parallelize.parallelize_stage``), and walks that stage's action list from
``partita.formats.schedules.build_schedule`` (the list the simulator replays). A rank holds
``pipeline.chunks`` chunks (virtual stages: chunk c of rank r is virtual stage ``c * pp + r``;
one chunk except under interleaved 1F1B), all in one ``StageModel``; an action names its
micro-batch and chunk, and transfers go between virtual stages: to and from the rank with my
local index on pipeline rank ``(v ± 1) % pp``. ``F m.c`` receives micro-batch m's activations
from virtual stage v-1 (the first virtual stage slices the batch, which every rank builds from
the seed), runs chunk c and sends the output to v+1; ``B m.c`` receives the output gradients
(the last virtual stage differentiates the loss), runs backward and sends the input gradients
back to v-1. Per pair of ranks the messages arrive in the order they were sent, for every
schedule (``partita.formats`` tests it), so blocking receives match them without tags.

Where the schedule has ``W`` actions (ZB-H1), the backward is split: ``B`` computes only the
chunk's input gradients and sends them at once; ``W`` the weight gradients, later. In a chunk
of DDP and ZeRO-1 layers without ``full`` or ``selective-op`` checkpointing, B keeps the
gradient arriving at every point where a weight's branch leaves the activation chain and W runs
only those branches (``split_backward``: gpt-tiny's 4 blocks on one CPU thread, B 1.6 ms and
W 4.0 ms against a 2.3 ms backward, W paying about 0.1 ms per branch pass, plus 1.4 ms to find
the branches in the graph). Elsewhere W runs the chunk's backward again from the same outputs,
restricted to the graph's other leaves (``pipeline.weight_leaves``): a layer checkpointed whole
or op by op would recompute its forward once per branch pass, and FSDP2 reduce-scatters from a
hook at a unit's input, which branch passes do not reach. FSDP2's ZeRO-2/3 layers stay gathered
from ``B`` to ``W`` (``data_parallel.gathered_after_backward``) and reduce-scatter in ``W``.
The first virtual stage has no input gradient to send: its ``B`` only receives, its ``W`` runs
the whole backward. ``torch.distributed.pipelining``'s ``stage_backward_weight`` also starts W
from gradients B captured, but (torch 2.13, checked) sets ``.grad`` by hand, so no
post-accumulate hook fires (the buckets below would not see W), and gives a stage whose inputs
need no gradient no weight gradient at all.

The data-parallel buckets of a chunk are armed before its last gradient-making action (its
last ``B``, or its last ``W`` where the backward is split) and sum DDP and ZeRO-1 gradients
while that backward runs (FSDP2 does it in backward for ZeRO-2/3 layers); after the last
action the partial gradients of sequence-parallel layers are summed over their tp group and
a table tied across stages between its copies.

The loss of a micro-batch slice is weighted by its share of the global batch's labelled
tokens, so summing (not averaging) gradients gives one process's gradients on the batch.

Every tensor the step makes is on the rank's device (``self.device``): batches are built on
the host from the seed, then each rank moves its slice; pipeline receives, loss counts and
the logged loss are allocated there. Mixed precision (``plan.precision`` bf16 or fp16) runs
the layers under autocast with fp32 parameters as master weights; gradients are fp32 (those
of fp32 parameters) and are summed over ranks in fp32. fp16 scales the loss
(``loss_scaling.LossScaler``) and skips a step whose gradients overflowed on any rank.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from partita.executor.data_parallel import gathered_after_backward
from partita.executor.groups import ParallelGroups, stage_ranks
from partita.executor.layout import Layout, check_nested
from partita.executor.loss_scaling import LossScaler, needs_loss_scaling
from partita.executor.memory import PeakMemory
from partita.executor.parallelize import AUTOCAST_DTYPES, ParallelStage, parallelize_stage
from partita.executor.pipeline import (
    Inbox,
    Transfers,
    needing_grad,
    recv_gradients,
    weight_leaves,
)
from partita.executor.setups import LayerSetup, check_vocab_sequence_parallel, tied_stage_sets
from partita.executor.sharded_state import TrainState, canonical_names, torch_optimizers
from partita.executor.split_backward import SplitBackward
from partita.executor.stage import StageModel
from partita.executor.step_phases import PhaseClock
from partita.formats import Plan
from partita.formats.common import WHOLE_LAYER_CKPT_MODES
from partita.formats.schedules import Action, build_schedule, splits_backward
from partita.models.api import (
    ModelSource,
    describe_model,
    resolve_config,
    synthetic_batch,
)
from partita.models.families import family_of
from partita.models.init import build_empty
from partita.models.layered import Activations
from partita.models.losses import IGNORE_INDEX
from partita.models.text_data import TextBatches, tokenize_file
from partita.models.weights import PretrainedWeights

MEMORY_WINDOWS = 3  # steps whose peak memory is measured (the lowest is reported)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 5
    lr: float = 1e-3
    adam_eps: float = 1e-8
    seed: int = 0
    seq_len: int | None = None
    data: str = "synthetic"  # or the path of a UTF-8 text file (GPT and LLaMA)
    rank_timeout: timedelta = timedelta(seconds=60)
    attention: str = "auto"  # partita.models.attention.ATTENTION_CHOICES
    init: str = "random"  # or "pretrained": the model folder's safetensors weights


class LostRankError(RuntimeError):
    """Another rank died or hung; the message names it."""


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    items_per_step: int = 0
    peak_memory_bytes: int = 0
    memory_method: str = ""
    unit: str = "tokens"
    # Per step: (schedule, gradient sync, optimizer, step end) seconds (``step_phases``).
    step_phases_s: list[tuple[float, float, float, float]] = field(default_factory=list)


def check_supported(plan: Plan, family: str | None = None) -> None:
    """Refuse what this executor does not run, naming the plan field; with the model's
    ``family`` (its name), also what that family cannot run (``vocab.sp`` for ViT and Swin).
    The launcher calls it before any process starts."""
    if family is not None:
        check_vocab_sequence_parallel(family, plan)
    check_nested(plan, {layer.tp for layer in plan.layers} | {plan.vocab.tp})
    pipeline = plan.pipeline
    try:
        build_schedule(pipeline.schedule, pipeline.degree, plan.num_micro_batches, pipeline.chunks)
    except ValueError as error:
        raise ValueError(f"pipeline.schedule: {error}") from None


def text_batches(
    path: str, source: ModelSource, *, batch_size: int, seed: int, seq_len: int | None = None
) -> TextBatches:
    """The batches of a text file as the ranks read them: byte tokens, blocks of the model's
    sequence length (at most 128 unless given). The launcher calls it too, so that a file the
    ranks would refuse (empty, not UTF-8, too short for one batch) is refused before they
    start."""
    config = resolve_config(source)
    family = family_of(config)
    if family.name not in ("gpt", "llama"):
        raise ValueError(f"--data: text files feed GPT and LLaMA models, not {family.name}")
    try:
        tokens = tokenize_file(path, kind="bytes", vocab_size=config.vocab_size)
    except ValueError as error:  # it names the file already
        raise ValueError(f"--data: {error}") from None
    try:
        return TextBatches(
            tokens,
            seq_len=seq_len or min(family.default_seq_len(config), 128),
            batch_size=batch_size,
            seed=seed,
        )
    except ValueError as error:
        raise ValueError(f"--data: {path}: {error}") from None


def create_groups(
    plan: Plan, source: ModelSource, *, rank: int, device: torch.device
) -> ParallelGroups:
    """Every process group ``plan`` needs on ``source``'s model (collective)."""
    return ParallelGroups.create(
        plan,
        rank=rank,
        device_type=device.type,
        tied_stages=tied_stage_sets(describe_model(source), plan),
    )


@dataclass
class Trainer:
    plan: Plan
    source: ModelSource
    settings: TrainSettings
    groups: ParallelGroups
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.config = resolve_config(self.source)
        self.family = family_of(self.config)
        check_supported(self.plan, self.family.name)
        model = build_empty(self.config)  # parameters on meta: each rank fills only its own
        # Read piece by piece as each rank fills its own (bytes_read: this rank's share).
        self.weights = (
            PretrainedWeights(str(self.source), self.config)
            if self.settings.init == "pretrained"
            else None
        )
        # A tied table's copies are reported under the one-process model's (first) name.
        self.canonical = canonical_names(model)
        self.parallel: ParallelStage = parallelize_stage(
            model,
            self.plan,
            self.groups,
            device=self.device,
            seed=self.settings.seed,
            attention=self.settings.attention,
            lr=self.settings.lr,
            eps=self.settings.adam_eps,
            weights=self.weights,
        )
        if self.weights is not None:
            self.weights.close()
        self.stage_model = self.parallel.model
        self.optimizer = self.parallel.optimizer
        self.stage = self.parallel.stage
        _, self.local_index = self.groups.stage_of()
        pipeline = self.plan.pipeline
        pp = pipeline.degree
        # The global rank with my local index on each pipeline rank: virtual stage k's peer
        # is ``self.peers[k % pp]``.
        self.peers = [
            ranks[self.local_index] for ranks in stage_ranks(self.plan, self.groups.degrees[0])
        ]
        schedule = build_schedule(
            pipeline.schedule, pp, self.plan.num_micro_batches, pipeline.chunks
        )
        self.actions = schedule[self.stage]
        self.split = splits_backward(schedule)
        self._split_weight_pass = _split_weight_pass(self.stage_model)
        self.arm_at = _last_gradient_actions(self.actions, split=self.split)
        self.last_virtual = pipeline.num_virtual_stages - 1
        self.last = self.stage == pp - 1  # holds the last virtual stage (the head)
        self.scaler = (
            LossScaler(group=self.groups.world, device=self.device)
            if needs_loss_scaling(self.plan.precision)
            else None
        )
        self._text: TextBatches | None = None
        self.phase_clock = PhaseClock(self.device)

    @property
    def attention(self) -> str:
        return self.parallel.attention

    # -- batches ---------------------------------------------------------------------------

    def global_batch(self, step: int) -> Activations:
        """The whole batch of ``step`` (every rank makes the same one, on the host)."""
        if self.settings.data != "synthetic":
            return self._text_batch(step)
        return synthetic_batch(
            self.config,
            batch_size=self.plan.global_batch_size,
            seq_len=self.settings.seq_len,
            seed=self.settings.seed * 100_003 + step,
        )

    def _text_batch(self, step: int) -> Activations:
        if self._text is None:
            self._text = text_batches(
                self.settings.data,
                self.config,
                batch_size=self.plan.global_batch_size,
                seed=self.settings.seed,
                seq_len=self.settings.seq_len,
            )
        self._text.position = step
        return next(self._text)

    def _slice(self, batch: Activations, layout: Layout) -> Activations:
        """This rank's part of a micro-batch under ``layout``, on the rank's device: a slice
        of the batch, whole along the sequence under every layout. Under ``vocab.sp`` too:
        the embedding looks up every token (its vocab-parallel rows) before reduce-scattering
        along the sequence, and the head gathers the sequence, so the labels are whole."""
        groups = layout.groups
        size = self.plan.micro_batch_size // groups.dp_size
        start = groups.dp_rank * size
        return {k: v[start : start + size].to(self.device) for k, v in batch.items()}

    # -- one step --------------------------------------------------------------------------

    def step(self, batch: Activations) -> float:
        self.phase_clock.start()
        total = (batch["labels"] != IGNORE_INDEX).sum().to(self.device, torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        self.parallel.buckets.attach()
        size = self.plan.micro_batch_size
        transfers, inbox = Transfers(), Inbox(self.device)
        saved: dict[tuple[int, int], _Saved] = {}  # by (micro-batch, chunk)
        logged = torch.zeros((), dtype=torch.float64, device=self.device)
        for index, action in enumerate(self.actions):
            key = (action.micro_batch, action.chunk)
            if index in self.arm_at:
                self.parallel.buckets.arm(action.chunk)
            if action.kind == "F":
                m = action.micro_batch
                micro = {k: v[m * size : (m + 1) * size] for k, v in batch.items()}
                saved[key], part = self._forward(micro, action.chunk, total, transfers, inbox)
                logged += part
            elif action.kind == "B" and not self.split:
                self._backward(saved.pop(key), action.chunk, transfers)
            elif action.kind == "B":
                self._backward_input(saved[key], action.chunk, transfers)
            else:
                self._backward_weight(saved.pop(key))
        assert not saved, f"actions left without their backward: {sorted(saved)}"
        transfers.wait()
        self.phase_clock.mark()
        self.parallel.sync_after_backward()
        self.phase_clock.mark()
        if self.scaler is None:
            self.optimizer.step()
        else:
            finite = self.scaler.unscale_and_check(self.stage_model.parameters())
            if finite:  # else every rank skips the step (its gradients overflowed)
                self.optimizer.step()
            self.scaler.update(finite)
        self.phase_clock.mark()
        head = self.stage_model.output_layout.groups
        if not (self.last and head.tp_rank == 0):
            logged.zero_()
        dist.all_reduce(logged, group=self.groups.world)
        return float(logged)

    def _peer(self, virtual_stage: int) -> int:
        """The global rank running ``virtual_stage`` with my local index."""
        return self.peers[self.plan.pipeline.rank_of_virtual_stage(virtual_stage)]

    def _virtual(self, chunk: int) -> int:
        return chunk * self.plan.pipeline.degree + self.stage

    def _forward(
        self,
        micro: Activations,
        chunk: int,
        total: torch.Tensor,
        transfers: Transfers,
        inbox: Inbox,
    ) -> tuple[_Saved, torch.Tensor]:
        model = self.stage_model
        virtual = self._virtual(chunk)
        if virtual == 0:
            inputs = self._slice(micro, model.input_layouts[chunk])
        else:
            inputs = inbox.activations(self._peer(virtual - 1), stage=virtual)
        with self._autocast():
            outputs = model(inputs, chunk)
            if virtual < self.last_virtual:
                token = transfers.send_activations(
                    outputs, self._peer(virtual + 1), stage=virtual + 1
                )
                return _Saved(inputs, outputs, sent=token), torch.zeros(
                    (), dtype=torch.float64, device=self.device
                )
            local = self._slice(micro, model.output_layouts[chunk])
            loss = model.loss_fn(outputs, local)
        count = (local["labels"] != IGNORE_INDEX).sum().to(torch.float64)
        scaled = loss * (count / total).to(loss.dtype)
        return _Saved(inputs, scaled), scaled.detach().to(torch.float64)

    def _output_grads(
        self, saved: _Saved, chunk: int, transfers: Transfers
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """What the backward of ``saved`` starts from: the weighted (and scaled) loss on the
        last virtual stage, else the outputs that need a gradient and their gradients,
        received from the next virtual stage."""
        outputs = saved.outputs
        if isinstance(outputs, torch.Tensor):
            return [outputs if self.scaler is None else self.scaler.scaled(outputs)], None
        tensors = [outputs[k] for k in needing_grad(outputs)]
        grads = recv_gradients(tensors, self._peer(self._virtual(chunk) + 1))
        if saved.sent is not None:  # the next stage answered: it has the activations
            transfers.release(saved.sent)
        return tensors, grads

    def _send_input_grads(
        self, grads: list[torch.Tensor | None], saved: _Saved, chunk: int, transfers: Transfers
    ) -> None:
        virtual = self._virtual(chunk)
        if virtual == 0:
            return
        like = [saved.inputs[k] for k in needing_grad(saved.inputs)]
        filled = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like, strict=True)]
        transfers.send_gradients(filled, self._peer(virtual - 1))

    def _backward(self, saved: _Saved, chunk: int, transfers: Transfers) -> None:
        """The whole backward of one micro-batch on one chunk (no ``W`` in the schedule)."""
        roots, grads = self._output_grads(saved, chunk, transfers)
        torch.autograd.backward(roots, grads)
        inputs = saved.inputs
        self._send_input_grads(
            [inputs[k].grad for k in needing_grad(inputs)], saved, chunk, transfers
        )

    def _backward_input(self, saved: _Saved, chunk: int, transfers: Transfers) -> None:
        """``B`` of a split backward: only the gradients of the chunk's inputs, sent back at
        once; the graph is kept for ``W``. The first virtual stage has no input gradient to
        compute (W runs its whole backward)."""
        saved.roots, saved.grads = self._output_grads(saved, chunk, transfers)
        if self._virtual(chunk) == 0:
            return
        wanted = [saved.inputs[k] for k in needing_grad(saved.inputs)]
        grads: list[torch.Tensor | None] = []
        if wanted and self._split_weight_pass[chunk]:
            inputs = {id(x) for x in saved.inputs.values()}
            weights = weight_leaves(saved.roots, exclude=inputs)
            saved.split = SplitBackward(saved.roots, saved.grads, wanted, weights)
            grads = saved.split.input_gradients()
        elif wanted:
            with gathered_after_backward(self.stage_model):
                grads = list(
                    torch.autograd.grad(
                        saved.roots, wanted, saved.grads, retain_graph=True, allow_unused=True
                    )
                )
        self._send_input_grads(grads, saved, chunk, transfers)

    def _backward_weight(self, saved: _Saved) -> None:
        """``W`` of a split backward: the weight gradients, from the gradients ``B`` kept at
        the weight branches (``split_backward``), or, in a chunk with checkpointed (``full``,
        ``selective-op``) or FSDP layers, through the whole graph ``B`` kept (only towards the
        leaves that are not the chunk's inputs)."""
        assert saved.roots is not None, "W before its B"
        if saved.split is not None:
            saved.split.weight_gradients()
            return
        inputs = {id(x) for x in saved.inputs.values()}
        weights = weight_leaves(saved.roots, exclude=inputs)
        if weights:
            torch.autograd.backward(saved.roots, saved.grads, inputs=weights)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        """bf16/fp16 compute with the fp32 parameters as master weights."""
        dtype = AUTOCAST_DTYPES.get(self.plan.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- state -----------------------------------------------------------------------------

    def train_state(self) -> TrainState:
        """The parameters and optimizer states, as a checkpoint sees them."""
        return TrainState(
            module=self.stage_model,
            shard_dims=self.stage_model.shard_dims,
            canonical=self.canonical,
            optimizers=torch_optimizers(self.optimizer),
            group=self.groups.world,
        )

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter gathered whole, under the one-process model's names, on rank 0
        (the others return their stage's)."""
        mine = gather_whole_parameters(self.stage_model, self.stage_model.shard_dims)
        mine = {k: v.cpu() for k, v in mine.items()}
        everyone: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size(
            self.groups.world
        )
        dist.all_gather_object(
            everyone, mine if self.local_index == 0 else {}, group=self.groups.world
        )
        full: dict[str, torch.Tensor] = {}
        for part in everyone:
            for name, tensor in (part or {}).items():
                full.setdefault(self.canonical.get(name, name), tensor)
        return full

    # -- the run ---------------------------------------------------------------------------

    def run(
        self,
        on_step: Callable[..., object] | None = None,
        *,
        start_step: int = 0,
    ) -> TrainResult:
        """Train steps ``start_step`` .. ``settings.steps - 1`` (a resumed run starts later).

        Peak memory is measured over up to ``MEMORY_WINDOWS`` steps from the second (the first
        of a fresh run creates the optimizer states; later steps repeat the second, allocation
        for allocation), one window each, and the lowest is reported: on CPU the allocation
        records sometimes miss a free, which shows as a step peaking higher than its twins
        (+1.75 MiB on one rank of gpt-tiny under tp 2 in the fidelity run of 2026-12-06)."""
        result = TrainResult(unit=self.family.unit)
        first = start_step + min(1, self.settings.steps - start_step - 1)
        measured = range(first, min(first + MEMORY_WINDOWS, self.settings.steps))
        peaks: list[int] = []
        for step in range(start_step, self.settings.steps):
            batch = self.global_batch(step)
            self._all_ranks_alive()
            if step in measured:
                memory = PeakMemory(self.device, baseline=self._memory_baseline())
                with memory:  # the memory window's own bookkeeping stays outside the timing
                    elapsed, loss = self._timed_step(batch)
                peaks.append(memory.peak_bytes)
                result.peak_memory_bytes = min(peaks)
                result.memory_method = memory.method
            else:
                elapsed, loss = self._timed_step(batch)
            result.step_times_s.append(elapsed)
            result.step_phases_s.append(self.phase_clock.split(elapsed))
            result.losses.append(loss)
            result.items_per_step = _items(batch, result.unit)
            if on_step is not None:
                on_step(step, loss, elapsed, result.items_per_step)
        return result

    def _memory_baseline(self) -> list[object]:
        return [self.stage_model, *self.optimizer.optimizers, *self.parallel.buckets.buffers()]

    def _timed_step(self, batch: Activations) -> tuple[float, float]:
        start = time.perf_counter()
        loss = self.step(batch)
        dist.barrier(group=self.groups.world)
        return time.perf_counter() - start, loss

    def _all_ranks_alive(self) -> None:
        """A barrier that, on gloo, names the ranks that did not arrive (hung or lost)."""
        world = self.groups.world
        if dist.get_backend(world) != "gloo":
            dist.barrier(group=world)
            return
        try:
            dist.monitored_barrier(
                group=world, timeout=self.settings.rank_timeout, wait_all_ranks=True
            )
        except RuntimeError as error:
            lost = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(error))
            who = f"rank(s) {lost.group(1).strip()}" if lost else "a rank"
            raise LostRankError(
                f"{who} did not reach step start within "
                f"{self.settings.rank_timeout.total_seconds():.0f} s (hung or lost)"
            ) from None


def gather_whole_parameters(
    module: nn.Module, shard_dims: Mapping[str, tuple[int, dist.ProcessGroup]]
) -> dict[str, torch.Tensor]:
    """``module``'s parameters by name, FSDP shards and tensor-parallel shards gathered whole
    (collective over each parameter's groups)."""
    whole = {}
    for name, param in module.named_parameters():
        tensor = param.full_tensor() if hasattr(param, "full_tensor") else param.detach()
        if name in shard_dims:
            dim, group = shard_dims[name]
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, tensor.contiguous(), group=group)
            tensor = torch.cat(parts, dim=dim)
        whole[name] = tensor.detach().clone()
    return whole


def _items(batch: Activations, unit: str) -> int:
    labels = batch["labels"]
    return int(labels.numel()) if unit == "tokens" else int(labels.shape[0])


@dataclass
class _Saved:
    """What a forward leaves for its backward: the chunk's inputs and outputs (the weighted
    loss on the last virtual stage); under a split backward, ``B`` adds where the backward
    starts from, for ``W``."""

    inputs: Activations
    outputs: object
    sent: int | None = None  # the token of the sends of ``outputs`` (``Transfers``)
    roots: list[torch.Tensor] | None = None
    grads: list[torch.Tensor] | None = None
    split: SplitBackward | None = None


def _split_weight_pass(stage: StageModel) -> list[bool]:
    """Per chunk: whether W can start from the gradients B keeps (``split_backward``), or
    must run the chunk's whole backward again: where a layer runs under checkpointing,
    ``full`` or ``selective-op`` (W would recompute it once per weight branch: each branch pass
    is a graph task of its own, and a checkpoint's recomputed tensors last one task), or is
    sharded by FSDP (whose reduce-scatter hook sits at the layer's input, which W would not
    reach). ``attention`` keeps the split: the core it recomputes holds no weight. The
    simulator prices W so (``StageWork.whole_weight_pass``)."""

    def whole(setup: LayerSetup) -> bool:
        checkpointed = setup.ckpt in WHOLE_LAYER_CKPT_MODES
        return checkpointed or (setup.dp in ("zero2", "zero3") and setup.groups.dp_size > 1)

    return [not any(whole(stage.setups[i]) for i in chunk) for chunk in stage.chunks]


def _last_gradient_actions(actions: tuple[Action, ...], *, split: bool) -> dict[int, int]:
    """index of each chunk's last action that makes weight gradients (its last ``W`` where
    the backward is split, else its last ``B``) -> the chunk: the data-parallel buckets of
    the chunk are armed for it."""
    kind = "W" if split else "B"
    last = {a.chunk: i for i, a in enumerate(actions) if a.kind == kind}
    return {i: chunk for chunk, i in last.items()}

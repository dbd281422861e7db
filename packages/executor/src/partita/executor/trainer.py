"""The training loop under a plan: build, parallelize, step, measure.

Every rank builds the same model from the same seed, applies the plan, and takes its share
of each global batch (its data-parallel slice; tensor-parallel peers share one). The loss is
normalised by the global number of labelled tokens, so the gradients equal one process's on
the whole batch, whatever the split.
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

from partita.executor.data_parallel import all_reduce_flat, make_optimizer, wrap_data_parallel
from partita.executor.groups import LayerGroups, ParallelGroups
from partita.executor.memory import PeakMemory
from partita.executor.parallel_model import ParallelModel, layer_setups
from partita.executor.sharded_state import TrainState, canonical_names, torch_optimizers
from partita.executor.stage import StageModel
from partita.formats import Plan
from partita.models.api import ModelSource, build_model, resolve_config, synthetic_batch
from partita.models.families import family_of
from partita.models.layered import Activations
from partita.models.losses import IGNORE_INDEX
from partita.models.text_data import TextBatches, tokenize_file


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 5
    lr: float = 1e-3
    adam_eps: float = 1e-8
    seed: int = 0
    seq_len: int | None = None
    data: str = "synthetic"  # or the path of a UTF-8 text file (GPT and LLaMA)
    rank_timeout: timedelta = timedelta(seconds=60)


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


def is_uniform(plan: Plan) -> bool:
    """Whether the whole-model path (:class:`Trainer`) runs the plan (``Plan.is_whole_model``);
    several micro-batches on one stage accumulate gradients under the schedule like a
    pipeline's (``PipelineTrainer``)."""
    return plan.is_whole_model


def check_supported(plan: Plan) -> None:
    """Refuse what this executor does not run, naming the plan field."""
    if plan.vocab.sp:
        raise ValueError("vocab.sp: a sequence-parallel embedding and head are not supported yet")
    if not is_uniform(plan):
        from partita.executor.layout import check_nested

        check_nested(plan, {layer.tp for layer in plan.layers} | {plan.vocab.tp})


def build_trainer(
    *, plan: Plan, source: ModelSource, settings: TrainSettings, groups: ParallelGroups
) -> Trainer:
    """The whole-model :class:`Trainer` for uniform single-stage plans, else the per-stage,
    per-layer one (``pipeline_trainer.PipelineTrainer``)."""
    if is_uniform(plan):
        return Trainer(plan=plan, source=source, settings=settings, groups=groups)
    from partita.executor.pipeline_trainer import PipelineTrainer

    return PipelineTrainer(plan=plan, source=source, settings=settings, groups=groups)


@dataclass
class Trainer:
    plan: Plan
    source: ModelSource
    settings: TrainSettings
    groups: ParallelGroups

    def __post_init__(self) -> None:
        check_supported(self.plan)
        if not is_uniform(self.plan):
            raise ValueError(
                "pipeline.degree/layers: a pipelined or layer-wise plan runs under "
                "PipelineTrainer (use build_trainer)"
            )
        self.config = resolve_config(self.source)
        self.family = family_of(self.config)
        model = build_model(self.config, seed=self.settings.seed)
        self.canonical = canonical_names(model)
        setups = layer_setups(model, self.plan, self.groups)
        self.block_groups: LayerGroups = setups[1].groups
        self.parallel = ParallelModel(model, setups)
        mode = self.plan.layers[0].dp
        self.wrapped = wrap_data_parallel(
            self.parallel,
            self.parallel.layers,
            mode=mode,
            groups=self.block_groups,
        )
        self.optimizer = make_optimizer(
            self.wrapped,
            mode=mode,
            groups=self.block_groups,
            lr=self.settings.lr,
            eps=self.settings.adam_eps,
        )
        self.partial = self.parallel.partial_gradient_params()
        self._text: TextBatches | None = None

    def global_batch(self, step: int) -> Activations:
        """The whole batch of ``step`` (every rank makes the same one)."""
        if self.settings.data != "synthetic":
            return self._text_batch(step)
        return synthetic_batch(
            self.config,
            batch_size=self.plan.global_batch_size,
            seq_len=self.settings.seq_len,
            seed=self.settings.seed * 100_003 + step,
        )

    def _text_batch(self, step: int) -> Activations:
        if self.family.name not in ("gpt", "llama"):
            raise ValueError(
                f"--data: text files feed GPT and LLaMA models, not {self.family.name}"
            )
        if self._text is None:
            tokens = tokenize_file(
                self.settings.data, kind="bytes", vocab_size=self.config.vocab_size
            )
            seq = self.settings.seq_len or min(self.family.default_seq_len(self.config), 128)
            self._text = TextBatches(
                tokens,
                seq_len=seq,
                batch_size=self.plan.global_batch_size,
                seed=self.settings.seed,
            )
        self._text.position = step
        return next(self._text)

    def local_batch(self, batch: Activations) -> Activations:
        dp, rank = self.block_groups.dp_size, self.block_groups.dp_rank
        size = self.plan.global_batch_size // dp
        return {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()}

    def step(self, batch: Activations) -> float:
        local = self.local_batch(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.wrapped(local)
            loss = self.parallel.loss(outputs, local)
        del outputs  # the logits: the loss keeps what its backward needs
        count = (local["labels"] != IGNORE_INDEX).sum().to(torch.float64)
        total = count.clone()
        dist.all_reduce(total, group=self.block_groups.dp)
        # DP averages gradients over dp ranks; weighting by count * dp / total makes the sum
        # of per-token losses over the whole batch what is differentiated.
        weight = (count * self.block_groups.dp_size / total).to(loss.dtype)
        (loss * weight).backward()
        self._sum_partial_gradients()
        self.optimizer.step()
        logged = (loss.detach().to(torch.float64) * count).reshape(1)
        dist.all_reduce(logged, group=self.block_groups.dp)
        return float(logged / total)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        """bf16/fp16 compute with the fp32 parameters as master weights."""
        if self.plan.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.plan.precision == "bf16" else torch.float16
        device = next(self.parallel.parameters()).device.type
        return torch.autocast(device_type=device, dtype=dtype)

    def _sum_partial_gradients(self) -> None:
        """Sum sequence-parallel partial gradients over their tp group, one bucket a group."""
        by_group: dict[int, tuple[dist.ProcessGroup, list[torch.Tensor]]] = {}
        for param, group in self.partial:
            if param.grad is None:
                continue
            grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
            by_group.setdefault(id(group), (group, []))[1].append(grad)
        for group, grads in by_group.values():
            all_reduce_flat(grads, group)

    def train_state(self) -> TrainState:
        """The parameters and optimizer states, as a checkpoint sees them."""
        model = self._local_model()
        return TrainState(
            module=model,
            shard_dims=model.shard_dims,
            canonical=self.canonical,
            optimizers=torch_optimizers(self.optimizer),
        )

    def _local_model(self) -> ParallelModel | StageModel:
        """This rank's layers under the one-process names, with their tensor-parallel cuts."""
        return self.parallel

    def run(
        self,
        device: torch.device,
        on_step: Callable[..., object] | None = None,
        *,
        start_step: int = 0,
    ) -> TrainResult:
        """Train steps ``start_step`` .. ``settings.steps - 1`` (a resumed run starts later);
        peak memory is measured over the second of them (the first of a fresh run creates
        the optimizer states; later steps repeat the second)."""
        result = TrainResult(unit=self.family.unit)
        measured = start_step + min(1, self.settings.steps - start_step - 1)
        for step in range(start_step, self.settings.steps):
            batch = self.global_batch(step)
            self._all_ranks_alive()
            if step == measured:
                memory = PeakMemory(device, baseline=self._memory_baseline())
                with memory:  # the memory window's own bookkeeping stays outside the timing
                    elapsed, loss = self._timed_step(batch)
                result.peak_memory_bytes = memory.peak_bytes
                result.memory_method = memory.method
            else:
                elapsed, loss = self._timed_step(batch)
            result.step_times_s.append(elapsed)
            result.losses.append(loss)
            result.items_per_step = _items(batch, result.unit)
            if on_step is not None:
                on_step(step, loss, elapsed, result.items_per_step)
        return result

    def _memory_baseline(self) -> list[object]:
        return [self.wrapped, self.optimizer]

    def _timed_step(self, batch: Activations) -> tuple[float, float]:
        start = time.perf_counter()
        loss = self.step(batch)
        dist.barrier()
        return time.perf_counter() - start, loss

    def _all_ranks_alive(self) -> None:
        """A barrier that, on gloo, names the ranks that did not arrive (hung or lost)."""
        if dist.get_backend() != "gloo":
            dist.barrier()
            return
        try:
            dist.monitored_barrier(timeout=self.settings.rank_timeout, wait_all_ranks=True)
        except RuntimeError as error:
            lost = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(error))
            who = f"rank(s) {lost.group(1).strip()}" if lost else "a rank"
            raise LostRankError(
                f"{who} did not reach step start within "
                f"{self.settings.rank_timeout.total_seconds():.0f} s (hung or lost)"
            ) from None

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter gathered whole, under the single-process model's names."""
        return gather_whole_parameters(self.parallel, self.parallel.shard_dims)


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

"""The search: enumerate pipeline shapes, choose per-layer strategies by DP, re-score.

For every pipeline degree, micro-batch count, schedule (GPipe, 1F1B), embedding/head
strategy and stage partition, each stage's layers get the strategies (tensor and sequence
parallelism, data-parallel mode, recompute mode) that minimise the stage's compute time per
micro-batch under the memory budget (``knapsack``), with the stage's activation memory
multiplied by the micro-batches the schedule keeps in flight on it. The best plans by a proxy
time are priced by the closed-form estimate. The best few are then tried with a
sequence-parallel embedding and head (vocab SP, where their vocabulary is split), and the 1F1B
ones under the schedules that refine it: ZB-H1 (the same stages, the backward split) and
interleaved 1F1B with 2 to 4 chunks per rank (the layers spread evenly over the virtual
stages). Those change a stage's memory, bubble or boundary traffic, not which strategies suit
its layers, so they are priced as variants rather than searched as shapes (a variant that
does not fit is dropped). The best few of all, plus the best uniform plan, are re-scored by
the event simulation, whose verdict picks the winner.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from partita.formats import (
    FormatError,
    HardwareProfile,
    LayerDescription,
    LayerStrategy,
    ModelDescription,
    ModelProfile,
    PipelineConfig,
    Plan,
    Predictions,
    VocabStrategy,
)
from partita.formats.common import DpMode
from partita.formats.schedules import build_schedule, max_in_flight
from partita.simulator.cost import CostModel, ProfileOverflowError
from partita.simulator.search.knapsack import cheapest_assignment
from partita.simulator.search.partition import balanced_partition, even_partition
from partita.simulator.search.space import SearchSpace, layer_candidates
from partita.simulator.simulation import estimate, simulate
from partita.simulator.workload import (
    LayerWork,
    Strategy,
    WorkloadBuilder,
    layer_signature,
    vocab_strategy,
)

T = TypeVar("T")
RESCORED = 6  # plans re-scored by the event simulation
SHORTLIST = 48  # plans re-priced by the closed-form estimate after the proxy
SHORTLIST_UNIFORM = 4
MAX_MICRO_BATCH_COUNTS = 6
MESH_ORDER = ("pp", "dp", "tp")
INTERLEAVED_CHUNKS = (2, 3, 4)
# Schedules a pipeline shape is searched under; the others refine the best 1F1B plans.
SHAPE_SCHEDULES = ("1f1b", "gpipe")
ALTERNATE_MESH_ORDER = ("pp", "tp", "dp")


@dataclass(frozen=True)
class SearchProblem:
    hardware: HardwareProfile
    model_profile: ModelProfile
    model: ModelDescription
    world_size: int
    memory_bytes: float
    global_batch: int
    space: SearchSpace = field(default_factory=SearchSpace)
    precision: str = "fp32"


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    iteration_time_s: float
    peak_memory_bytes: tuple[float, ...]
    simulated: bool = False

    @property
    def throughput(self) -> float:
        return self.plan.global_batch_size / self.iteration_time_s


@dataclass
class SearchOutcome:
    best: Candidate | None
    runners_up: list[Candidate]
    considered: int
    elapsed_s: float
    least_memory_bytes: float | None = None  # what the leanest plan needs, when none fits
    least_memory_plan: Plan | None = None
    warnings: list[str] = field(default_factory=list)


def search(problem: SearchProblem) -> SearchOutcome:
    """The fastest plan of ``problem.space`` that fits ``problem.memory_bytes`` per device."""
    start = time.perf_counter()
    _check(problem)
    searcher = _Searcher(problem)
    candidates = searcher.run()
    outcome = _finish(problem, candidates, searcher)
    outcome.considered = searcher.considered
    outcome.elapsed_s = time.perf_counter() - start
    return outcome


def _check(problem: SearchProblem) -> None:
    if problem.world_size != problem.hardware.world_size:
        raise ValueError(
            f"world size {problem.world_size} does not match the hardware profile "
            f"{problem.hardware.name!r} ({problem.hardware.world_size} devices)"
        )
    if problem.global_batch < 1 or problem.memory_bytes <= 0:
        raise ValueError("the global batch and the memory budget must be positive")


def _finish(
    problem: SearchProblem, candidates: list[Candidate], searcher: _Searcher
) -> SearchOutcome:
    fitting = sorted(
        (c for c in candidates if max(c.peak_memory_bytes) <= problem.memory_bytes),
        key=lambda c: c.iteration_time_s,
    )
    if not fitting:
        least = min(candidates, key=lambda c: max(c.peak_memory_bytes), default=None)
        return SearchOutcome(
            best=None,
            runners_up=[],
            considered=len(candidates),
            elapsed_s=0.0,
            least_memory_bytes=max(least.peak_memory_bytes) if least else None,
            least_memory_plan=least.plan if least else None,
        )
    refined = [v for c in fitting[:RESCORED] for v in searcher.variants(c.plan)]
    fitting = sorted(
        fitting + [c for c in refined if max(c.peak_memory_bytes) <= problem.memory_bytes],
        key=lambda c: c.iteration_time_s,
    )
    pool = _distinct(fitting[:RESCORED] + searcher.uniform_best(fitting), lambda c: c.plan)
    rescored = sorted((_simulated(problem, c) for c in pool), key=lambda c: c.iteration_time_s)
    fits = [c for c in rescored if max(c.peak_memory_bytes) <= problem.memory_bytes]
    if not fits:  # a safeguard: the proxies bound the simulated peaks from above
        least = min(rescored, key=lambda c: max(c.peak_memory_bytes))
        return SearchOutcome(
            best=None,
            runners_up=[],
            considered=len(candidates),
            elapsed_s=0.0,
            least_memory_bytes=max(least.peak_memory_bytes),
            least_memory_plan=least.plan,
        )
    best, *others = fits
    return SearchOutcome(
        best=replace(best, plan=_with_predictions(best)),
        runners_up=others[:3],
        considered=len(candidates),
        elapsed_s=0.0,
    )


def _distinct(items: list[T], plan_of: Callable[[T], Plan]) -> list[T]:
    """``items`` without repeated plans, first occurrence kept."""
    seen: set[tuple[object, ...]] = set()
    kept = []
    for item in items:
        key = _key(plan_of(item))
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def _key(plan: Plan) -> tuple[object, ...]:
    """What distinguishes one searched plan from another (plans hold dicts: unhashable). A
    data-parallel mode over one rank does nothing, so plans differing only there are one."""
    per_stage = plan.world_size // plan.pipeline.degree

    def mode(tp: int, dp: DpMode) -> DpMode:
        return dp if per_stage // tp > 1 else "ddp"

    # Tuples, not replaced dataclasses, once per distinct layer object (a uniform plan repeats
    # one): the search keys thousands of plans.
    seen: dict[int, tuple[object, ...]] = {}
    layers = tuple(
        seen.get(id(x)) or seen.setdefault(id(x), (x.tp, x.sp, mode(x.tp, x.dp), x.ckpt))
        for x in plan.layers
    )
    vocab = (plan.vocab.tp, plan.vocab.sp, mode(plan.vocab.tp, plan.vocab.dp))
    # Without tensor parallelism the tp axis holds one device: the axis order is moot.
    split = plan.vocab.tp > 1 or any(x.tp > 1 for x in plan.layers)
    order = plan.mesh_axis_order if split else MESH_ORDER
    return (plan.pipeline, plan.num_micro_batches, layers, vocab, order)


def _simulated(problem: SearchProblem, candidate: Candidate) -> Candidate:
    result = simulate(
        candidate.plan,
        hardware=problem.hardware,
        model_profile=problem.model_profile,
        model=problem.model,
        record_events=False,
    )
    return Candidate(candidate.plan, result.iteration_time_s, result.peak_memory_bytes, True)


def _with_predictions(candidate: Candidate) -> Plan:
    return replace(
        candidate.plan,
        predictions=Predictions(
            iteration_time_s=candidate.iteration_time_s,
            throughput_samples_per_s=candidate.throughput,
            peak_memory_bytes_per_stage=tuple(int(b) for b in candidate.peak_memory_bytes),
        ),
    )


def is_uniform(plan: Plan) -> bool:
    return len(set(plan.layers)) == 1


@dataclass(frozen=True)
class _Options:
    """The strategies one kind of block may take under one pipeline shape, with their costs
    as arrays (one entry per strategy)."""

    strategies: tuple[Strategy, ...]
    time: np.ndarray  # forward + backward per micro-batch, s
    static: np.ndarray  # parameters, gradients, optimizer states, bytes
    activation: np.ndarray  # per micro-batch in flight, bytes
    transient: np.ndarray  # bytes
    sync: np.ndarray  # gradient collectives, s
    weight: np.ndarray  # the backward's weight gradients (a split backward's W pass), s
    late: np.ndarray  # of ``static``, the gradients the backward makes (not DDP's buckets)

    @functools.cached_property
    def positions(self) -> dict[Strategy, int]:
        return {strategy: i for i, strategy in enumerate(self.strategies)}

    def static_at(self, first: bool) -> np.ndarray:
        """What a block holds beside its micro-batches' activations at the stage's peak.

        Where every micro-batch is in flight before the stage's first backward (``first``:
        GPipe, one micro-batch), the peak is inside that backward: layer j holds its
        activation until its backward and its gradient from then on, so at most the larger
        of the two, and the layer being run both (``transient_at``); later backwards hold
        fewer micro-batches. Elsewhere a later backward holds every gradient and as many
        micro-batches: both counted whole."""
        if not first:
            return self.static
        held: np.ndarray = self.static - self.late + np.maximum(self.activation, self.late)
        beside: np.ndarray = held - self.activation
        return beside

    def transient_at(self, first: bool) -> np.ndarray:
        if not first:
            return self.transient
        bound: np.ndarray = self.transient + np.minimum(self.activation, self.late)
        return bound

    def memory(self, in_flight: int, first: bool = False) -> np.ndarray:
        memory: np.ndarray = self.static_at(first) + in_flight * self.activation
        return memory

    @functools.cached_property
    def ranked_time(self) -> np.ndarray:
        ranked: np.ndarray = self.time + 1e-3 * self.sync  # sync breaks ties: less traffic
        return ranked

    @functools.cached_property
    def undominated(self) -> np.ndarray:
        """Indices of the strategies no other one beats or ties on time, parameter and
        activation memory and transient memory at once (first of equals kept): the only
        ones a stage's choice can need, whatever its micro-batches in flight."""
        costs = np.stack(
            [
                self.ranked_time,
                self.static,
                self.activation,
                self.transient,
                self.static_at(True),
                self.transient_at(True),
            ],
            1,
        )
        no_worse = (costs[:, None, :] <= costs[None, :, :]).all(axis=2)  # [i, j]: i <= j
        better = no_worse & ~no_worse.T
        ties = no_worse & no_worse.T & np.tri(len(costs), k=-1, dtype=bool).T  # i before j
        beaten = (better | ties).any(axis=0)
        kept: np.ndarray = np.flatnonzero(~beaten)
        return kept


@dataclass(frozen=True)
class _Shape:
    """One pipeline shape: everything but the per-layer strategies and the partition."""

    template: Plan
    builder: WorkloadBuilder
    options: dict[tuple[object, ...], _Options]  # by block signature
    signatures: tuple[tuple[object, ...], ...]  # per block
    vocab: dict[str, LayerWork]  # embedding and head


class _Searcher:
    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self.cost = CostModel(hardware=problem.hardware, model_profile=problem.model_profile)
        self.blocks = problem.model.blocks
        self._work_cache: dict[tuple[object, ...], LayerWork] = {}
        self._choices: dict[tuple[object, ...], tuple[list[_Options], list[int] | None]] = {}
        self.considered = 0

    def run(self) -> list[Candidate]:
        """Every plan priced by the proxy; the best fitting ones (and the leanest, in case
        none fits) priced again by the closed-form estimate."""
        proxied: dict[tuple[object, ...], tuple[float, float, Plan]] = {}
        for shape in self._shapes():
            for plan, seconds, peak in self._plans_for(shape):
                proxied.setdefault(_key(plan), (seconds, peak, plan))
        budget = self.problem.memory_bytes
        ranked = sorted(proxied.values(), key=lambda x: x[0])
        fitting = [x for x in ranked if x[1] <= budget]
        uniform = [x for x in fitting if is_uniform(x[2])][:SHORTLIST_UNIFORM]
        leanest = sorted(ranked, key=lambda x: x[1])[:SHORTLIST_UNIFORM]
        shortlist = fitting[:SHORTLIST] + uniform + ([] if fitting else leanest)
        self.considered = len(proxied)
        return [
            self._estimated(variant)
            for _, _, plan in _distinct(shortlist, lambda entry: entry[2])
            for variant in self._device_orders(plan)
        ]

    def variants(self, plan: Plan) -> list[Candidate]:
        """``plan`` refined as the space allows, priced by the estimate: with a
        sequence-parallel embedding and head (vocab SP, where its vocabulary is split), and,
        pipelined under 1F1B, under ZB-H1 and under interleaved 1F1B (its blocks spread
        evenly over ``chunks`` virtual stages per rank, for each chunk count the model and
        micro-batches allow)."""
        variants = []
        if self.problem.space.vocab_sp and plan.vocab.tp > 1 and not plan.vocab.sp:
            variants.append(replace(plan, vocab=replace(plan.vocab, sp=True)))
        variants += self._schedule_variants(plan)
        priced = []
        for variant in variants:
            try:
                priced.append(self._estimated(variant))
            except FormatError:  # a refinement the model does not allow (vocab SP of a ViT)
                continue
        trimmed = self._recompute_trimmed(plan)
        if trimmed is not None:
            priced.append(trimmed)
        return priced

    def _recompute_trimmed(self, plan: Plan) -> Candidate | None:
        """``plan`` with as many of its recomputing blocks as still fit keeping everything
        instead, the last first; None where none can. The stage choice prices memory with a
        bound that holds wherever a block sits; the estimate knows where the peak falls, so
        a plan chosen under the bound often has room left (llama2-7b on 8 GPUs at 36 GiB: 14
        blocks recomputed at 30.8 GiB, where 9 fit)."""
        recomputing = [i for i, layer in enumerate(plan.layers) if layer.ckpt != "none"]
        space = self.problem.space
        if not recomputing or not space.per_layer or "none" not in space.recompute:
            return None  # (a space of one strategy for every block keeps it)

        def relaxed(count: int) -> Plan:
            layers = list(plan.layers)
            for index in recomputing[len(recomputing) - count :]:
                layers[index] = replace(layers[index], ckpt="none")
            return replace(plan, layers=tuple(layers))

        best, low, high = None, 1, len(recomputing)
        while low <= high:  # memory grows with every block relaxed: the most that fit
            middle = (low + high) // 2
            candidate = self._estimated(relaxed(middle))
            if max(candidate.peak_memory_bytes) <= self.problem.memory_bytes:
                best, low = candidate, middle + 1
            else:
                high = middle - 1
        return best

    def _schedule_variants(self, plan: Plan) -> list[Plan]:
        pipeline, schedules = plan.pipeline, self.problem.space.schedules
        if pipeline.schedule != "1f1b" or pipeline.degree < 2:
            return []
        variants = []
        if "zb-h1" in schedules:
            variants.append(replace(plan, pipeline=replace(pipeline, schedule="zb-h1")))
        if "interleaved-1f1b" in schedules and plan.num_micro_batches % pipeline.degree == 0:
            variants += [
                replace(
                    plan,
                    pipeline=replace(
                        pipeline,
                        schedule="interleaved-1f1b",
                        chunks=chunks,
                        stage_num_layers=even_partition(len(self.blocks), pipeline.degree * chunks),
                    ),
                )
                for chunks in INTERLEAVED_CHUNKS
                if pipeline.degree * chunks <= len(self.blocks)
            ]
        return variants

    def _device_orders(self, plan: Plan) -> list[Plan]:
        """The plan with tensor-parallel groups on consecutive devices (the default), and,
        where placement can matter (several nodes), with data-parallel groups there instead.
        Only shortlisted plans are tried both ways: the proxy does not see placement."""
        if self.problem.hardware.num_nodes == 1:
            return [plan]
        return [plan, replace(plan, mesh_axis_order=ALTERNATE_MESH_ORDER)]  # type: ignore[arg-type]

    def uniform_best(self, fitting: list[Candidate]) -> list[Candidate]:
        return [c for c in fitting if is_uniform(c.plan)][:1]

    def _estimated(self, plan: Plan) -> Candidate:
        seconds, memory = estimate(
            plan,
            hardware=self.problem.hardware,
            model_profile=self.problem.model_profile,
            model=self.problem.model,
            cost=self.cost,
            cache=self._work_cache,
        )
        return Candidate(plan, seconds, tuple(m.total for m in memory))

    # --- pipeline shapes -----------------------------------------------------------------------
    def _shapes(self) -> Iterator[_Shape]:
        problem = self.problem
        for degree in self._pipeline_degrees():
            devices = problem.world_size // degree
            for micro_batches in self._micro_batch_counts(degree):
                micro_batch = problem.global_batch // micro_batches
                schedules = [s for s in problem.space.schedules if s in SHAPE_SCHEDULES]
                schedules = schedules if degree > 1 else schedules[:1]
                for schedule in schedules:
                    for vocab in self._vocab_strategies(devices, micro_batch):
                        template = self._template(degree, micro_batches, schedule, vocab)
                        shape = self._shape(template, devices, micro_batch)
                        if shape is not None:
                            yield shape

    def _shape(self, template: Plan, devices: int, micro_batch: int) -> _Shape | None:
        builder = WorkloadBuilder(
            plan=template, model=self.problem.model, cost=self.cost, cache=self._work_cache
        )
        signatures = tuple(layer_signature(b) for b in self.blocks)
        options: dict[tuple[object, ...], _Options] = {}
        try:
            for block, signature in zip(self.blocks, signatures, strict=True):
                if signature not in options:
                    found = self._options(builder, block, devices, micro_batch)
                    if found is None:
                        return None
                    options[signature] = found
            vocab = self._vocab_work(template, builder)
        except ProfileOverflowError:
            raise  # the profile is wrong, not this combination: skipped, it would vanish
        except ValueError:
            return None  # a combination the profiles cannot price
        return _Shape(template, builder, options, signatures, vocab)

    def _options(
        self, builder: WorkloadBuilder, block: LayerDescription, devices: int, micro_batch: int
    ) -> _Options | None:
        strategies = layer_candidates(
            block,
            devices_per_stage=devices,
            micro_batch=micro_batch,
            space=self.problem.space,
            profile=self.problem.model_profile,
        )
        if not strategies:
            return None
        works = [builder.layer_cost(block, s, None) for s in strategies]
        return _Options(
            strategies=tuple(strategies),
            # The optimizer and what follows it run once a step, the passes once a micro-batch:
            # a coarse proxy, re-scored in full for the shortlist.
            time=np.array([w.forward_s + w.backward_s + w.optimizer_s for w in works]),
            static=np.array([w.param_bytes + w.grad_bytes + w.optimizer_bytes for w in works]),
            activation=np.array([w.activation_bytes for w in works]),
            transient=np.array([w.transient_bytes for w in works]),
            sync=np.array([sum(t for _, t in w.grad_sync) for w in works]),
            weight=np.array([w.weight_backward_s for w in works]),
            late=np.array([0.0 if w.grads_held else w.grad_bytes for w in works]),
        )

    def _pipeline_degrees(self) -> list[int]:
        if not self.problem.space.allows_pipeline:
            return [1]
        limit = min(self.problem.world_size, len(self.blocks))
        if self.problem.space.max_pipeline_degree is not None:
            limit = min(limit, self.problem.space.max_pipeline_degree)
        return [d for d in range(1, limit + 1) if self.problem.world_size % d == 0]

    def _micro_batch_counts(self, degree: int) -> list[int]:
        batch = self.problem.global_batch
        counts = [m for m in range(1, batch + 1) if batch % m == 0 and (degree == 1 or m >= degree)]
        if degree == 1:
            counts = counts[:2]  # no pipeline: one or two micro-batches suffice
        if len(counts) > MAX_MICRO_BATCH_COUNTS:
            picks = np.linspace(0, len(counts) - 1, MAX_MICRO_BATCH_COUNTS).round().astype(int)
            counts = [counts[i] for i in sorted(set(picks.tolist()))]
        return counts

    def _vocab_strategies(self, devices: int, micro_batch: int) -> list[VocabStrategy]:
        """Embedding/head strategies: no split and the widest priced split; DDP or ZeRO-3."""
        space = self.problem.space
        priced = [t for t in self._priced_vocab_degrees() if devices % t == 0]
        if not space.allows_tp():
            priced = [t for t in priced if t == 1]
        tps = sorted({min(priced), max(priced)}) if priced else []
        modes: list[str] = [m for m in ("ddp", "zero3") if m in space.dp_modes()]
        modes = modes or list(space.dp_modes()[:1])
        return [
            VocabStrategy(tp=tp, dp=mode)  # type: ignore[arg-type]
            for tp in tps
            for mode in modes
            if micro_batch % (devices // tp) == 0
        ]

    def _priced_vocab_degrees(self) -> list[int]:
        model = self.problem.model
        outputs = model.vocab_size or model.num_labels
        degrees: set[int] | None = None
        for layer in model.layers:
            if layer.kind == "block":
                continue
            profile = self.problem.model_profile.layer_type(layer.layer_type)
            have = {
                t.tp
                for t in (profile.timings if profile else ())
                if t.sp == "none" and t.seq_len == layer.seq_len
            }
            degrees = have if degrees is None else degrees & have
        if degrees is None:  # no embedding or head: nothing to split
            return [1]
        return sorted(t for t in degrees if not outputs or outputs % t == 0)

    def _template(
        self, degree: int, micro_batches: int, schedule: str, vocab: VocabStrategy
    ) -> Plan:
        num_blocks = len(self.blocks)
        return Plan(
            world_size=self.problem.world_size,
            mesh_axis_order=MESH_ORDER,  # type: ignore[arg-type]
            global_batch_size=self.problem.global_batch,
            num_micro_batches=micro_batches,
            pipeline=PipelineConfig(
                degree=degree,
                schedule=schedule,  # type: ignore[arg-type]
                stage_num_layers=even_partition(num_blocks, degree),
            ),
            layers=tuple(LayerStrategy() for _ in range(num_blocks)),
            vocab=vocab,
            precision=self.problem.precision,  # type: ignore[arg-type]
        )

    def _vocab_work(self, template: Plan, builder: WorkloadBuilder) -> dict[str, LayerWork]:
        strategy = vocab_strategy(template)
        return {
            layer.kind: builder.layer_cost(layer, strategy, None)
            for layer in self.problem.model.layers
            if layer.kind in ("embedding", "head")
        }

    # --- plans of one shape ---------------------------------------------------------------
    def _plans_for(self, shape: _Shape) -> Iterator[tuple[Plan, float, float]]:
        yield from self._uniform_plans(shape)
        if not self.problem.space.per_layer:
            return
        for sizes in self._partitions(shape):
            picked = self._layerwise(shape, sizes)
            if picked is not None:
                yield picked

    def _uniform_plans(self, shape: _Shape) -> Iterator[tuple[Plan, float, float]]:
        """One strategy for every block (uniform plans belong to every space, so no search
        loses to its own uniform baseline). Priced per kind of block, not per layer."""
        tables = list(shape.options.values())
        shared = set(tables[0].strategies).intersection(*(t.strategies for t in tables[1:]))
        template = shape.template
        sizes = template.pipeline.stage_num_layers
        in_flights = _in_flight(template.pipeline.schedule, len(sizes), template.num_micro_batches)
        kinds = list(shape.options)
        counts = np.zeros((len(sizes), len(kinds)))
        stage_of = np.repeat(np.arange(len(sizes)), sizes)
        for block, signature in enumerate(shape.signatures):
            counts[stage_of[block], kinds.index(signature)] += 1
        flights = np.array(in_flights, dtype=float)
        firsts = _first_backward_peaks(
            template.pipeline.schedule, len(sizes), template.num_micro_batches
        )

        def held_costs(vocab: dict[str, LayerWork]) -> tuple[np.ndarray, ...]:
            held = [self._vocab_held(stage, len(sizes), vocab) for stage in range(len(sizes))]
            return (
                np.array([sum(w.forward_s + w.backward_s for w in h) for h in held]),
                np.array(
                    [sum(_memory(w, f) for w in h) for h, f in zip(held, in_flights, strict=True)]
                ),
                np.array([max((w.transient_bytes for w in h), default=0.0) for h in held]),
            )

        held_time, held_memory, held_transient = held_costs(shape.vocab)
        held_weight = np.array(
            [
                sum(w.weight_backward_s for w in self._vocab_held(stage, len(sizes), shape.vocab))
                for stage in range(len(sizes))
            ]
        )
        split = template.pipeline.schedule == "zb-h1"
        present = counts > 0
        for strategy in sorted(shared, key=lambda s: (s.tp, s.sp, s.dp, s.ckpt)):
            layer = LayerStrategy(strategy.tp, strategy.sp, strategy.dp, strategy.ckpt)  # type: ignore[arg-type]
            plan = replace(template, layers=tuple(layer for _ in self.blocks))
            if self.problem.space.name == "uniform":  # uniform includes the embedding and head
                plan = replace(plan, vocab=replace(plan.vocab, dp=strategy.dp))  # type: ignore[arg-type]
            options = [shape.options[k] for k in kinds]
            picks = [o.positions[strategy] for o in options]
            per_kind = np.array(
                [
                    (o.time[p], o.static[p], o.activation[p], o.transient[p], o.weight[p],
                     o.static_at(True)[p], o.transient_at(True)[p])
                    for o, p in zip(options, picks, strict=True)
                ]
            )  # fmt: skip
            per_micro_batch = counts @ per_kind[:, 0] + held_time
            static = np.where(firsts, counts @ per_kind[:, 5], counts @ per_kind[:, 1])
            own = np.where(firsts[:, None], per_kind[None, :, 6], per_kind[None, :, 3])
            transient = np.maximum((present * own).max(axis=1), held_transient)
            peaks = static + flights * (counts @ per_kind[:, 2]) + held_memory
            peak = float((peaks + transient).max())
            weights = counts @ per_kind[:, 4] + held_weight
            proxy = _pipeline_proxy(
                per_micro_batch.tolist(), weights.tolist(), template.num_micro_batches, split
            )
            yield plan, proxy, peak

    def _partitions(self, shape: _Shape) -> list[tuple[int, ...]]:
        degree = shape.template.pipeline.degree
        if degree == 1:
            return [(len(self.blocks),)]
        weights = [float(shape.options[sig].time.min()) for sig in shape.signatures]
        return sorted(
            {even_partition(len(self.blocks), degree), balanced_partition(weights, degree)}
        )

    def _layerwise(self, shape: _Shape, sizes: tuple[int, ...]) -> tuple[Plan, float, float] | None:
        template = shape.template
        in_flights = _in_flight(template.pipeline.schedule, len(sizes), template.num_micro_batches)
        firsts = _first_backward_peaks(
            template.pipeline.schedule, len(sizes), template.num_micro_batches
        )
        indices: list[int] = []
        start = 0
        for stage, count in enumerate(sizes):
            in_flight, first = in_flights[stage], bool(firsts[stage])
            reserve = self._stage_reserve(stage, len(sizes), shape.vocab, in_flight)
            tables = [shape.options[sig] for sig in shape.signatures[start : start + count]]
            # Partitions and schedules repeat stage contents. Keyed by the tables' ids, which
            # stay unique because the cache keeps the tables alive.
            key = (tuple(map(id, tables)), in_flight, first, self.problem.memory_bytes - reserve)
            if key not in self._choices:
                self._choices[key] = (
                    tables,
                    _stage_choice(tables, in_flight, key[3], first=first),
                )
            picks = self._choices[key][1]
            if picks is None:
                return None
            indices += picks
            start += count
        return self._assemble(shape, sizes, indices)

    def _assemble(
        self, shape: _Shape, sizes: tuple[int, ...], indices: list[int]
    ) -> tuple[Plan, float, float]:
        """The plan, its proxy time (pipeline of per-layer compute) and its exact peak memory."""
        template = shape.template
        in_flights = _in_flight(template.pipeline.schedule, len(sizes), template.num_micro_batches)
        firsts = _first_backward_peaks(
            template.pipeline.schedule, len(sizes), template.num_micro_batches
        )
        tables = [shape.options[sig] for sig in shape.signatures]
        per_micro_batch, weights, peaks, start = [], [], [], 0
        for stage, count in enumerate(sizes):
            in_flight, first = in_flights[stage], bool(firsts[stage])
            held = self._vocab_held(stage, len(sizes), shape.vocab)
            chosen = [(tables[i], indices[i]) for i in range(start, start + count)]
            per_micro_batch.append(
                sum(float(t.time[c]) for t, c in chosen)
                + sum(w.forward_s + w.backward_s for w in held)
            )
            weights.append(
                sum(float(t.weight[c]) for t, c in chosen) + sum(w.weight_backward_s for w in held)
            )
            peaks.append(
                sum(float(t.memory(in_flight, first)[c]) for t, c in chosen)
                + sum(_memory(w, in_flight) for w in held)
                + max(
                    [float(t.transient_at(first)[c]) for t, c in chosen]
                    + [w.transient_bytes for w in held]
                )
            )
            start += count
        strategies = [tables[i].strategies[c] for i, c in enumerate(indices)]
        plan = replace(
            template,
            layers=tuple(LayerStrategy(s.tp, s.sp, s.dp, s.ckpt) for s in strategies),  # type: ignore[arg-type]
            pipeline=replace(template.pipeline, stage_num_layers=sizes),
        )
        split = template.pipeline.schedule == "zb-h1"
        proxy = _pipeline_proxy(per_micro_batch, weights, template.num_micro_batches, split)
        return plan, proxy, max(peaks)

    def _vocab_held(
        self, stage: int, num_stages: int, vocab: dict[str, LayerWork]
    ) -> list[LayerWork]:
        held = []
        if stage == 0 and "embedding" in vocab:
            held.append(vocab["embedding"])
        if stage == num_stages - 1 and "head" in vocab:
            held.append(vocab["head"])
        return held

    def _stage_reserve(
        self, stage: int, num_stages: int, vocab: dict[str, LayerWork], in_flight: int
    ) -> float:
        held = self._vocab_held(stage, num_stages, vocab)
        return sum(_memory(w, in_flight) + w.transient_bytes for w in held)


def _pipeline_proxy(
    per_micro_batch: list[float], weights: list[float], num_micro_batches: int, split: bool
) -> float:
    """The pipeline's length from each stage's time per micro-batch (``analytic``): the
    slowest stage M times, plus the others' once; less their weight gradients twice where the
    backward is split (ZB-H1 fills that part of the bubble)."""
    slowest = max(range(len(per_micro_batch)), key=per_micro_batch.__getitem__)
    in_bubble = [
        t - (2 * w if split else 0.0) for t, w in zip(per_micro_batch, weights, strict=True)
    ]
    return num_micro_batches * per_micro_batch[slowest] + sum(in_bubble) - in_bubble[slowest]


@functools.cache
def _in_flight(schedule: str, num_stages: int, num_micro_batches: int) -> tuple[int, ...]:
    stages = build_schedule(schedule, num_stages, num_micro_batches)
    return tuple(max_in_flight(actions) for actions in stages)


@functools.cache
def _first_backward_peaks(schedule: str, num_stages: int, num_micro_batches: int) -> np.ndarray:
    """Per stage, whether its peak is inside its first backward (:meth:`_Options.static_at`):
    every micro-batch in flight before it, and no split backward (W frees and makes later)."""
    in_flights = _in_flight(schedule, num_stages, num_micro_batches)
    plain = schedule in ("gpipe", "1f1b")
    flags = np.array([plain and f >= num_micro_batches for f in in_flights], dtype=bool)
    flags.setflags(write=False)  # shared by every caller through the cache
    return flags


def _stage_choice(
    tables: list[_Options], in_flight: int, budget: float, *, first: bool = False
) -> list[int] | None:
    """Per-block strategy indices minimising the stage's compute time within ``budget``; the
    largest transient buffer is reserved once the choice shows which it is. Strategies that
    another beats on every count are left out of the choice."""
    kept = [t.undominated for t in tables]
    times = [t.ranked_time[k] for t, k in zip(tables, kept, strict=True)]
    memories = [t.memory(in_flight, first)[k] for t, k in zip(tables, kept, strict=True)]
    reserve = 0.0
    for _ in range(3):
        picks = cheapest_assignment(times, memories, budget_bytes=budget - reserve)
        if picks is None:
            return None
        picks = [int(k[p]) for k, p in zip(kept, picks, strict=True)]
        transient = max(float(t.transient_at(first)[p]) for t, p in zip(tables, picks, strict=True))
        if transient <= reserve:
            return picks
        reserve = transient
    return None


def _memory(work: LayerWork, in_flight: int) -> float:
    return (
        work.param_bytes
        + work.grad_bytes
        + work.optimizer_bytes
        + in_flight * work.activation_bytes
    )

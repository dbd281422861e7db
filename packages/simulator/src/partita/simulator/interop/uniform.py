"""One strategy for every block: what Megatron-LM, TorchTitan and DeepSpeed configure.

Those trainers take one tensor-parallel degree, one data-parallel mode and one recompute
setting for the whole model, so a plan reaches them as a :class:`Uniform`, and comes back
from them as one. :meth:`Uniform.to_plan` builds the plan through
:func:`~partita.simulator.uniform_plan.uniform_plan` (blocks split evenly over the stages),
:func:`uniform_of` reads a plan back and says which block breaks uniformity.

Each trainer module lists what it cannot express as :class:`Rule` values; :func:`unmet`
and :func:`nearest_by_rules` turn a rule list into the modules' ``unsupported`` and
``nearest``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from partita.formats import LayerStrategy, ModelDescription, Plan, validate_plan
from partita.formats.common import (
    CKPT_MODES,
    DP_MODES,
    PRECISIONS,
    SCHEDULES,
    SP_MODES,
    Ckpt,
    DpMode,
    Precision,
    Schedule,
    SpMode,
)
from partita.simulator.uniform_plan import uniform_plan

_UNIFORM_PREFIX = re.compile(r"^--uniform(?: '[^']*')?: ")


@dataclass(frozen=True)
class Uniform:
    """One strategy for every block (what Megatron-LM, TorchTitan and DeepSpeed express).

    ``micro_batch_size`` is per data-parallel rank, as ``mb`` in
    :func:`~partita.simulator.uniform_plan.uniform_plan`; ``vocab_sp`` says whether the
    embedding and head split the sequence (Megatron-LM and TorchTitan do whenever their
    tensor parallelism splits it in the blocks).
    """

    world_size: int
    global_batch_size: int
    micro_batch_size: int
    precision: Precision
    tp: int = 1
    pp: int = 1
    sp: SpMode = "none"
    dp: DpMode = "ddp"
    ckpt: Ckpt = "none"
    schedule: Schedule = "1f1b"
    chunks: int = 1
    vocab_sp: bool = False

    def __post_init__(self) -> None:
        for name in ("world_size", "global_batch_size", "micro_batch_size", "tp", "pp", "chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name, choices in (
            ("precision", PRECISIONS),
            ("sp", SP_MODES),
            ("dp", DP_MODES),
            ("ckpt", CKPT_MODES),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}: expected one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.world_size % (self.tp * self.pp):
            raise ValueError(
                f"tp {self.tp} x pp {self.pp} does not divide the {self.world_size} devices"
            )
        per_step = self.micro_batch_size * self.data_parallel
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global batch {self.global_batch_size} is not a multiple of micro-batch "
                f"{self.micro_batch_size} x {self.data_parallel} data-parallel ranks"
            )

    @property
    def data_parallel(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches each data-parallel rank runs per step."""
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel)

    def strategy_text(self) -> str:
        """The one-line strategy :func:`~partita.simulator.uniform_plan.uniform_plan` reads."""
        return (
            f"tp={self.tp},pp={self.pp},sp={self.sp},dp={self.dp},ckpt={self.ckpt},"
            f"mb={self.micro_batch_size},schedule={self.schedule},chunks={self.chunks}"
        )

    def to_plan(self, model: ModelDescription) -> Plan:
        """This strategy on every block of ``model``, validated; ValueError in one line."""
        text = self.strategy_text()
        try:
            plan = uniform_plan(
                text,
                model,
                world_size=self.world_size,
                global_batch=self.global_batch_size,
                precision=self.precision,
            )
            if plan.vocab.sp != self.vocab_sp:
                # uniform_plan's one-liner has no key for it: set it after, and check again.
                plan = dataclasses.replace(
                    plan, vocab=dataclasses.replace(plan.vocab, sp=self.vocab_sp)
                )
                validate_plan(plan, world_size=self.world_size, model=model)
        except ValueError as error:
            detail = _UNIFORM_PREFIX.sub("", " ".join(str(error).split()))
            raise ValueError(f"{text} on {model.name}: {detail}") from None
        return plan


def describe(strategy: LayerStrategy) -> str:
    return f"tp {strategy.tp}, sp {strategy.sp}, dp {strategy.dp}, ckpt {strategy.ckpt}"


def uniform_of(plan: Plan) -> Uniform:
    """The one strategy of ``plan``; ValueError naming the first block that differs from
    block 0, or the vocabulary strategy where no trainer expresses it.

    The pipeline's split of the blocks is not part of it: the trainers split evenly, as
    :meth:`Uniform.to_plan` does.
    """
    if not plan.layers:
        raise ValueError("the plan has no blocks to read a strategy from")
    first = plan.layers[0]
    for index, layer in enumerate(plan.layers):
        if layer != first:
            raise ValueError(
                f"block {index} runs {describe(layer)} but block 0 runs {describe(first)}: "
                "not one strategy for every block"
            )
    vocab = plan.vocab
    # The trainers split the embedding and head with the blocks' tensor parallelism;
    # uniform_plan leaves them whole (vocab tp 1) only where the vocabulary does not divide.
    if vocab.tp not in (1, first.tp):
        raise ValueError(
            f"vocab tp {vocab.tp} differs from the blocks' tp {first.tp}: the trainers split "
            "the embedding and head with the blocks' tensor parallelism"
        )
    if vocab.dp != first.dp:
        raise ValueError(
            f"vocab dp {vocab.dp} differs from the blocks' dp {first.dp}: the trainers run one "
            "data-parallel mode for the whole model"
        )
    return uniform_with(plan, first)


def uniform_with(plan: Plan, strategy: LayerStrategy) -> Uniform:
    """``strategy`` on every block of ``plan``'s pipeline, batch and precision; ValueError
    where its degree does not divide a stage's devices or the micro-batch does not split
    over its data-parallel ranks."""
    stage_devices = plan.world_size // plan.pipeline.degree
    if stage_devices % strategy.tp:
        raise ValueError(
            f"tp {strategy.tp} does not divide the {stage_devices} devices of a pipeline stage"
        )
    data_parallel = stage_devices // strategy.tp
    if plan.micro_batch_size % data_parallel:
        raise ValueError(
            f"micro-batch of {plan.micro_batch_size} samples does not split over "
            f"{data_parallel} data-parallel ranks"
        )
    return Uniform(
        world_size=plan.world_size,
        global_batch_size=plan.global_batch_size,
        micro_batch_size=plan.micro_batch_size // data_parallel,
        precision=plan.precision,
        tp=strategy.tp,
        pp=plan.pipeline.degree,
        sp=strategy.sp,
        dp=strategy.dp,
        ckpt=strategy.ckpt,
        schedule=plan.pipeline.schedule,
        chunks=plan.pipeline.chunks,
        vocab_sp=plan.vocab.sp,
    )


def layer_strategies(plan: Plan) -> list[LayerStrategy]:
    """The distinct block strategies of ``plan``, most blocks first (ties: first seen)."""
    counts = Counter(plan.layers)
    first_seen = {strategy: plan.layers.index(strategy) for strategy in counts}
    return sorted(counts, key=lambda s: (-counts[s], first_seen[s]))


# --------------------------------------------------------------------------- trainer rules


@dataclass(frozen=True)
class Rule:
    """One thing a trainer cannot express: when it applies, the short phrase saying so, and
    the nearest setting the trainer has instead (``fix``), with why (``note``)."""

    applies: Callable[[Uniform], bool]
    what: Callable[[Uniform], str]
    fix: Callable[[Uniform], Uniform]
    note: str


_SHOWN_FIELDS = (
    ("tp", "tp"),
    ("pp", "pp"),
    ("sp", "sp"),
    ("dp", "dp"),
    ("ckpt", "ckpt"),
    ("schedule", "schedule"),
    ("chunks", "chunks"),
    ("vocab_sp", "vocab sp"),
    ("precision", "precision"),
    ("micro_batch_size", "micro-batch"),
)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def change_text(before: Uniform, after: Uniform, note: str) -> str:
    """``"dp zero2 -> zero1 (note)"``: the fields that differ, then why."""
    diffs = [
        f"{label} {_shown(getattr(before, name))} -> {_shown(getattr(after, name))}"
        for name, label in _SHOWN_FIELDS
        if getattr(before, name) != getattr(after, name)
    ]
    assert diffs, f"rule '{note}' changed nothing"
    return f"{', '.join(diffs)} ({note})"


def unmet(rules: Sequence[Rule], u: Uniform) -> list[str]:
    return [rule.what(u) for rule in rules if rule.applies(u)]


def nearest_by_rules(rules: Sequence[Rule], u: Uniform) -> tuple[Uniform, list[str]]:
    """Apply each rule that applies, in order (later rules see earlier fixes)."""
    changes: list[str] = []
    for rule in rules:
        if rule.applies(u):
            fixed = rule.fix(u)
            changes.append(change_text(u, fixed, rule.note))
            u = fixed
    assert not unmet(rules, u), f"nearest left {unmet(rules, u)}"
    return u, changes


def sp_off_without_tp(u: Uniform) -> bool:
    """Sequence parallelism stated at tp 1, where no trainer has anything to split."""
    return u.tp == 1 and u.sp != "none"


def single_stage_schedule(u: Uniform) -> bool:
    """A pipeline schedule other than the plain one stated without a pipeline."""
    return u.pp == 1 and (u.schedule != "1f1b" or u.chunks != 1)


# Every trainer states no schedule without a pipeline.
NO_PIPELINE = Rule(
    applies=single_stage_schedule,
    what=lambda u: f"schedule {u.schedule} without a pipeline",
    fix=lambda u: dataclasses.replace(u, schedule="1f1b", chunks=1),
    note="no pipeline",
)

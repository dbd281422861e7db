"""``partita export-plan`` and ``partita import-plan``: a plan in the trainers teams run today.

Megatron-LM, TorchTitan and DeepSpeed state one strategy for the whole model. A layer-wise
plan is exported as the nearest plan such a trainer expresses: each distinct block strategy
of the plan, applied to every block and moved to what the trainer has (``nearest``), is a
candidate; with profiles (or a ``--cluster`` spec) the fastest candidate that fits the
device is written and its predicted slowdown against the original printed, without them the
strategy most blocks have. Galvatron's strategy files are layer-wise and take the plan as it
is, or say what they cannot hold.

``import-plan`` reads a trainer's arguments or config (or Galvatron's searched strategy) into
a plan file, predicts it where profiles are given and, with ``--search``, searches the same
devices and batch so the current setup and the searched plan are compared in one command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from partita.formats.cli import EXIT_OK, Command

if TYPE_CHECKING:
    from partita.formats import LayerStrategy, ModelDescription, Plan
    from partita.simulator.interop.uniform import Uniform
    from partita.simulator.profile_inputs import Profiles
    from partita.simulator.result import SimulationResult

ONE_STRATEGY_TRAINERS = ("megatron", "torchtitan", "deepspeed")
EXPORT_TARGETS = (*ONE_STRATEGY_TRAINERS, "galvatron")
IMPORT_SOURCES = ("megatron", "torchtitan", "galvatron")


def _trainer(name: str) -> ModuleType:
    from partita.simulator.interop import deepspeed, galvatron, megatron, torchtitan

    modules = {"megatron": megatron, "torchtitan": torchtitan, "deepspeed": deepspeed}
    return {**modules, "galvatron": galvatron}[name]


# --------------------------------------------------------------------------- export-plan


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from partita.simulator.profile_inputs import add_profile_arguments

    parser.add_argument("plan", metavar="PLAN", help="plan file")
    parser.add_argument("--to", required=True, choices=EXPORT_TARGETS, help="target trainer")
    parser.add_argument(
        "--model", required=True, metavar="DESC|PRESET", help="model description or preset"
    )
    parser.add_argument("--out", metavar="FILE", help="write here (default: print)")
    add_profile_arguments(parser)


@dataclass(frozen=True)
class Candidate:
    """A one-strategy plan a trainer expresses, and how it departs from the original."""

    uniform: Uniform
    plan: Plan
    changes: tuple[str, ...]
    blocks: int  # blocks of the original that already had this strategy
    result: SimulationResult | None = None


def _run_export(args: argparse.Namespace) -> int:
    from partita.formats import Plan, load
    from partita.simulator.model_source import load_model_description

    plan = load(args.plan, Plan)
    model = load_model_description(args.model)
    profiles = _optional_profiles(args, model, plan)
    trainer = _trainer(args.to)
    if args.to == "galvatron":
        problems = trainer.unsupported(plan)
        if problems:
            raise ValueError(f"{args.plan}: Galvatron cannot express {'; '.join(problems)}")
        text = json.dumps(trainer.export_strategy(plan, model), indent=2) + "\n"
        _emit(text, args.out, f"Galvatron strategy ({trainer.VERSION})")
        return EXIT_OK
    candidates = _candidates(plan, model, trainer, source=args.plan)
    original = _simulated(plan, model, profiles) if profiles else None
    if profiles is not None:
        candidates = [
            dataclasses.replace(c, result=_simulated(c.plan, model, profiles)) for c in candidates
        ]
    chosen = _choose(candidates, profiles)
    text = trainer.export(chosen.uniform, model)
    _emit(text, args.out, f"{args.to} ({trainer.VERSION})")
    print(f"strategy: {chosen.uniform.strategy_text()}")
    if len(candidates) > 1 or chosen.changes:
        print(
            f"{args.to} states one strategy for every block: exported the {_why(profiles)} of "
            f"{len(candidates)} candidate(s) ({chosen.blocks} of {len(plan.layers)} blocks "
            "had its strategy)"
        )
    for change in chosen.changes:
        print(f"  changed: {change}")
    if profiles is None or original is None or chosen.result is None:
        print("(slowdown not predicted: give --cluster or --hardware with --model-profile)")
        return EXIT_OK
    slower = chosen.result.iteration_time_s / original.iteration_time_s - 1
    print(
        f"predicted from {profiles.origin}: the plan {_ms(original)}, as exported "
        f"{_ms(chosen.result)} ({_signed(slower)} {'slower' if slower >= 0 else 'faster'})"
    )
    device = profiles.hardware.device.memory_bytes
    if max(chosen.result.peak_memory_bytes) > device:
        print(
            f"warning: no candidate fits the {device / 2**30:.1f} GiB device; "
            f"the exported one needs {max(chosen.result.peak_memory_bytes) / 2**30:.1f} GiB"
        )
    return EXIT_OK


def _candidates(
    plan: Plan, model: ModelDescription, trainer: ModuleType, *, source: str
) -> list[Candidate]:
    """Each distinct block strategy on every block, moved to what ``trainer`` expresses."""
    from partita.simulator.interop.uniform import describe, layer_strategies, uniform_of

    try:
        exact = [uniform_of(plan)]
    except ValueError:
        exact = []
    counts = {s: sum(layer == s for layer in plan.layers) for s in layer_strategies(plan)}
    seeds: list[tuple[Uniform, int, tuple[str, ...]]] = []
    if exact:
        seeds.append((exact[0], len(plan.layers), ()))
    else:
        for strategy, blocks in counts.items():
            uniform = _uniform_for(plan, strategy)
            if uniform is not None:
                note = f"every block {describe(strategy)} (the plan is layer-wise)"
                seeds.append((uniform, blocks, (note,)))
    out: dict[str, Candidate] = {}
    refusals: list[str] = []
    for uniform, blocks, notes in seeds:
        try:
            near, changes = trainer.nearest(uniform)
        except ValueError as error:  # e.g. the batch does not split over its ranks
            refusals.append(str(error))
            continue
        key = near.strategy_text()
        if key in out:
            continue
        try:
            near_plan = near.to_plan(model)
        except ValueError as error:  # e.g. a degree the model's heads do not split into
            refusals.append(str(error))
            continue
        split = near_plan.pipeline.stage_num_layers
        if split != plan.pipeline.stage_num_layers:
            was = "/".join(map(str, plan.pipeline.stage_num_layers))
            changes = [*changes, f"blocks per stage {was} -> {'/'.join(map(str, split))}"]
        out[key] = Candidate(near, near_plan, (*notes, *changes), blocks)
    if not out:
        why = f" ({refusals[0]})" if refusals else ""
        raise ValueError(
            f"{source}: no plan of one strategy that {trainer.TRAINER} expresses runs this "
            f"model on {plan.world_size} devices{why}"
        )
    return list(out.values())


def _uniform_for(plan: Plan, strategy: LayerStrategy) -> Uniform | None:
    """``strategy`` on every block of ``plan``'s pipeline and batch; None where the batch
    does not split over its data-parallel ranks."""
    from partita.simulator.interop.uniform import uniform_with

    try:
        return uniform_with(plan, strategy)
    except ValueError:
        return None


def _choose(candidates: Sequence[Candidate], profiles: Profiles | None) -> Candidate:
    """The fastest that fits the device, else the one needing least memory; without a
    prediction, the strategy most blocks have."""
    if profiles is None:
        return max(candidates, key=lambda c: c.blocks)
    device = profiles.hardware.device.memory_bytes

    def peak(c: Candidate) -> float:
        assert c.result is not None
        return max(c.result.peak_memory_bytes)

    fitting = [c for c in candidates if peak(c) <= device]
    if not fitting:
        return min(candidates, key=peak)
    return min(fitting, key=lambda c: c.result.iteration_time_s if c.result else 0.0)


def _why(profiles: Profiles | None) -> str:
    return "fastest that fits" if profiles is not None else "strategy most blocks have"


# --------------------------------------------------------------------------- import-plan


def _add_import_arguments(parser: argparse.ArgumentParser) -> None:
    from partita.simulator.profile_inputs import add_profile_arguments

    parser.add_argument(
        "file",
        metavar="FILE",
        help="Megatron-LM launch script or arguments, TorchTitan TOML job config, or "
        "Galvatron strategy JSON",
    )
    parser.add_argument("--from", dest="source", required=True, choices=IMPORT_SOURCES)
    parser.add_argument(
        "--model", required=True, metavar="DESC|PRESET", help="model description or preset"
    )
    parser.add_argument(
        "--world-size", type=int, metavar="N", help="devices, where the file does not say"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="where the file does not say (Galvatron's name does; default fp32)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the plan")
    parser.add_argument(
        "--search",
        action="store_true",
        help="also search the fastest plan on the same devices and batch and compare",
    )
    parser.add_argument(
        "--memory-gb", type=float, metavar="X", help="--search's budget per device, GiB"
    )
    add_profile_arguments(parser)


def _run_import(args: argparse.Namespace) -> int:
    from partita.formats import Provenance, save
    from partita.formats.summaries import summarize
    from partita.simulator.model_source import load_model_description
    from partita.simulator.report import summary

    if args.world_size is not None and args.world_size < 1:
        raise ValueError(f"--world-size: expected a positive number, got {args.world_size}")
    model = load_model_description(args.model)
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    trainer = _trainer(args.source)
    plan = _imported(args, trainer, text, model)
    plan = dataclasses.replace(
        plan,
        provenance=Provenance(
            model=model.name,
            created_by=f"partita import-plan --from {args.source} {path.name}",
            tools={args.source: trainer.VERSION},
        ),
    )
    # Every input is checked before the plan is written: a refusal leaves --out as it was.
    profiles = _optional_profiles(args, model, plan)
    if profiles is None and args.search:
        raise ValueError("--search needs --cluster, or --hardware with --model-profile")
    saved = save(plan, args.out)
    print(summarize(plan, source=str(saved)))
    if profiles is None:
        print("(not predicted: give --cluster or --hardware with --model-profile)")
        return EXIT_OK
    current = _simulated(plan, model, profiles)
    print()
    print(f"your current setup, predicted from {profiles.origin}:")
    print(summary(current, device_memory_bytes=profiles.hardware.device.memory_bytes))
    if args.search:
        _compare_with_search(args, plan, model, profiles, current)
    return EXIT_OK


def _imported(
    args: argparse.Namespace, trainer: ModuleType, text: str, model: ModelDescription
) -> Plan:
    if args.source == "galvatron":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{args.file}: not JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{args.file}: expected a JSON object of Galvatron's strategy keys")
        plan: Plan = trainer.import_strategy(
            data,
            model,
            world_size=args.world_size,
            source=str(args.file),
            precision=args.precision,
        )
        return plan
    uniform = trainer.import_config(text, world_size=args.world_size, source=str(args.file))
    if args.precision is not None and uniform.precision != args.precision:
        uniform = dataclasses.replace(uniform, precision=args.precision)
    imported: Plan = uniform.to_plan(model)
    return imported


def _compare_with_search(
    args: argparse.Namespace,
    plan: Plan,
    model: ModelDescription,
    profiles: Profiles,
    current: SimulationResult,
) -> None:
    from partita.formats import save
    from partita.simulator.plan_command import search_problem
    from partita.simulator.search.planner import plan_search
    from partita.simulator.search_report import search_summary

    problem = search_problem(
        model=model,
        profiles=profiles,
        world_size=plan.world_size,
        global_batch=plan.global_batch_size,
        memory_gb=args.memory_gb,
        precision=plan.precision,
    )
    print()
    print(
        f"searching {model.name} on {plan.world_size} devices, global batch "
        f"{plan.global_batch_size}, {plan.precision}"
    )
    result = plan_search(problem)
    print(search_summary(result, budget_bytes=problem.memory_bytes))
    best = _simulated(result.best.plan, model, profiles)
    out = Path(args.out)
    searched = save(result.best.plan, out.with_name(f"{out.stem}.searched{out.suffix}"))
    speedup = current.iteration_time_s / best.iteration_time_s
    print()
    print(
        f"searched plan ({searched}) {_ms(best)} against your current setup {_ms(current)}: "
        f"{speedup:.2f}x {'faster' if speedup >= 1 else 'slower'}"
    )


# --------------------------------------------------------------------------- shared


def _optional_profiles(
    args: argparse.Namespace, model: ModelDescription, plan: Plan
) -> Profiles | None:
    from partita.simulator.profile_inputs import load_profiles

    if args.cluster is None and args.hardware is None and args.model_profile is None:
        if args.nodes is not None:
            raise ValueError("--nodes sizes a --cluster spec: give --cluster too")
        return None
    return load_profiles(
        args,
        model,
        world_size=plan.world_size,
        precision=plan.precision,
        precision_source="the plan's precision",
    )


def _simulated(plan: Plan, model: ModelDescription, profiles: Profiles) -> SimulationResult:
    from partita.simulator.simulation import simulate

    return simulate(
        plan, hardware=profiles.hardware, model_profile=profiles.model_profile, model=model
    )


def _emit(text: str, out: str | None, what: str) -> None:
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return
    path = Path(out)
    try:
        path.write_text(text)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write ({error.strerror or error})") from None
    print(f"wrote {what}: {path}")


def _ms(result: SimulationResult) -> str:
    return f"{result.iteration_time_s * 1e3:.1f} ms"


def _signed(fraction: float) -> str:
    return f"{abs(fraction):.1%}"


EXPORT_COMMAND = Command(
    name="export-plan",
    help="write a plan as Megatron-LM arguments, a TorchTitan TOML, a DeepSpeed JSON or a "
    "Galvatron strategy (the nearest one-strategy plan, with its predicted slowdown)",
    add_arguments=_add_export_arguments,
    run=_run_export,
)

IMPORT_COMMAND = Command(
    name="import-plan",
    help="read Megatron-LM arguments, a TorchTitan TOML or a Galvatron strategy into a plan; "
    "predict it and, with --search, compare with the searched plan",
    add_arguments=_add_import_arguments,
    run=_run_import,
)

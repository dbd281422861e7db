"""``partita plan``: search the fastest plan under a memory budget and explain it."""

from __future__ import annotations

import argparse
import dataclasses
from importlib.metadata import version
from typing import TYPE_CHECKING

from partita.formats.cli import EXIT_OK, Command
from partita.formats.common import CKPT_MODES, SCHEDULES
from partita.simulator.search import DEFAULT_RECOMPUTE, DEFAULT_SCHEDULES

if TYPE_CHECKING:
    from partita.formats import ModelDescription
    from partita.formats.common import Precision
    from partita.simulator.profile_inputs import Profiles
    from partita.simulator.search.engine import SearchProblem
    from partita.simulator.search.planner import PlanningResult
    from partita.simulator.search.space import SearchSpace


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from partita.simulator.profile_inputs import add_profile_arguments

    add_profile_arguments(parser)
    parser.add_argument(
        "--model", required=True, metavar="DESC|PRESET", help="model description or preset"
    )
    parser.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="devices (default: all of the --cluster spec's, or of the hardware profile)",
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        metavar="X",
        help="memory budget per device, GiB (default: the device's memory)",
    )
    parser.add_argument("--global-batch", required=True, type=int, metavar="B")
    parser.add_argument(
        "--schedules",
        default=",".join(DEFAULT_SCHEDULES),
        help=f"pipeline schedules to try, comma-separated, of {', '.join(SCHEDULES)} "
        "(default: %(default)s; zb-h1 on request: docs/simulator.md)",
    )
    parser.add_argument(
        "--recompute",
        default=",".join(DEFAULT_RECOMPUTE),
        help=f"activation recompute modes the layers may take, of {', '.join(CKPT_MODES)} "
        "(default: %(default)s; selective-op on request: docs/simulator.md)",
    )
    parser.add_argument(
        "--space",
        default="full",
        help="full, uniform, 3d, nosp, dp or zero3 (restricts the search)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="default: the model profile's, or bf16 on a GPU cluster spec (fp32 on CPU)",
    )
    parser.add_argument(
        "--max-pipeline-degree",
        type=int,
        metavar="P",
        help="largest pipeline degree to consider (1: no pipeline)",
    )
    parser.add_argument(
        "--uniform",
        metavar="STRATEGY",
        help="write this one strategy for every layer instead of searching, e.g. "
        '"tp=8,pp=8,sp=megatron,ckpt=full,mb=1" (keys: docs/simulator.md); with profiles or '
        "--cluster, also predict it",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the plan")
    parser.add_argument(
        "--search-out",
        metavar="FILE",
        help="also write the best plan, runners-up, baselines and what each technique bought "
        "as JSON (partita.search_results; `partita report --search` shows it)",
    )


def _run(args: argparse.Namespace) -> int:
    from partita.formats import HardwareProfile, Provenance, content_hash, load, save
    from partita.formats.summaries import summarize
    from partita.simulator.model_source import load_model_description
    from partita.simulator.profile_inputs import load_profiles
    from partita.simulator.search.planner import plan_search
    from partita.simulator.search.space import SearchSpace
    from partita.simulator.search_report import search_summary

    model = load_model_description(args.model)
    if args.world_size is not None and args.world_size < 1:
        raise ValueError(
            f"--world-size: expected a positive number of devices, got {args.world_size}"
        )
    measured = args.hardware is not None and args.model_profile is not None
    profiles = None
    if args.uniform is None or args.cluster is not None or measured:
        # A search needs them; a uniform plan only to be predicted.
        profiles = load_profiles(args, model, world_size=args.world_size, precision=args.precision)
    # Without --world-size: every device of the cluster spec or the hardware profile.
    world_size = args.world_size or (profiles.hardware.world_size if profiles else None)
    if world_size is None and args.hardware is not None:
        world_size = load(args.hardware, HardwareProfile).world_size
    if world_size is None:
        raise ValueError("--world-size: give the number of devices (or --cluster/--hardware)")
    if args.uniform is not None:
        return _write_uniform(args, model, world_size, profiles)
    assert profiles is not None
    hardware, model_profile = profiles.hardware, profiles.model_profile
    problem = search_problem(
        model=model,
        profiles=profiles,
        world_size=world_size,
        global_batch=args.global_batch,
        memory_gb=args.memory_gb,
        precision=args.precision,
        space=SearchSpace(
            name=args.space,
            schedules=_listed(args.schedules, "--schedules"),
            max_pipeline_degree=args.max_pipeline_degree,
            recompute=_listed(args.recompute, "--recompute"),
        ),
    )
    print(f"searching {model.name} on {world_size} devices from {profiles.origin}")
    result = plan_search(problem)
    provenance = Provenance(
        model=model.name,
        model_description_sha256=content_hash(model),
        hardware_profile_sha256=content_hash(hardware),
        model_profile_sha256=content_hash(model_profile),
        tools=_tools(),
        created_by=f"partita plan --space {args.space}"
        + (f" --cluster {args.cluster}" if args.cluster else ""),
    )
    plan = dataclasses.replace(result.best.plan, provenance=provenance)
    path = save(plan, args.out)
    print(summarize(plan, source=str(path)))
    print()
    print(search_summary(result, budget_bytes=problem.memory_bytes))
    if args.search_out:
        _write_search_results(args.search_out, result, budget_bytes=problem.memory_bytes)
    return EXIT_OK


def _write_search_results(out: str, result: PlanningResult, *, budget_bytes: float) -> None:
    import json
    from pathlib import Path

    from partita.simulator.html_report_inputs import search_results_document

    document = search_results_document(result, budget_bytes=budget_bytes)
    try:
        Path(out).write_text(json.dumps(document, indent=2) + "\n")
    except OSError as error:
        raise ValueError(f"--search-out {out}: cannot write ({error.strerror or error})") from None
    print(f"search results: {out}")


def search_problem(
    *,
    model: ModelDescription,
    profiles: Profiles,
    world_size: int,
    global_batch: int,
    memory_gb: float | None,
    precision: Precision | None,
    space: SearchSpace | None = None,
) -> SearchProblem:
    """The search ``partita plan`` runs (also ``import-plan --search``): the device's memory
    unless ``memory_gb`` says less or more, the profile's precision unless given."""
    from partita.simulator.search.engine import SearchProblem
    from partita.simulator.search.space import SearchSpace

    hardware = profiles.hardware
    memory_bytes = memory_gb * 2**30 if memory_gb is not None else hardware.device.memory_bytes
    return SearchProblem(
        hardware=hardware,
        model_profile=profiles.model_profile,
        model=model,
        world_size=world_size,
        memory_bytes=memory_bytes,
        global_batch=global_batch,
        space=space or SearchSpace(name="full"),
        precision=precision or profiles.model_profile.dtype,
    )


def _write_uniform(
    args: argparse.Namespace,
    model: ModelDescription,
    world_size: int,
    profiles: Profiles | None,
) -> int:
    """``--uniform``: the plan written as given, then predicted where profiles allow."""
    from partita.formats import Provenance, content_hash, save
    from partita.formats.summaries import summarize
    from partita.simulator.report import summary
    from partita.simulator.simulation import simulate
    from partita.simulator.uniform_plan import uniform_plan

    precision = args.precision or (profiles.model_profile.dtype if profiles else "fp32")
    plan = uniform_plan(
        args.uniform,
        model,
        world_size=world_size,
        global_batch=args.global_batch,
        precision=precision,
    )
    provenance = Provenance(
        model=model.name,
        model_description_sha256=content_hash(model),
        hardware_profile_sha256=content_hash(profiles.hardware) if profiles else None,
        model_profile_sha256=content_hash(profiles.model_profile) if profiles else None,
        tools=_tools(),
        created_by=f"partita plan --uniform {args.uniform}",
    )
    plan = dataclasses.replace(plan, provenance=provenance)
    path = save(plan, args.out)
    print(summarize(plan, source=str(path)))
    if profiles is None:
        print("(not predicted: give --cluster or --hardware with --model-profile)")
        return EXIT_OK
    result = simulate(
        plan, hardware=profiles.hardware, model_profile=profiles.model_profile, model=model
    )
    print()
    print(f"predicted from {profiles.origin}:")
    print(summary(result, device_memory_bytes=profiles.hardware.device.memory_bytes))
    return EXIT_OK


def _listed(text: str, option: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise ValueError(f"{option}: expected a comma-separated list, got {text!r}")
    return items


def _tools() -> dict[str, str]:
    return {
        "partita-simulator": version("partita-simulator"),
        "partita-formats": version("partita-formats"),
    }


COMMAND = Command(
    name="plan",
    help="search the fastest layer-wise hybrid-parallel plan under a memory budget",
    add_arguments=_add_arguments,
    run=_run,
)

"""``partita plan``: search the fastest plan under a memory budget and explain it."""

from __future__ import annotations

import argparse
import dataclasses
from importlib.metadata import version

from partita.formats.cli import EXIT_OK, Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from partita.simulator.profile_inputs import add_profile_arguments

    add_profile_arguments(parser)
    parser.add_argument(
        "--model", required=True, metavar="DESC|PRESET", help="model description or preset"
    )
    parser.add_argument("--world-size", required=True, type=int, metavar="N")
    parser.add_argument(
        "--memory-gb",
        type=float,
        metavar="X",
        help="memory budget per device, GiB (default: the device's memory)",
    )
    parser.add_argument("--global-batch", required=True, type=int, metavar="B")
    parser.add_argument("--schedules", default="gpipe,1f1b", help="pipeline schedules to try")
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
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the plan")


def _run(args: argparse.Namespace) -> int:
    from partita.formats import Provenance, content_hash, save
    from partita.formats.summaries import summarize
    from partita.simulator.model_source import load_model_description
    from partita.simulator.profile_inputs import load_profiles
    from partita.simulator.search.engine import SearchProblem
    from partita.simulator.search.planner import plan_search
    from partita.simulator.search.space import SearchSpace
    from partita.simulator.search_report import search_summary

    if args.world_size < 1:
        raise ValueError(
            f"--world-size: expected a positive number of devices, got {args.world_size}"
        )
    model = load_model_description(args.model)
    profiles = load_profiles(args, model, world_size=args.world_size, precision=args.precision)
    hardware, model_profile = profiles.hardware, profiles.model_profile
    memory_bytes = (
        args.memory_gb * 2**30 if args.memory_gb is not None else hardware.device.memory_bytes
    )
    problem = SearchProblem(
        hardware=hardware,
        model_profile=model_profile,
        model=model,
        world_size=args.world_size,
        memory_bytes=memory_bytes,
        global_batch=args.global_batch,
        space=SearchSpace(
            name=args.space,
            schedules=tuple(args.schedules.split(",")),
            max_pipeline_degree=args.max_pipeline_degree,
        ),
        precision=args.precision or model_profile.dtype,
    )
    print(f"searching {model.name} on {args.world_size} devices from {profiles.origin}")
    result = plan_search(problem)
    provenance = Provenance(
        model=model.name,
        model_description_sha256=content_hash(model),
        hardware_profile_sha256=content_hash(hardware),
        model_profile_sha256=content_hash(model_profile),
        tools={
            "partita-simulator": version("partita-simulator"),
            "partita-formats": version("partita-formats"),
        },
        created_by=f"partita plan --space {args.space}"
        + (f" --cluster {args.cluster}" if args.cluster else ""),
    )
    plan = dataclasses.replace(result.best.plan, provenance=provenance)
    path = save(plan, args.out)
    print(summarize(plan, source=str(path)))
    print()
    print(search_summary(result, budget_bytes=problem.memory_bytes))
    return EXIT_OK


COMMAND = Command(
    name="plan",
    help="search the fastest layer-wise hybrid-parallel plan under a memory budget",
    add_arguments=_add_arguments,
    run=_run,
)

"""``partita plan``: search the fastest plan under a memory budget and explain it."""

from __future__ import annotations

import argparse
import dataclasses
from importlib.metadata import version

from partita.formats.cli import EXIT_OK, Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hardware", required=True, metavar="H", help="hardware profile")
    parser.add_argument("--model-profile", required=True, metavar="M", help="model profile")
    parser.add_argument("--model", required=True, metavar="DESC", help="model description")
    parser.add_argument("--world-size", required=True, type=int, metavar="N")
    parser.add_argument(
        "--memory-gb", required=True, type=float, metavar="X", help="memory budget per device, GiB"
    )
    parser.add_argument("--global-batch", required=True, type=int, metavar="B")
    parser.add_argument("--schedules", default="gpipe,1f1b", help="pipeline schedules to try")
    parser.add_argument(
        "--space",
        default="full",
        help="full, uniform, 3d, nosp, dp or zero3 (restricts the search)",
    )
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument(
        "--max-pipeline-degree",
        type=int,
        metavar="P",
        help="largest pipeline degree to consider (1: no pipeline)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the plan")


def _run(args: argparse.Namespace) -> int:
    from partita.formats import (
        HardwareProfile,
        ModelDescription,
        ModelProfile,
        Provenance,
        content_hash,
        load,
        save,
    )
    from partita.formats.summaries import summarize
    from partita.simulator.search.engine import SearchProblem
    from partita.simulator.search.planner import plan_search
    from partita.simulator.search.space import SearchSpace
    from partita.simulator.search_report import search_summary

    model = load(args.model, ModelDescription)
    hardware = load(args.hardware, HardwareProfile)
    model_profile = load(args.model_profile, ModelProfile)
    problem = SearchProblem(
        hardware=hardware,
        model_profile=model_profile,
        model=model,
        world_size=args.world_size,
        memory_bytes=args.memory_gb * 2**30,
        global_batch=args.global_batch,
        space=SearchSpace(
            name=args.space,
            schedules=tuple(args.schedules.split(",")),
            max_pipeline_degree=args.max_pipeline_degree,
        ),
        precision=args.precision,
    )
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
        created_by=f"partita plan --space {args.space}",
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

"""``partita report``: one self-contained interactive HTML page about a plan or a trained run.

    partita report PLAN_OR_RUN [--run RUN_DIR ...] [--search FILE ...]
                   (--hardware H --model-profile M | --cluster NAME [--nodes N])
                   [--model DESC|PRESET] [--title TEXT] --out report.html

``PLAN_OR_RUN`` is a plan file, or a run folder of ``partita train`` (its ``plan.json``,
``run_report.json`` and ``steps.jsonl``), whose plan is simulated and set against what it
measured. ``--run`` adds other trained runs to compare (the demo's baseline). ``--search``
takes the candidates ``partita plan`` priced (``partita.search_results``) or plan files.
Without ``--model``, the model the run or the plan names is used when it is a preset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partita.formats.cli import EXIT_OK, Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="PLAN_OR_RUN",
        help="plan file, or run folder of partita train (plan.json, run_report.json, steps.jsonl)",
    )
    from partita.simulator.profile_inputs import add_profile_arguments

    add_profile_arguments(parser)
    parser.add_argument(
        "--model",
        metavar="DESC|PRESET",
        help="model description or preset (default: the preset the run or the plan names)",
    )
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="another run folder of partita train to compare with (repeatable)",
    )
    parser.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="FILE",
        help="search results of partita plan (partita.search_results JSON) or plan files with "
        "predictions, shown as the runners-up and baselines (repeatable)",
    )
    parser.add_argument("--title", metavar="TEXT", help="page title")
    parser.add_argument("--out", required=True, metavar="HTML", help="where to write the report")


def _run(args: argparse.Namespace) -> int:
    from partita.formats import Plan, load
    from partita.simulator.html_report import ReportInputs, write_report
    from partita.simulator.html_report_inputs import load_run, load_search
    from partita.simulator.model_source import load_model_description
    from partita.simulator.profile_inputs import load_profiles

    source = Path(args.source)
    runs = []
    if source.is_dir() or source.name == "run_report.json":
        primary = load_run(source)
        runs.append(primary)
        plan, plan_source = primary.plan, str(primary.folder / "plan.json")
        named_model, named_in = primary.report.model, str(primary.folder / "run_report.json")
    elif source.is_file():
        plan, plan_source = load(source, Plan), str(source)
        named_model, named_in = plan.provenance.model, plan_source
    else:
        raise ValueError(f"{source}: no such plan file or run folder")
    runs += [load_run(folder) for folder in args.run]
    model = load_model_description(_model_source(args.model, named_model, named_in))
    profiles = load_profiles(
        args,
        model,
        world_size=plan.world_size,
        precision=plan.precision,
        precision_source=f"{plan_source}: precision",
    )
    search = load_search(args.search) if args.search else None
    inputs = ReportInputs(
        plan=plan,
        plan_source=plan_source,
        model=model,
        hardware=profiles.hardware,
        model_profile=profiles.model_profile,
        profiles_origin=profiles.origin,
        runs=tuple(runs),
        search=search,
        title=args.title or "",
    )
    path, report = write_report(inputs, args.out)
    size = path.stat().st_size
    print(f"report: {path} ({report.figures} figures, {size / 2**20:.1f} MiB, opens offline)")
    return EXIT_OK


def _model_source(given: str | None, named: str, where: str) -> str:
    """``--model``, else the preset the run or the plan names (a directory it names is a
    Hugging Face checkpoint, which the simulator cannot describe without torch)."""
    if given is not None:
        return given
    from partita.simulator.model_source import preset_names

    if named in preset_names():
        return named
    what = f"names model {named!r}, not a preset" if named else "names no model"
    raise ValueError(
        f"{where} {what}: give --model DESC (partita describe {named or 'MODEL'} --out DESC)"
    )


COMMAND = Command(
    name="report",
    help="write one self-contained interactive HTML report of a plan or a trained run",
    add_arguments=_add_arguments,
    run=_run,
)

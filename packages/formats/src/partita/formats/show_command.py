"""``partita show FILE``: validate any Partita file and print a readable summary."""

from __future__ import annotations

import argparse

from partita.formats.cli import EXIT_OK, Command
from partita.formats.codec import load
from partita.formats.model_description import ModelDescription
from partita.formats.plan import Plan
from partita.formats.plan_checks import validate_plan
from partita.formats.summaries import summarize


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="any Partita file (profile, plan, ...)")
    parser.add_argument(
        "--model",
        metavar="DESC",
        help="for a plan: also check it against this model description file",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="for a plan: also check that it is for N devices",
    )


def _run(args: argparse.Namespace) -> int:
    obj = load(args.file)
    if args.model is not None or args.world_size is not None:
        if not isinstance(obj, Plan):
            raise ValueError(f"{args.file}: --model and --world-size apply to plans only")
        model = load(args.model, ModelDescription) if args.model is not None else None
        try:
            validate_plan(obj, world_size=args.world_size, model=model)
        except ValueError as error:
            raise ValueError(f"{args.file}: {error}") from None
    print(summarize(obj, source=args.file))
    return EXIT_OK


COMMAND = Command(
    name="show",
    help="validate a Partita file and print a readable summary",
    add_arguments=_add_arguments,
    run=_run,
)

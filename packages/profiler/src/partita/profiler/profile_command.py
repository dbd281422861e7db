"""``partita profile {hardware,model,import-galvatron}``: measure, or import, profile files."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from partita.formats.cli import Command

_SUBCOMMANDS = {
    "hardware": (
        "partita.profiler.hardware_command",
        "measure collectives, overlap, memory, matmul",
    ),
    "model": ("partita.profiler.model_command", "measure per-layer time and memory of a model"),
    "import-galvatron": (
        "partita.profiler.galvatron_command",
        "convert Galvatron's profile JSON files (torch-free)",
    ),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    import importlib

    sub = parser.add_subparsers(dest="profile_kind", required=True, metavar="KIND")
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        # The modules keep torch imports inside their ``run``, so --help stays fast.
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(child)
        child.set_defaults(profile_run=module.run)


def _run(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int] = args.profile_run
    return run(args)


COMMAND = Command(
    name="profile",
    help="measure this machine and a model into profile files, or import Galvatron's",
    add_arguments=_add_arguments,
    run=_run,
)

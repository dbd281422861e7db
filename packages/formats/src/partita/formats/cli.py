"""The ``partita`` command line: one entry point, subcommands from installed packages.

Each Partita package registers its subcommands under the ``partita.commands`` entry-point
group as a :class:`Command`. User mistakes (``ValueError``, which includes ``FormatError``)
end with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NoReturn

ENTRY_POINT_GROUP = "partita.commands"
EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE (128 + 13)


@dataclass(frozen=True)
class Command:
    """A subcommand: heavy imports belong inside ``run`` so that ``--help`` stays fast."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def discover_commands() -> tuple[list[Command], list[str]]:
    """The installed subcommands, and one warning per entry point that failed to load."""
    commands: dict[str, Command] = {}
    warnings = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            command = entry.load()
        except Exception as error:  # a broken plugin must not take the whole CLI down
            warnings.append(f"cannot load subcommand {entry.name!r} ({entry.value}): {error}")
            continue
        if not isinstance(command, Command):
            warnings.append(f"entry point {entry.name!r} ({entry.value}) is not a Command")
            continue
        commands.setdefault(command.name, command)
    return sorted(commands.values(), key=lambda c: c.name), warnings


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    from partita.formats import __version__

    parser = _OneLineParser(
        prog="partita",
        description="Partita: profile a cluster and a model, search the fastest hybrid-parallel "
        "plan, simulate it and train with it. Subcommands come from the installed packages.",
    )
    parser.add_argument("--version", action="version", version=f"partita-formats {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_OneLineParser
    )
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    commands, warnings = discover_commands()
    for warning in warnings:
        print(f"partita: warning: {warning}", file=sys.stderr)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        code = command.run(args)
        sys.stdout.flush()  # a reader gone shows here, in the handler below, not at exit
        return code
    except ValueError as error:
        print(f"partita {command.name}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"partita {command.name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout left (``partita simulate ... | head``): what it read was all it
        # wanted. Point stdout at /dev/null so that flushing it at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    # Run as ``python -m partita.formats.cli`` this file is ``__main__``, a second copy whose
    # ``Command`` class is not the one the installed commands import: use the real module.
    from partita.formats.cli import main as _main

    raise SystemExit(_main())

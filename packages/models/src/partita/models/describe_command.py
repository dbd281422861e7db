"""``partita describe PRESET|HF_DIR --seq S --out model.json``: write a model description."""

from __future__ import annotations

import argparse

from partita.formats import save
from partita.formats.cli import EXIT_OK, Command
from partita.formats.summaries import summarize


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", metavar="PRESET|HF_DIR", help="preset name or local HF dir"
    )
    parser.add_argument(
        "--seq", type=int, metavar="S", help="sequence length (default: the model's)"
    )
    parser.add_argument("--name", help="name recorded in the description (default: the model)")
    parser.add_argument("--out", metavar="FILE", help="write the description here")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")


def _run(args: argparse.Namespace) -> int:
    from partita.models.api import describe_model
    from partita.models.presets import all_presets

    if args.list:
        for name, config in sorted(all_presets().items()):
            print(
                f"{name:16} {describe_model(name).params / 1e6:10.1f} M parameters  "
                f"({config['model_type']})"
            )
        return EXIT_OK
    if args.model is None:
        raise ValueError("give a preset name or a Hugging Face directory (see --list)")
    description = describe_model(args.model, seq_len=args.seq, name=args.name)
    if args.out:
        path = save(description, args.out)
        print(f"wrote {path}")
    print(summarize(description))
    return EXIT_OK


COMMAND = Command(
    name="describe",
    help="write the torch-free description (layers, parameters, FLOPs) of a model",
    add_arguments=_add_arguments,
    run=_run,
)

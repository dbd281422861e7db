"""``partita export``: a training checkpoint as a Hugging Face model directory.

Runs in one process, whatever plan and world size wrote the checkpoint: the parameters are
stored whole-tensor by name (``sharded_state``), so they read straight into the one-process
model, which ``partita.models.hf_io`` writes through transformers' own ``save_pretrained``.
The checkpoint is verified against its manifest first; from a run folder, a damaged newest
checkpoint is skipped for the newest intact one, saying so.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from partita.formats.cli import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_DIR|CHECKPOINT_DIR",
        help="a run folder (its newest intact checkpoint) or one checkpoint folder",
    )
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="folder to write")


@dataclass(frozen=True)
class Exported:
    out: Path  # the Hugging Face directory written
    checkpoint: Path  # the checkpoint folder it came from
    step: int  # steps done in that checkpoint


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def export_hf(
    source: str | Path, out: str | Path, *, log: Callable[[str], None] = _to_stderr
) -> Exported:
    """Write the model of a checkpoint (or a run's newest intact one) to ``out`` as an HF
    directory; ``log`` gets a line for each damaged checkpoint skipped."""
    from partita.executor.checkpoint import load_checkpoint, read_manifest
    from partita.executor.checkpoint_checks import export_checkpoint
    from partita.executor.sharded_state import TrainState, canonical_names
    from partita.models.api import build_model
    from partita.models.hf_io import save_hf_checkpoint

    folder = export_checkpoint(source, log=log)
    manifest = read_manifest(folder)
    model = build_model(manifest.model)
    state = TrainState(module=model, shard_dims={}, canonical=canonical_names(model), optimizers=())
    with warnings.catch_warnings():  # DCP warns that no process group exists: none is needed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_checkpoint(folder, state, restore_rng=False, no_dist=True)
    return Exported(save_hf_checkpoint(model, out), folder, manifest.step)


def _run(args: argparse.Namespace) -> int:
    from partita.executor.checkpoint import CHECKPOINTS

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} exists and is not empty")
    done = export_hf(args.source, out)
    run = done.checkpoint.parent.parent
    of_run = f" of {run}" if done.checkpoint.parent.name == CHECKPOINTS else ""
    print(
        f"partita export: wrote {done.out} from step {done.step}{of_run} "
        f"(checkpoint {done.checkpoint})",
        file=sys.stderr,
    )
    return 0


COMMAND = Command(
    name="export",
    help="write a training checkpoint as a Hugging Face model directory",
    add_arguments=_add_arguments,
    run=_run,
)

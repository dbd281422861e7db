"""``partita export``: a training checkpoint as a Hugging Face model directory.

Runs in one process, whatever plan and world size wrote the checkpoint: the parameters are
stored whole-tensor by name (``sharded_state``), so they read straight into the one-process
model, which ``partita.models.hf_io`` writes through transformers' own ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from partita.formats.cli import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_DIR|CHECKPOINT_DIR",
        help="a run folder (its latest checkpoint) or one checkpoint folder",
    )
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="folder to write")


def checkpoint_of(source: str | Path) -> Path:
    """``source`` itself if it is a checkpoint, else the latest checkpoint of a run folder."""
    from partita.executor.checkpoint import MANIFEST, latest_checkpoint

    source = Path(source)
    if (source / MANIFEST).is_file():
        return source
    latest = latest_checkpoint(source)
    if latest is None:
        raise ValueError(f"{source}: neither a checkpoint nor a run folder with checkpoints")
    return latest


def export_hf(source: str | Path, out: str | Path) -> Path:
    """Write the model of a checkpoint (or a run's latest) to ``out`` as an HF directory."""
    from partita.executor.checkpoint import load_checkpoint, read_manifest
    from partita.executor.sharded_state import TrainState, canonical_names
    from partita.models.api import build_model
    from partita.models.hf_io import save_hf_checkpoint

    folder = checkpoint_of(source)
    manifest = read_manifest(folder)
    model = build_model(manifest.model)
    state = TrainState(module=model, shard_dims={}, canonical=canonical_names(model), optimizers=())
    with warnings.catch_warnings():  # DCP warns that no process group exists: none is needed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        load_checkpoint(folder, state, restore_rng=False, no_dist=True)
    return save_hf_checkpoint(model, out)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} exists and is not empty")
    written = export_hf(args.source, out)
    print(f"partita export: wrote {written}", file=sys.stderr)
    return 0


COMMAND = Command(
    name="export",
    help="write a training checkpoint as a Hugging Face model directory",
    add_arguments=_add_arguments,
    run=_run,
)

"""Checks before a checkpoint is read: which one of a run to take, and whether it fits.

A damaged checkpoint (a file cut short or changed since the save, its manifest gone) is
skipped for the newest intact one, saying why, so ``partita train --resume`` and ``partita
export`` fall back instead of failing inside the ranks. Whether a checkpoint fits the model
is checked from DCP's metadata against the model built on the meta device, in one process
and before any rank starts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from partita.executor.checkpoint import (
    CHECKPOINTS,
    MANIFEST,
    check_stored_parameters,
    is_step_folder,
    read_dcp_metadata,
    read_manifest,
    step_folders,
    verify_checkpoint,
)
from partita.executor.sharded_state import (
    MODEL_PREFIX,
    TrainState,
    canonical_names,
    parameter_pieces,
)
from partita.formats import FormatError
from partita.models.api import ModelSource, resolve_config
from partita.models.init import build_empty

Log = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def intact_checkpoint(
    run_dir: str | Path, *, checksums: bool = True
) -> tuple[Path | None, list[str]]:
    """The newest checkpoint of a run that :func:`verify_checkpoint` passes (None if there is
    none), and one line for each newer one skipped: ``checkpoint step-N is damaged (...)``."""
    skipped = []
    for folder in reversed(step_folders(run_dir)):
        try:
            verify_checkpoint(folder, checksums=checksums)
        except FormatError as error:
            if error.path == "version" and "newer" in error.message:
                # Written by a newer Partita, not damaged: falling back would drop its steps.
                raise
            skipped.append(f"checkpoint {folder.name} is damaged ({error})")
            continue
        except ValueError as error:
            skipped.append(f"checkpoint {folder.name} is damaged ({error})")
            continue
        return folder, skipped
    return None, skipped


def resume_checkpoint(
    run_dir: str | Path, *, log: Log = _to_stderr, checksums: bool = True
) -> Path | None:
    """The checkpoint ``partita train --resume`` continues from: the newest intact one, each
    damaged newer one logged as ``partita train: checkpoint step-N is damaged (FILE: CAUSE);
    resuming from step-M``. None when the run has no ``step-N`` folder at all; a one-line
    ``ValueError`` naming the damaged files when none is intact."""
    folder, skipped = intact_checkpoint(run_dir, checksums=checksums)
    if folder is None and skipped:
        raise ValueError(
            f"{Path(run_dir) / CHECKPOINTS}: no intact checkpoint to resume from: "
            + "; ".join(skipped)
        )
    for reason in skipped:
        assert folder is not None
        log(f"partita train: {reason}; resuming from {folder.name}")
    return folder


def export_checkpoint(source: str | Path, *, log: Log = _to_stderr) -> Path:
    """The checkpoint ``partita export`` reads: ``source`` itself if it is a checkpoint folder
    (verified, no fallback: the user chose it), else the newest intact one of a run folder,
    each damaged newer one logged as ``partita export: checkpoint step-N is damaged (...);
    exporting step-M``."""
    source = Path(source)
    if (source / MANIFEST).is_file() or _looks_like_step_folder(source):
        verify_checkpoint(source)
        return source
    folder, skipped = intact_checkpoint(source)
    if folder is None:
        if skipped:
            raise ValueError(
                f"{source / CHECKPOINTS}: no intact checkpoint to export: " + "; ".join(skipped)
            )
        raise ValueError(f"{source}: neither a checkpoint nor a run folder with checkpoints")
    for reason in skipped:
        log(f"partita export: {reason}; exporting {folder.name}")
    return folder


def _looks_like_step_folder(path: Path) -> bool:
    # A step-N folder that lost its manifest is a damaged checkpoint, not a run folder.
    return path.is_dir() and is_step_folder(path) and not (path / CHECKPOINTS).is_dir()


def check_checkpoint_fits(folder: str | Path, model_source: ModelSource) -> None:
    """A one-line ``ValueError`` unless the checkpoint holds exactly the parameters of
    ``model_source``, each with its whole shape. Reads DCP's metadata only and builds the model
    on the meta device: one process, no process group, no parameter memory."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    stored = read_dcp_metadata(folder).state_dict_metadata
    model = build_empty(resolve_config(model_source))
    state = TrainState(module=model, shard_dims={}, canonical=canonical_names(model), optimizers=())
    pieces = parameter_pieces(state)
    check_stored_parameters(folder, pieces, stored, manifest.model)
    extra = sorted(k for k in stored if k.startswith(MODEL_PREFIX) and k not in pieces)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ValueError(
            f"{folder}: the checkpoint of {manifest.model!r} has parameter "
            f"{extra[0].removeprefix(MODEL_PREFIX)}{more}, which this model has not"
        )


__all__ = [
    "check_checkpoint_fits",
    "export_checkpoint",
    "intact_checkpoint",
    "resume_checkpoint",
]

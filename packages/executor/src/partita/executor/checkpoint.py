"""Training checkpoints: written atomically, read back under any plan and world size.

A run folder keeps its checkpoints as ::

    RUN_DIR/checkpoints/step-00000012/
        .metadata, __<rank>_0.distcp   torch.distributed.checkpoint: parameters and AdamW
                                       states in whole-tensor coordinates (``sharded_state``),
                                       each rank's random generator states
        plan.json                      the plan it was saved under
        manifest.json                  ``partita.checkpoint``: steps done, data position,
                                       settings, losses so far; written last

Every rank writes its pieces into ``.step-00000012.partial``; once all of them are written
(DCP's save ends when the coordinator has the metadata), rank 0 adds the plan and manifest
and renames the folder. A rename is atomic, so a folder named ``step-*`` is always complete,
and a crash in the middle of a save leaves the previous checkpoint as the latest one. The
folder must be on a file system every rank sees (one machine, or a shared one).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter, StorageWriter
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from partita.executor.piece_planners import PieceLoadPlanner, PieceSavePlanner
from partita.executor.sharded_state import (
    OPTIMIZER_PREFIX,
    TrainState,
    create_adam_states,
    optimizer_pieces,
    parameter_pieces,
)
from partita.formats import CheckpointManifest, Plan, load, save

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
PLAN = "plan.json"
_STEP_FOLDER = re.compile(r"step-(\d+)")
RNG_KEY = "rng/{rank}"

WriterFactory = Callable[[Path], StorageWriter]


def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_FOLDER.fullmatch(path.name)) and (path / MANIFEST).is_file()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def read_manifest(folder: str | Path) -> CheckpointManifest:
    """The manifest of a checkpoint folder (a one-line ``FormatError`` if it is not one)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: not a checkpoint (no {MANIFEST})")
    return load(path, CheckpointManifest)


def save_checkpoint(
    state: TrainState,
    *,
    run_dir: str | Path,
    manifest: CheckpointManifest,
    plan: Plan,
    keep: int = 2,
    make_writer: WriterFactory = FileSystemWriter,
) -> Path:
    """Write a checkpoint after ``manifest.step`` steps (collective: every rank calls it) and
    keep the ``keep`` newest; returns its folder."""
    final = checkpoint_folder(run_dir, manifest.step)
    partial = final.with_name(f".{final.name}.partial")
    rank = dist.get_rank(state.group)
    if rank == 0:  # what a crash left behind, or an earlier try at this step
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier(group=state.group)
    pieces = {**parameter_pieces(state), **optimizer_pieces(state)}
    objects = {RNG_KEY.format(rank=rank): _rng_state()}
    dcp.save(
        {**{k: p.tensor for k, p in pieces.items()}, **objects},
        storage_writer=make_writer(partial),
        planner=PieceSavePlanner(pieces, objects),
        process_group=state.group,
    )
    if rank == 0:
        save(plan, partial / PLAN)
        save(manifest, partial / MANIFEST)
        _replace_folder(partial, final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    folder: str | Path, state: TrainState, *, restore_rng: bool = True, no_dist: bool = False
) -> CheckpointManifest:
    """Read a checkpoint into ``state`` under its own plan (collective unless ``no_dist``).

    Parameters must all be there with their whole shapes; the optimizer states are read
    where the checkpoint has them (created first, as AdamW's first step would); this rank's
    random generators are restored when the checkpoint was saved by as many ranks.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        reader = FileSystemReader(folder)
        stored = reader.read_metadata().state_dict_metadata
    except Exception as error:  # DCP raises whatever its file reading met
        raise ValueError(f"{folder}: unreadable checkpoint metadata: {error}") from None
    pieces = parameter_pieces(state)
    _check_parameters(folder, pieces, stored, manifest.model)
    create_adam_states(state, (k for k in stored if k.startswith(OPTIMIZER_PREFIX)))
    pieces.update({k: p for k, p in optimizer_pieces(state).items() if k in stored})
    rank = 0 if no_dist else dist.get_rank(state.group)
    world = 1 if no_dist else dist.get_world_size(state.group)
    rng_key = RNG_KEY.format(rank=rank)
    wanted = (rng_key,) if restore_rng and manifest.rng_ranks == world else ()
    planner = PieceLoadPlanner(pieces, wanted)
    dcp.load(
        {k: p.tensor for k, p in pieces.items()},
        storage_reader=reader,
        planner=planner,
        no_dist=no_dist,
        process_group=None if no_dist else state.group,
    )
    if wanted:
        _set_rng_state(planner.objects[rng_key])
    return manifest


def _check_parameters(folder: Path, pieces: dict, stored: dict, model: str) -> None:
    for fqn, piece in pieces.items():
        name = fqn.split("/", 1)[1]
        md = stored.get(fqn)
        if not isinstance(md, TensorStorageMetadata):
            raise ValueError(f"{folder}: the checkpoint of {model!r} has no parameter {name}")
        if tuple(md.size) != piece.whole_shape:
            raise ValueError(
                f"{folder}: parameter {name} has shape {tuple(md.size)} in the checkpoint of "
                f"{model!r} but {piece.whole_shape} in this model"
            )


def _rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _replace_folder(partial: Path, final: Path) -> None:
    """Rename ``partial`` to ``final`` (replacing an older folder of that name), durably."""
    _fsync_dir(partial)
    if final.exists():
        stale = final.with_name(f".{final.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(partial, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "CHECKPOINTS",
    "checkpoint_folder",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "read_manifest",
    "save_checkpoint",
]

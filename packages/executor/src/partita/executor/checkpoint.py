"""Training checkpoints: written atomically, read back under any plan and world size.

A run folder keeps its checkpoints as ::

    RUN_DIR/checkpoints/step-00000012/
        .metadata, __<rank>_0.distcp   torch.distributed.checkpoint: parameters and AdamW
                                       states in whole-tensor coordinates (``sharded_state``),
                                       each rank's random generator states
        plan.json                      the plan it was saved under
        manifest.json                  ``partita.checkpoint``: steps done, data position,
                                       settings, losses so far, and every other file's size
                                       and SHA-256; written last

Every rank writes its pieces into ``.step-00000012.partial`` and hashes the files it wrote
(in its page cache still, and all ranks at once: rank 0 alone would read the whole
checkpoint back); once all of them are written (DCP's save ends when the coordinator has the
metadata), rank 0 adds the plan and manifest and renames the folder. A rename is atomic, so a
folder named ``step-*`` was complete when written, and a crash in the middle of a save leaves
the previous checkpoint as the latest one. What happens to the files later (a disk filling
up, a copy cut short) :func:`verify_checkpoint` finds against the manifest. The folder must be
on a file system every rank sees (one machine, or a shared one).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter, StorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from partita.executor.piece_planners import PieceLoadPlanner, PieceSavePlanner
from partita.executor.sharded_state import (
    OPTIMIZER_PREFIX,
    Piece,
    TrainState,
    create_adam_states,
    optimizer_pieces,
    parameter_pieces,
)
from partita.formats import CheckpointFile, CheckpointManifest, Plan, load, save

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
PLAN = "plan.json"
DCP_METADATA = ".metadata"  # FileSystemWriter's name for the metadata
_STEP_FOLDER = re.compile(r"step-(\d+)")
RNG_KEY = "rng/{rank}"
# Files hashed at once (hashlib and file reads release the GIL): verifying reads a
# checkpoint's files, one per rank that saved it, in one process.
_HASH_THREADS = 8

WriterFactory = Callable[[Path], StorageWriter]


def checkpoint_folder(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def step_folders(run_dir: str | Path) -> list[Path]:
    """Every ``step-N`` folder of a run folder, oldest first, with a manifest or not."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_FOLDER.fullmatch(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def is_step_folder(path: str | Path) -> bool:
    return _STEP_FOLDER.fullmatch(Path(path).name) is not None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder that have a manifest, oldest first."""
    return [path for path in step_folders(run_dir) if (path / MANIFEST).is_file()]


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
    keep the ``keep`` newest up to it; returns its folder. The manifest's ``files`` are filled
    in here."""
    final = checkpoint_folder(run_dir, manifest.step)
    partial = final.with_name(f".{final.name}.partial")
    rank = dist.get_rank(state.group)
    if rank == 0:  # what a crash left behind, or an earlier try at this step
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier(group=state.group)
    pieces = {**parameter_pieces(state), **optimizer_pieces(state)}
    objects = {RNG_KEY.format(rank=rank): _rng_state()}
    planner = PieceSavePlanner(pieces, objects)
    metadata = dcp.save(
        {**{k: p.tensor for k, p in pieces.items()}, **objects},
        storage_writer=make_writer(partial),
        planner=planner,
        process_group=state.group,
    )
    gathered = _gather_file_records(partial, _files_written(planner, metadata), state.group)
    if rank == 0:
        assert gathered is not None
        save(plan, partial / PLAN)
        files = _with_unclaimed_files(partial, gathered)
        save(replace(manifest, files=files), partial / MANIFEST)
        _replace_folder(partial, final)
        _prune(run_dir, manifest.step, keep)
    return final


def _files_written(planner: PieceSavePlanner, metadata: Metadata) -> list[str]:
    """The files this rank wrote: where DCP's metadata put the items of its final plan.
    (FileSystemWriter names them ``__<rank>_<n>.distcp`` today; the metadata says for sure.)"""
    storage = metadata.storage_data
    return sorted({storage[item.index].relative_path for item in planner.final_plan.items})


def _gather_file_records(
    folder: Path, names: list[str], group: dist.ProcessGroup | None
) -> list[CheckpointFile] | None:
    """Every rank's records of the files it wrote, on rank 0 (None on the others)."""
    records = file_records(folder, names)
    world = dist.get_world_size(group)
    gathered: list[Any] | None = [None] * world if dist.get_rank(group) == 0 else None
    dist.gather_object(records, gathered, group=group, group_dst=0)
    if gathered is None:
        return None
    return [record for each in gathered for record in each]


def _with_unclaimed_files(
    folder: Path, records: list[CheckpointFile]
) -> tuple[CheckpointFile, ...]:
    """``records`` and those of the files no rank claimed: DCP's metadata, the plan, and any
    file a rank wrote without items in it (a rank with nothing to save still gets one)."""
    claimed = {record.name for record in records}
    assert len(claimed) == len(records), "two ranks claimed one file"
    rest = sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and path.name not in claimed and path.name != MANIFEST
    )
    return tuple(sorted([*records, *file_records(folder, rest)], key=lambda r: r.name))


def _prune(run_dir: str | Path, step: int, keep: int) -> None:
    # Only checkpoints up to the one just written count: newer ones are those a resume fell
    # back past (damaged), and counting them would delete the one just written.
    done = [path for path in complete_checkpoints(run_dir) if _step_of(path) <= step]
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _step_of(folder: Path) -> int:
    match = _STEP_FOLDER.fullmatch(folder.name)
    assert match is not None, folder
    return int(match.group(1))


def file_records(folder: Path, names: Iterable[str]) -> list[CheckpointFile]:
    """The size and SHA-256 of each named file of ``folder``.

    SHA-256 because OpenSSL's runs on the CPU's SHA instructions (x86 SHA-NI, Arm's SHA2):
    1.4 GB/s a core here against 0.7 for BLAKE2b, and ``sha256sum`` checks a file by hand.
    """
    paths = [folder / name for name in names]
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        return list(pool.map(_file_record, paths))


def _file_record(path: Path) -> CheckpointFile:
    with open(path, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
        size = os.fstat(stream.fileno()).st_size
    return CheckpointFile(name=path.name, bytes=size, sha256=digest)


def verify_checkpoint(folder: str | Path, *, checksums: bool = True) -> CheckpointManifest:
    """The manifest of ``folder`` once its files are found as it records them (a one-line
    ``ValueError`` naming the file and what is wrong if not).

    Checked: the manifest reads; every file it records is there with its size and (with
    ``checksums``, reading every byte) its SHA-256; DCP's metadata reads and every file it
    refers to is long enough. A version 1 manifest records no files: only the last check
    applies.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ValueError(f"{folder / MANIFEST}: missing (an incomplete checkpoint)")
    manifest = load(folder / MANIFEST, CheckpointManifest)
    for record in manifest.files:
        _check_size(folder / record.name, record.bytes)
    if checksums:
        _check_checksums(folder, manifest.files)
    _check_dcp_files(folder, read_dcp_metadata(folder))
    return manifest


def _check_size(path: Path, recorded: int) -> None:
    size = _size(path, f"the manifest records {recorded} bytes")
    if size != recorded:
        cut = "truncated: " if size < recorded else ""
        raise ValueError(f"{path}: {cut}{size} bytes, the manifest records {recorded}")


def _size(path: Path, why_needed: str) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"{path}: missing ({why_needed})") from None
    except OSError as error:
        raise ValueError(f"{path}: unreadable ({error.strerror})") from None


def _check_checksums(folder: Path, files: tuple[CheckpointFile, ...]) -> None:
    try:
        found = file_records(folder, (record.name for record in files))
    except OSError as error:
        raise ValueError(f"{error.filename}: unreadable ({error.strerror})") from None
    for record, actual in zip(files, found, strict=True):
        if actual.sha256 != record.sha256:
            raise ValueError(
                f"{folder / record.name}: SHA-256 differs from the manifest's "
                "(the file changed after the save)"
            )


def read_dcp_metadata(folder: str | Path) -> Metadata:
    """DCP's metadata of a checkpoint folder (a one-line ``ValueError`` if it does not read)."""
    path = Path(folder) / DCP_METADATA
    _size(path, "every checkpoint has one")
    try:
        return FileSystemReader(folder).read_metadata()
    except Exception as error:  # unpickling raises whatever the damaged bytes lead it to
        raise ValueError(f"{path}: unreadable checkpoint metadata ({_first_line(error)})") from None


def _check_dcp_files(folder: Path, metadata: Metadata) -> None:
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        path = folder / name
        size = _size(path, "the checkpoint metadata refers to it")
        if size < end:
            raise ValueError(
                f"{path}: truncated: {size} bytes, the checkpoint metadata needs {end}"
            )


def _first_line(error: BaseException) -> str:
    if isinstance(error, CheckpointException):  # DCP's wrapper around each rank's failure
        failures = list(error.failures.values())
        if failures:
            return _first_line(failures[0][0])
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    # torch's messages go on with advice that misleads here (to load with weights_only=False).
    first, cut, _ = lines[0].partition(". ")
    return f"{type(error).__name__}: {first}{'.' if cut else ''}"


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
    stored = read_dcp_metadata(folder).state_dict_metadata
    pieces = parameter_pieces(state)
    check_stored_parameters(folder, pieces, stored, manifest.model)
    create_adam_states(state, (k for k in stored if k.startswith(OPTIMIZER_PREFIX)))
    pieces.update({k: p for k, p in optimizer_pieces(state).items() if k in stored})
    rank = 0 if no_dist else dist.get_rank(state.group)
    world = 1 if no_dist else dist.get_world_size(state.group)
    rng_key = RNG_KEY.format(rank=rank)
    wanted = (rng_key,) if restore_rng and manifest.rng_ranks == world else ()
    planner = PieceLoadPlanner(pieces, wanted)
    try:
        dcp.load(
            {k: p.tensor for k, p in pieces.items()},
            storage_reader=FileSystemReader(folder),
            planner=planner,
            no_dist=no_dist,
            process_group=None if no_dist else state.group,
        )
    except (Exception, CheckpointException) as error:  # the latter is a BaseException
        raise ValueError(_unreadable(folder, error)) from error
    if wanted:
        _set_rng_state(planner.objects[rng_key])
    return manifest


def _unreadable(folder: Path, error: BaseException) -> str:
    """One line for a checkpoint DCP failed to read: the damaged file where the sizes tell
    it (cheap, as every rank gets here), else the first line of what DCP met."""
    try:
        verify_checkpoint(folder, checksums=False)
    except ValueError as damaged:
        return f"{folder}: cannot read the checkpoint: {damaged}"
    return f"{folder}: cannot read the checkpoint ({_first_line(error)})"


def check_stored_parameters(
    folder: Path, pieces: Mapping[str, Piece], stored: Mapping[str, object], model: str
) -> None:
    """Every parameter of ``pieces`` is in the checkpoint with its whole shape."""
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
    "file_records",
    "latest_checkpoint",
    "load_checkpoint",
    "read_dcp_metadata",
    "read_manifest",
    "save_checkpoint",
    "step_folders",
    "verify_checkpoint",
]

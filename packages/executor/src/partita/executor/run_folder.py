"""A run folder belongs to one run: a lock while it trains, and no silent reuse.

``partita train`` holds an exclusive ``flock`` on ``RUN_DIR/.partita-lock`` from before the
first check to the end of the job, so two runs started at once into one folder cannot mix
their reports, step logs and checkpoints: the second is refused, naming the holder. The lock
is the kernel's, released when the holding process ends however it ends, so a killed run
leaves no stale lock behind, and a report still saying ``running`` with nobody holding the
lock is a run that was stopped from outside.

A new run refuses a folder that holds another run's files unless told ``--overwrite``, which
removes those files (and only those: a folder may also hold the user's own files).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

LOCK = ".partita-lock"
RUN_LOG = "train.log"  # every line the ranks and torchrun wrote (launch.py)
# Everything a run writes into its folder (worker.py, training_run.py, checkpoint.py, the
# launcher's log): what --overwrite removes and what marks a folder as holding a run.
RUN_FILES = ("run_report.json", "steps.jsonl", "plan.json", "checkpoints", RUN_LOG)


class RunLock:
    """An exclusive lock on a run folder for the life of this process (or until released)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, creating the folder; a one-line ``ValueError`` if it is held or the
        folder cannot be written."""
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ValueError(
                f"--run-dir: cannot write to {self.run_dir}: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"--run-dir: cannot lock {path}: {error.strerror}") from None
            raise _in_use(self.run_dir) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live process holds the folder's lock (tried without waiting)."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_not_in_use(run_dir: str | Path) -> None:
    """Refuse a folder another run holds (without taking the lock, so nothing is written)."""
    if is_locked(run_dir):
        raise _in_use(Path(run_dir))


def _in_use(run_dir: Path) -> ValueError:
    return ValueError(
        f"--run-dir: {run_dir} is in use by another partita train "
        f"({_holder(run_dir / LOCK)}); wait for it or choose another folder"
    )


def earlier_run_files(run_dir: str | Path) -> list[str]:
    """The files of an earlier run in ``run_dir`` (empty when it holds none)."""
    folder = Path(run_dir)
    return [name for name in RUN_FILES if (folder / name).exists()]


def claim_for_new_run(run_dir: str | Path, *, overwrite: bool, dry_run: bool = False) -> list[str]:
    """Make ``run_dir`` ready for a new run (hold its lock first); returns what was removed.

    Refuses, in one line, a folder that holds another run unless ``overwrite``; ``dry_run``
    only refuses.
    """
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--run-dir: {folder} is a file, not a folder")
    found = earlier_run_files(folder)
    if found and not overwrite:
        raise ValueError(
            f"--run-dir: {folder} holds another run ({', '.join(found)}); continue it with "
            f"--resume {folder}, replace it with --overwrite, or choose another folder"
        )
    if dry_run:
        return []
    for name in found:
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as error:
            raise ValueError(
                f"--overwrite: cannot remove {path}: {error.strerror or error}"
            ) from None
    return found


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")

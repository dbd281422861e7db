"""Helpers shared by the profiler's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root writes anywhere but sysfs)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no unwritable folder")
    return Path("/sys/kernel")

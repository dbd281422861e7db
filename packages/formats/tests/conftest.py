from __future__ import annotations

from pathlib import Path

import pytest
from support import DATA, EXAMPLES


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def data_dir() -> Path:
    return DATA

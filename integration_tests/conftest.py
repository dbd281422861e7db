"""Shared setup for the cross-package integration tests.

Run them with `nox -s "tests(suite='integration')"`.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Nothing here may reach a model hub; noxfile.py sets these too, this covers plain `pytest`.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(_name, _value)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: builds virtual environments or installs packages (minutes, not seconds)"
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT

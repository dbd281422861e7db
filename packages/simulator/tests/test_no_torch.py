"""Proof that partita-simulator installs and imports in an environment without torch."""

import importlib
import importlib.util
import pkgutil
import sys

import partita.simulator


def test_torch_is_not_installed() -> None:
    assert importlib.util.find_spec("torch") is None, (
        "torch is importable in the simulator's test environment; "
        "some dependency of partita-simulator pulled it in"
    )


def _raise(name: str) -> None:
    raise ImportError(f"could not import {name} while walking partita.simulator")


def test_every_submodule_imports_without_torch() -> None:
    names = [
        module.name
        for module in pkgutil.walk_packages(
            partita.simulator.__path__, prefix="partita.simulator.", onerror=_raise
        )
    ]
    for name in names:
        importlib.import_module(name)
    assert "torch" not in sys.modules

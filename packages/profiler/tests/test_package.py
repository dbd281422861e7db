"""Packaging tests: the installed distribution, not the source tree, is what gets imported."""

import importlib.metadata
import importlib.resources
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import partita.profiler

DISTRIBUTION = "partita-profiler"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def test_version_matches_installed_metadata() -> None:
    assert partita.profiler.__version__ == importlib.metadata.version(DISTRIBUTION)


def test_installed_version_matches_source_pyproject() -> None:
    with (PACKAGE_DIR / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert importlib.metadata.version(DISTRIBUTION) == project["version"]


def test_imported_from_installed_distribution_not_source_tree() -> None:
    module_file = Path(partita.profiler.__file__ or "").resolve()
    assert PACKAGE_DIR / "src" not in module_file.parents, module_file


def test_py_typed_marker_is_shipped() -> None:
    assert importlib.resources.files("partita.profiler").joinpath("py.typed").is_file()


def test_declared_requirements_are_installed_and_satisfied() -> None:
    requirements = [Requirement(r) for r in importlib.metadata.requires(DISTRIBUTION) or []]
    runtime = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert runtime, "expected runtime dependencies in the installed metadata"
    for requirement in runtime:
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement} is declared but {installed} is installed"
        )

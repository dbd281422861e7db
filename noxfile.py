"""Nox sessions for the Partita monorepo.

Packages are discovered from ``packages/*/pyproject.toml``. Each package is installed
NON-editable, in one pip command together with the in-repo ``partita-*`` packages it
depends on (read recursively from the pyproject files), always with ``-c constraints.txt``.

Sessions:
    lint        ruff check + ruff format --check over the repo
    typecheck   mypy --strict on partita.formats and partita.simulator
    tests       one venv per package (plus "integration"), pytest with a JUnit report in .reports/
    benchmarks  pytest-benchmark over benchmarks/, JSON report in .reports/benchmarks.json
    demo        demo/run_demo.py against the installed packages

Importing this file must stay cheap (``nox -l``): no installs, subprocesses or TOML
parsing at import time, only a directory listing.
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import nox

ROOT = Path(__file__).resolve().parent
PACKAGES_DIR = ROOT / "packages"
REPORTS_DIR = ROOT / ".reports"
CONSTRAINTS = "constraints.txt"
MIN_PYTHON = (3, 11)

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True
# pip-based virtualenvs only: pip finds the local torch wheel, uv does not.
nox.options.default_venv_backend = "virtualenv"

# Tool requirements (ranges; torch is the only pin, in constraints.txt).
RUFF = "ruff>=0.17,<0.18"
MYPY = "mypy>=2.4,<3"
PYTEST = "pytest>=8"
HYPOTHESIS = "hypothesis>=6"
PYTEST_BENCHMARK = "pytest-benchmark>=4"
# The report's browser test drives the system's Chromium (never `playwright install`, which
# downloads a browser of its own).
PLAYWRIGHT = "playwright>=1.40,<2"
CHROMIUM_PACKAGE = "chromium"
# The trainers whose own parsers check what `partita export-plan` writes
# (integration_tests/test_trainer_parsers.py): installed without their dependencies, which
# would pull another torch, datasets and triton; what their config code imports comes first.
TRAINER_PARSER_DEPS = (
    "tyro>=1.0,<2", "docstring-parser", "typeguard", "hjson", "psutil", "einops", "msgpack",
    "ninja", "pydantic>=2", "py-cpuinfo", "tqdm", "setuptools", "wheel",
)  # fmt: skip
TRAINER_PARSERS = ("torchtitan==0.2.2", "deepspeed==0.19.8")

TYPECHECKED_PACKAGES = ("formats", "simulator")

TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "MPLBACKEND": "Agg",
}

# --import-mode=importlib keeps pytest from inserting test or source directories into
# sys.path, so the tests import the installed (non-editable) packages.
PYTEST_ARGS = ("--import-mode=importlib", "-p", "no:cacheprovider")


def _discover_packages() -> list[str]:
    return sorted(path.parent.name for path in PACKAGES_DIR.glob("*/pyproject.toml"))


PACKAGES = _discover_packages()
INTEGRATION = "integration"


class _Project(NamedTuple):
    directory: str  # name of the folder under packages/
    distribution: str  # canonical distribution name, e.g. "partita-formats"
    local_requirements: tuple[tuple[str, frozenset[str]], ...]  # (distribution, extras)


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


@functools.cache
def _projects() -> dict[str, _Project]:
    """Map canonical distribution name -> project, read from packages/*/pyproject.toml."""
    import tomllib

    from packaging.requirements import Requirement

    projects: dict[str, _Project] = {}
    for directory in _discover_packages():
        with (PACKAGES_DIR / directory / "pyproject.toml").open("rb") as f:
            project = tomllib.load(f)["project"]
        local = []
        for spec in project.get("dependencies", []):
            requirement = Requirement(spec)
            if _canonical(requirement.name).startswith("partita-"):
                local.append((_canonical(requirement.name), frozenset(requirement.extras)))
        distribution = _canonical(project["name"])
        projects[distribution] = _Project(directory, distribution, tuple(local))
    return projects


def _distribution_of(directory: str) -> str:
    for project in _projects().values():
        if project.directory == directory:
            return project.distribution
    raise KeyError(directory)


def _install_specs(
    session: nox.Session, directories: Iterable[str], extra: str | None = None
) -> list[str]:
    """pip arguments for ``directories`` plus their in-repo dependencies, recursively.

    ``extra`` (e.g. "test") is requested for the named packages only; extras that a
    package asks of a local dependency (``partita-formats[x]``) are kept.
    """
    projects = _projects()
    extras: dict[str, set[str]] = {}
    pending: list[tuple[str, frozenset[str], str]] = []
    for directory in directories:
        wanted = frozenset({extra}) if extra else frozenset()
        pending.append((_distribution_of(directory), wanted, "the command line"))
    while pending:
        distribution, wanted, required_by = pending.pop()
        if distribution not in projects:
            session.error(
                f"{distribution} (required by {required_by}) has no pyproject.toml "
                f"under {PACKAGES_DIR.relative_to(ROOT)}/"
            )
        first_visit = distribution not in extras
        extras.setdefault(distribution, set()).update(wanted)
        if first_visit:
            for dependency, dependency_extras in projects[distribution].local_requirements:
                pending.append((dependency, dependency_extras, distribution))
    specs = []
    for distribution in sorted(extras, key=lambda d: projects[d].directory):
        directory = projects[distribution].directory
        # setuptools reuses build/lib between builds, so a module deleted from src/ would
        # linger in the wheel; start every non-editable build from a clean build/.
        shutil.rmtree(PACKAGES_DIR / directory / "build", ignore_errors=True)
        suffix = f"[{','.join(sorted(extras[distribution]))}]" if extras[distribution] else ""
        specs.append(f"./packages/{directory}{suffix}")
    return specs


def _check_python(session: nox.Session) -> None:
    if sys.version_info < MIN_PYTHON:
        session.error(
            f"Partita needs Python >= {'.'.join(map(str, MIN_PYTHON))}, but nox runs on "
            f"Python {platform.python_version()} ({sys.executable}). "
            "Run nox with Python 3.11 or newer, e.g. `python3.11 -m nox`."
        )


def _install(session: nox.Session, *args: str) -> None:
    session.install("-c", CONSTRAINTS, *args)


def _report(name: str) -> Path:
    REPORTS_DIR.mkdir(exist_ok=True)
    path = REPORTS_DIR / name
    path.unlink(missing_ok=True)
    return path


@nox.session(python=None)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repo."""
    _check_python(session)
    _install(session, RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=None)
def typecheck(session: nox.Session) -> None:
    """mypy --strict (mypy.ini) on the formats and simulator sources."""
    _check_python(session)
    missing = [name for name in TYPECHECKED_PACKAGES if name not in PACKAGES]
    if missing:
        session.error(f"packages to type-check are missing: {', '.join(missing)}")
    _install(session, *_install_specs(session, TYPECHECKED_PACKAGES), MYPY)
    session.run("mypy", *(f"packages/{name}/src" for name in TYPECHECKED_PACKAGES))


@nox.session(python=None)
@nox.parametrize("suite", [*PACKAGES, INTEGRATION])
def tests(session: nox.Session, suite: str) -> None:
    """A package's tests, in a venv with only it and its in-repo deps; or the integration suite."""
    _check_python(session)
    if suite == INTEGRATION:
        _install(session, *_install_specs(session, PACKAGES), PYTEST, HYPOTHESIS, PLAYWRIGHT)
        _install(session, *TRAINER_PARSER_DEPS)
        # DeepSpeed ships an sdist whose setup imports torch: build it against this venv's
        # torch (no isolated build env, which would fetch another) and none of its C++ ops.
        session.install(
            "-c", CONSTRAINTS, "--no-deps", "--no-build-isolation", *TRAINER_PARSERS,
            env={"DS_BUILD_OPS": "0"},
        )  # fmt: skip
        _ensure_chromium(session)
        test_dir = "integration_tests"
    else:
        _install(session, *_install_specs(session, [suite], extra="test"))
        test_dir = f"packages/{suite}/tests"
    junit = _report(f"{suite}.xml")
    session.run(
        "pytest",
        test_dir,
        *PYTEST_ARGS,
        f"--junitxml={junit}",
        *session.posargs,
        env=TEST_ENV,
    )


def _ensure_chromium(session: nox.Session) -> None:
    """The OS's Chromium for the report's browser test, installed with apt-get where it is
    missing and this is a root Debian/Ubuntu; elsewhere the test skips and says why."""
    import os

    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        session.warn(
            "chromium not found and cannot be installed here (needs apt-get as root): the "
            f"report's browser test will skip; install it with `apt-get install {CHROMIUM_PACKAGE}`"
        )
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env, success_codes=[0, 100])
    session.run(
        "apt-get", "install", "-y", "-qq", "--no-install-recommends", CHROMIUM_PACKAGE,
        external=True, env=env, success_codes=[0, 100],
    )  # fmt: skip
    if not shutil.which("chromium"):
        session.warn("apt-get could not install chromium: the report's browser test will skip")


@nox.session(python=None)
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark over benchmarks/; fails unless at least one benchmark ran."""
    _check_python(session)
    _install(session, *_install_specs(session, PACKAGES), PYTEST, HYPOTHESIS, PYTEST_BENCHMARK)
    output = _report("benchmarks.json")
    session.run(
        "pytest",
        "benchmarks",
        *PYTEST_ARGS,
        f"--benchmark-json={output}",
        *session.posargs,
        env=TEST_ENV,
        success_codes=[0, 5],  # 5 = nothing collected; reported below with a clearer message
    )
    ran = json.loads(output.read_text())["benchmarks"] if output.is_file() else []
    if not ran:
        session.error("no benchmark ran: add test_*.py files using the `benchmark` fixture")
    session.log(f"{len(ran)} benchmark(s) written to {output.relative_to(ROOT)}")


@nox.session(python=None)
def demo(session: nox.Session) -> None:
    """Install every package and run demo/run_demo.py (writes runs/demo-<timestamp>/)."""
    _check_python(session)
    _install(session, *_install_specs(session, PACKAGES))
    session.run("python", "demo/run_demo.py", *session.posargs, env=TEST_ENV)

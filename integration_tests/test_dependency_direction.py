"""Architecture rules that span packages: who may import what, how packages depend on each other.

* Every ``import`` under ``packages/<name>/src`` (anywhere in a file, functions included) names
  the standard library or a module on that package's allow-list below.
* Dependencies on in-repo ``partita-*`` distributions are version ranges, and no requirement
  anywhere is a path or URL.
* partita-simulator (with partita-formats) installs into a fresh venv without torch.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES_DIR = REPO_ROOT / "packages"
PACKAGE_NAMES = sorted(p.parent.name for p in PACKAGES_DIR.glob("*/pyproject.toml"))

# Top-level modules (or partita.<sub> namespaces) each package may import, besides the stdlib.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "formats": frozenset({"partita.formats"}),
    "simulator": frozenset(
        {"partita.formats", "partita.simulator", "numpy", "simpy", "matplotlib", "plotly"}
    ),
    "models": frozenset(
        {
            "partita.formats",
            "partita.models",
            "torch",
            "transformers",
            "huggingface_hub",
            "safetensors",
            "flash_attn",  # optional extra, imported only where installed on a GPU
            "numpy",
            "tokenizers",
        }
    ),
    "profiler": frozenset(
        {
            "partita.formats",
            "partita.models",
            "partita.executor",  # measures what the executor runs: its TP layers, memory method
            "partita.profiler",
            "torch",
            "numpy",
        }
    ),
    "executor": frozenset(
        {"partita.formats", "partita.models", "partita.executor", "torch", "numpy"}
    ),
}

STDLIB = frozenset(sys.stdlib_module_names)
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})
SUBPROCESS_TIMEOUT_S = 180
PIP_INSTALL_TIMEOUT_S = 900


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    """Dotted module name of a file under src/, and whether it is a package __init__."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, target] if target else base)


def _imported_modules(path: Path, src: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in the file, relative ones resolved."""
    module, is_package = _module_name(path, src)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            if base == "partita":  # `from partita import formats` imports partita.formats
                for alias in node.names:
                    yield node.lineno, f"partita.{alias.name}"
            else:
                yield node.lineno, base
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if (
                name in DYNAMIC_IMPORTERS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not node.args[0].value.startswith(".")
            ):
                yield node.lineno, node.args[0].value


def _policy_key(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "partita" else parts[0]


def test_every_package_has_an_import_policy() -> None:
    assert PACKAGE_NAMES, "no packages found under packages/"
    missing = sorted(set(PACKAGE_NAMES) - set(ALLOWED_IMPORTS))
    assert not missing, f"add an ALLOWED_IMPORTS entry for: {', '.join(missing)}"


@pytest.mark.parametrize("package", PACKAGE_NAMES)
def test_package_imports_only_allowed_modules(package: str) -> None:
    src = PACKAGES_DIR / package / "src"
    allowed = ALLOWED_IMPORTS.get(package, frozenset())
    files = sorted(src.rglob("*.py"))
    assert files, f"no Python files under {src.relative_to(REPO_ROOT)}"
    violations = []
    for path in files:
        for line, module in _imported_modules(path, src):
            key = _policy_key(module)
            if key in STDLIB or key in allowed:
                continue
            violations.append(
                f"{path.relative_to(REPO_ROOT)}:{line}: imports {module!r} "
                f"(partita-{package} may import the stdlib and {sorted(allowed)})"
            )
    assert not violations, "disallowed imports:\n" + "\n".join(violations)


def test_import_scanner_sees_nested_relative_and_dynamic_imports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    module = src / "partita" / "simulator" / "engine" / "core.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import os\n"
        "from .. import plots\n"
        "from ...formats import schema\n"
        "from partita import models\n"
        "def f():\n"
        "    import torch\n"
        "    return importlib.import_module('transformers')\n"
    )
    assert list(_imported_modules(module, src)) == [
        (1, "os"),
        (2, "partita.simulator"),
        (3, "partita.formats"),
        (4, "partita.models"),
        (6, "torch"),
        (7, "transformers"),
    ]


def _pyprojects() -> list[tuple[Path, dict[str, Any]]]:
    result = []
    for name in PACKAGE_NAMES:
        path = PACKAGES_DIR / name / "pyproject.toml"
        with path.open("rb") as f:
            result.append((path, tomllib.load(f)))
    return result


def _all_requirements(pyproject: dict[str, Any]) -> Iterator[tuple[str, str]]:
    project = pyproject.get("project", {})
    for spec in project.get("dependencies", []):
        yield "dependencies", spec
    for extra, specs in project.get("optional-dependencies", {}).items():
        for spec in specs:
            yield f"optional-dependencies.{extra}", spec
    for spec in pyproject.get("build-system", {}).get("requires", []):
        yield "build-system.requires", spec


def _bounds(requirement: Requirement) -> tuple[bool, bool, bool]:
    """(has lower bound, has upper bound, is an exact pin)."""
    lower = upper = pinned = False
    for spec in requirement.specifier:
        wildcard = spec.version.endswith(".*")
        if spec.operator in (">=", ">", "~=") or (spec.operator == "==" and wildcard):
            lower = True
        if spec.operator in ("<", "<=", "~=") or (spec.operator == "==" and wildcard):
            upper = True
        if spec.operator == "===" or (spec.operator == "==" and not wildcard):
            pinned = True
    return lower, upper, pinned


def test_requirements_are_ranges_never_paths_or_urls() -> None:
    problems = []
    for path, pyproject in _pyprojects():
        where = path.relative_to(REPO_ROOT)
        for table, spec in _all_requirements(pyproject):
            try:
                requirement = Requirement(spec)
            except InvalidRequirement as exc:
                problems.append(f"{where} [{table}] {spec!r}: not a requirement ({exc})")
                continue
            if requirement.url is not None or "@" in spec:
                problems.append(f"{where} [{table}] {spec!r}: a path/URL, use a version range")
            if canonicalize_name(requirement.name).startswith("partita-"):
                lower, upper, pinned = _bounds(requirement)
                if pinned or not (lower and upper):
                    problems.append(
                        f"{where} [{table}] {spec!r}: in-repo dependency must be a range "
                        "with a lower and an upper bound, e.g. partita-formats>=0.1,<0.2"
                    )
    assert not problems, "\n".join(problems)


def test_in_repo_ranges_admit_the_in_repo_versions() -> None:
    problems = []
    for path, pyproject in _pyprojects():
        for spec in pyproject.get("project", {}).get("dependencies", []):
            requirement = Requirement(spec)
            if not canonicalize_name(requirement.name).startswith("partita-"):
                continue
            installed = importlib.metadata.version(requirement.name)
            if not requirement.specifier.contains(installed, prereleases=True):
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}: {spec!r} excludes the in-repo {installed}"
                )
    assert not problems, "\n".join(problems)


def test_pytest_config_does_not_put_sources_on_sys_path() -> None:
    for path, pyproject in _pyprojects():
        options = pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {})
        entries = options.get("pythonpath", [])
        entries = entries.split() if isinstance(entries, str) else entries
        assert not [e for e in entries if "src" in Path(e).parts], (
            f"{path.relative_to(REPO_ROOT)}: pytest pythonpath {entries} would shadow the "
            "installed package with the source tree"
        )


def _run(command: list[str], *, timeout: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{' '.join(command)} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.mark.slow
def test_simulator_installs_and_imports_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bindir / "python")
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            "constraints.txt",
            "./packages/formats",
            "./packages/simulator",
        ],
        timeout=PIP_INSTALL_TIMEOUT_S,
        cwd=REPO_ROOT,
    )
    listing = _run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=tmp_path,
    )
    installed = {canonicalize_name(d["name"]) for d in json.loads(listing.stdout)}
    assert {"partita-formats", "partita-simulator"} <= installed, sorted(installed)
    assert "torch" not in installed, f"torch was installed with partita-simulator: {installed}"
    _run([python, "-m", "pip", "check"], timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path)
    _run(
        [python, "-c", "import partita.simulator, partita.formats"],
        timeout=SUBPROCESS_TIMEOUT_S,
        cwd=tmp_path,
    )

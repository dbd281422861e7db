"""The command line, fuzzed: whatever plan, profile, description, run report or checkpoint
manifest a user hands ``show``, ``simulate``, ``plan`` or ``train``, the command either
accepts it or ends with exit status 2 and one line naming the problem; never a traceback.

The commands run in this process through ``partita.formats.cli.main``. ``train`` stops where
it would start torchrun: everything it checks before any rank starts is exercised.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partita.formats.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
FILES = {
    "plan": "plan.json",
    "hardware": "hardware_profile.json",
    "model_profile": "model_profile.json",
    "model": "model_description.json",
    "report": "run_report.json",
    "manifest": "checkpoint_manifest.json",
}
DOCUMENTS = {role: json.loads((EXAMPLES / name).read_text()) for role, name in FILES.items()}
# The example plan has a sequence-parallel vocabulary, which the executor refuses: train
# fuzzes the same plan without it, so that the undamaged file passes every check.
DOCUMENTS["train_plan"] = {**DOCUMENTS["plan"], "vocab": {"tp": 2, "sp": False, "dp": "ddp"}}
RAW = {role: json.dumps(document, indent=2).encode() for role, document in DOCUMENTS.items()}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**31, 2**53 + 1, 10**30, 1e308, -1e308, 5e-324])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class _WouldLaunch(Exception):
    """``partita train`` passed every check and would start torchrun now."""


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def damaged(draw: st.DrawFn, role: str, raw: bytes | None = None) -> bytes:
    """A file (an example, or ``raw``) with one field replaced or removed, or a few bytes
    overwritten."""
    raw = RAW[role] if raw is None else raw
    if draw(st.integers(0, 3)) == 0:
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    document = json.loads(raw)
    path = draw(st.sampled_from(_paths(document)[1:]))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if draw(st.booleans()):
        target[path[-1]] = draw(json_values)
    elif isinstance(target, dict):
        del target[path[-1]]
    else:
        target.pop(path[-1])
    return json.dumps(document).encode()


def _run(argv: list[str]) -> tuple[int | None, str]:
    """Exit status (None: ``train`` would launch) and stderr of ``partita ARGV``."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except _WouldLaunch:
            code = None
    return code, err.getvalue()


def _check(argv: list[str], command: str) -> None:
    code, err = _run(argv)
    if code in (0, None):
        return
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err[-2000:])
    errors = [line for line in lines if line.startswith(f"partita {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    assert "Traceback" not in err


def _with_files(files: dict[str, bytes], body: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        body(root)


def _simulate_argv(root: Path) -> list[str]:
    return [
        "simulate",
        "--plan",
        str(root / "plan.json"),
        "--hardware",
        str(root / "hardware.json"),
        "--model-profile",
        str(root / "model_profile.json"),
        "--model",
        str(root / "model.json"),
    ]


def _originals() -> dict[str, bytes]:
    return {f"{role}.json": raw for role, raw in RAW.items()}


@FUZZ
@given(st.sampled_from(sorted(FILES)), st.data())
def test_show(role: str, data: st.DataObject) -> None:
    raw = data.draw(damaged(role))
    _with_files({"file.json": raw}, lambda root: _check(["show", str(root / "file.json")], "show"))


@FUZZ
@given(st.sampled_from(["plan", "hardware", "model_profile", "model"]), st.data())
def test_simulate(role: str, data: st.DataObject) -> None:
    files = {**_originals(), f"{role}.json": data.draw(damaged(role))}
    _with_files(files, lambda root: _check(_simulate_argv(root), "simulate"))


@FUZZ
@given(st.sampled_from(["hardware", "model_profile", "model"]), st.data())
def test_plan(role: str, data: st.DataObject) -> None:
    files = {**_originals(), f"{role}.json": data.draw(damaged(role))}

    def body(root: Path) -> None:
        argv = ["plan", "--hardware", str(root / "hardware.json")]
        argv += ["--model-profile", str(root / "model_profile.json")]
        argv += ["--model", str(root / "model.json"), "--world-size", "4", "--memory-gb", "1"]
        argv += ["--global-batch", "8", "--space", "uniform", "--out", str(root / "out.json")]
        _check(argv, "plan")

    _with_files(files, body)


@FUZZ
@given(st.data())
def test_train_plan(data: st.DataObject) -> None:
    files = {"plan.json": data.draw(damaged("train_plan"))}

    def body(root: Path) -> None:
        argv = ["train", "--plan", str(root / "plan.json"), "--model", "gpt-tiny"]
        _check([*argv, "--run-dir", str(root / "run")], "train")

    with mock.patch("partita.executor.train_command._launch", side_effect=_WouldLaunch):
        _with_files(files, body)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with one real checkpoint (gpt-tiny, one step, one gloo rank)."""
    root = tmp_path_factory.mktemp("fuzzed-run")
    document = json.loads(RAW["train_plan"])
    document.update(world_size=1, num_micro_batches=1, vocab={"tp": 1, "sp": False, "dp": "ddp"})
    document.update(pipeline={"degree": 1, "schedule": "gpipe", "stage_num_layers": [4]})
    document["layers"] = [{"tp": 1, "sp": "none", "dp": "ddp", "ckpt": "none"}] * 4
    document.pop("predictions")
    (root / "plan.json").write_text(json.dumps(document))
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run(
        [
            script,
            "train",
            "--plan",
            "plan.json",
            "--model",
            "gpt-tiny",
            "--run-dir",
            "run",
            "--steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


def _manifest(run: Path) -> Path:
    return run / "checkpoints" / "step-00000001" / "manifest.json"


@FUZZ
@given(st.sampled_from(["report", "manifest"]), st.data())
def test_train_resume(real_run: Path, role: str, data: st.DataObject) -> None:
    """A real run folder whose report or checkpoint manifest is damaged."""
    target = real_run / "run_report.json" if role == "report" else _manifest(real_run)
    raw = data.draw(damaged(role, target.read_bytes()))
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        shutil.copytree(real_run, run)
        (run / target.relative_to(real_run)).write_bytes(raw)
        argv = ["train", "--resume", str(run), "--steps", "3"]
        with mock.patch("partita.executor.train_command._launch", side_effect=_WouldLaunch):
            _check(argv, "train")


def test_the_undamaged_files_are_accepted(real_run: Path) -> None:
    """Without this, every fuzzed case could end in exit 2 for one reason the fuzzing never
    varies."""
    outcomes: list[tuple[int | None, str]] = []

    def body(root: Path) -> None:
        outcomes.append(_run(["show", str(root / "plan.json")]))
        outcomes.append(_run(_simulate_argv(root)))
        argv = ["train", "--plan", str(root / "train_plan.json"), "--model", "gpt-tiny"]
        outcomes.append(_run([*argv, "--run-dir", str(root / "fresh")]))
        shutil.copytree(real_run, root / "run")
        outcomes.append(_run(["train", "--resume", str(root / "run"), "--steps", "3"]))

    with mock.patch("partita.executor.train_command._launch", side_effect=_WouldLaunch):
        _with_files(_originals(), body)
    assert [code for code, _ in outcomes] == [0, 0, None, None], outcomes

"""Every case of ``bad_inputs.py`` through the ``partita`` command line: the exit status, one
line naming the problem, and nothing already saved changed (every file under the case's
folder, the damaged run folder included, byte for byte and no file added or removed; a run
folder's lock file may say who last held it).

The cases run in this process (``partita.formats.cli.main``): a new interpreter per case
would spend most of the suite importing torch. ``test_train_command.py`` runs the installed
script itself."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partita.executor.run_folder import LOCK
from partita.formats.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from bad_inputs import CASES, BadInput, good_plan


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder ``run``: gpt-tiny from the HF config folder ``hf`` (named relative,
    so that each case's copy of both is a run of its own), 2 steps, a checkpoint after each,
    on one gloo rank."""
    from partita.models.api import resolve_config

    root = tmp_path_factory.mktemp("trained")
    resolve_config("gpt-tiny").save_pretrained(root / "hf")
    good_plan(root)
    done = subprocess.run(
        [
            *(_partita(), "train", "--plan", "plan.json", "--model", "hf", "--steps", "2"),
            *("--checkpoint-every", "1", "--run-dir", "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its content's hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.name == LOCK:
            found[relative] = "lock"
        elif path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[relative] = "folder"
    return found


def _expand(argument: str, values: dict[str, Path]) -> str:
    for key, value in values.items():
        argument = argument.replace("{" + key + "}", str(value))
    return argument


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: BadInput, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    values = {"tmp": tmp_path}
    if case.needs_run:
        trained = request.getfixturevalue("trained_run")
        for name in ("run", "hf"):
            shutil.copytree(trained / name, tmp_path / name, symlinks=True)
        values["run"] = tmp_path / "run"
    if case.setup is not None:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    code, stderr = _partita_in_process([_expand(a, values) for a in case.argv], tmp_path)
    lines = stderr.strip().splitlines()
    assert code == case.code, stderr[-3000:]
    assert lines, "no message"
    assert re.fullmatch(case.message, lines[-1]), lines[-1]
    if case.lines is not None:
        assert len(lines) == case.lines, stderr[-3000:]
    assert "Traceback" not in stderr
    after = snapshot(tmp_path)
    if case.code == 0:  # what the command wrote is new; what was there stays
        after = {path: digest for path, digest in after.items() if path in before}
    assert after == before


def _partita_in_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    err = io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code if isinstance(exit_.code, int) else 2
    finally:
        os.chdir(previous)
    return code, err.getvalue()

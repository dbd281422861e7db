"""Run folders: one run per folder (lock, refusal, --overwrite), and the launcher's output:
progress on the terminal, a failure as one line, every line kept in the run's log, SIGTERM
reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from partita.executor.launch import EXIT_FAILED, _Output, launch
from partita.executor.run_folder import (
    RUN_LOG,
    RunLock,
    claim_for_new_run,
    earlier_run_files,
    is_locked,
)

TESTS = Path(__file__).parent


def test_a_held_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        assert is_locked(tmp_path / "run")
        with pytest.raises(
            ValueError, match=rf"is in use by another partita train \(pid {os.getpid()} on "
        ):
            RunLock(tmp_path / "run").acquire()
    assert not is_locked(tmp_path / "run")
    RunLock(tmp_path / "run").acquire().release()  # free again


def test_the_lock_ends_with_the_process_that_held_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from partita.executor.run_folder import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path)
        with pytest.raises(ValueError, match="in use by another partita train"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(tmp_path)  # SIGKILL left no stale lock


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(
        ValueError, match=r"^--run-dir: cannot write to .*a-file/run: Not a directory$"
    ):
        RunLock(blocker / "run").acquire()
    with pytest.raises(ValueError, match=r"^--run-dir: .*a-file is a file, not a folder$"):
        claim_for_new_run(blocker, overwrite=False)


def test_another_run_is_refused_unless_overwritten_and_only_its_files_go(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    for name in ("run_report.json", "steps.jsonl", "plan.json", RUN_LOG, "my-notes.txt"):
        (run / name).write_text(name)
    assert earlier_run_files(run) == [
        "run_report.json",
        "steps.jsonl",
        "plan.json",
        "checkpoints",
        RUN_LOG,
    ]
    with pytest.raises(ValueError, match=r"holds another run \(run_report.json, .*--overwrite"):
        claim_for_new_run(run, overwrite=False)
    assert (run / "checkpoints" / "step-00000002").is_dir()  # refused: nothing removed
    assert claim_for_new_run(run, overwrite=True, dry_run=True) == []
    assert len(earlier_run_files(run)) == 5
    removed = claim_for_new_run(run, overwrite=True)
    assert len(removed) == 5 and earlier_run_files(run) == []
    assert (run / "my-notes.txt").read_text() == "my-notes.txt"  # the user's own file stays


def test_output_after_a_failure_goes_to_the_log_only(tmp_path: Path, capsys) -> None:
    log = tmp_path / RUN_LOG
    with _Output(log) as output:
        for line in [
            "step 1/3 | loss 6.1\n",
            "W1206 23:11:38.373000 28298 torch/distributed/elastic/api.py:1028] a notice\n",
            "step 2/3 | loss 5.9\n",
            "partita train: error: [rank 1] the data ran out\n",
            "Traceback (most recent call last):\n",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n",
        ]:
            output.write(line)
    shown = capsys.readouterr().err.splitlines()
    assert shown == ["step 1/3 | loss 6.1", "step 2/3 | loss 5.9"]
    assert len(log.read_text().splitlines()) == 6


def _with_tests_importable() -> str:
    """PYTHONPATH under which the ranks import ``failing_worker`` from this folder."""
    return os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])


def _launch(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> int:
    monkeypatch.setenv("PYTHONPATH", _with_tests_importable())
    return launch(
        "failing_worker",
        2,
        ["--fail", how],
        prog="partita test",
        log_path=tmp_path / RUN_LOG,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("how", "cause"),
    [("error-line", "rank 1: the data ran out"), ("exception", "rank 1 exited with 1")],
)
def test_a_failed_rank_is_one_line_and_its_traceback_is_in_the_log(
    tmp_path: Path, how: str, cause: str, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    failures: list[str] = []
    code = _launch(tmp_path, how, monkeypatch, on_failure=failures.append)
    err = capfd.readouterr().err
    assert code == EXIT_FAILED
    lines = err.strip().splitlines()
    assert lines[0] == "progress: step 1/2"
    assert lines[-1].startswith(f"partita test: error: {cause}")
    assert lines[-1].endswith(f"(the ranks' output: {tmp_path / RUN_LOG})")
    assert "Traceback" not in err and "ChildFailedError" not in err
    log = (tmp_path / RUN_LOG).read_text()
    assert "ChildFailedError" in log
    if how == "exception":
        assert "RuntimeError: an unforeseen failure" in log
    assert failures == [lines[-1].split("error: ", 1)[1].split(" (the ranks'")[0]]


def test_sigterm_stops_the_ranks_and_is_reported(tmp_path: Path) -> None:
    """The launcher in its own process, SIGTERM to it alone (as a scheduler sends it): the
    ranks end, the interruption is handed on, and the exit status is 128 + 15."""
    script = (
        "import sys; from pathlib import Path; from partita.executor.launch import launch; "
        "sys.exit(launch('failing_worker', 2, ['--fail', 'hang'], prog='partita test', "
        f"log_path=Path({str(tmp_path / RUN_LOG)!r}), "
        "on_interrupt=lambda line: print('handed on:', line, file=sys.stderr)))"
    )
    env = {**os.environ, "PYTHONPATH": _with_tests_importable()}
    process = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        seen.append(line)
        if "waiting" in line:
            break
    process.send_signal(signal.SIGTERM)
    try:
        _, rest = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    lines = ("".join(seen) + rest).strip().splitlines()
    assert process.returncode == 128 + signal.SIGTERM, lines
    assert "handed on: interrupted by SIGTERM" in lines
    assert any(line.startswith("partita test: interrupted by SIGTERM") for line in lines)
    assert "Traceback" not in rest

"""`partita train` end to end on gloo: a run report, bad plans refused before launch, and a
rank that dies or hangs ends the job in bounded time with a message naming it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from partita.executor.checkpoint import latest_checkpoint
from partita.formats import (
    LayerStrategy,
    PipelineConfig,
    Plan,
    RunReport,
    TrainingSettings,
    VocabStrategy,
    content_hash,
    load,
    save,
)


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def _train(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``partita train ARGUMENTS``, its output captured."""
    return subprocess.run(
        [_partita(), "train", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _plan(path: Path, *, world: int, strategy: LayerStrategy) -> Path:
    vocab_tp = strategy.tp if strategy.sp == "none" else 1
    return save(
        Plan(
            world_size=world,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=8,
            num_micro_batches=1,
            pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(4,)),
            layers=tuple(strategy for _ in range(4)),
            vocab=VocabStrategy(tp=vocab_tp, dp=strategy.dp),
        ),
        path,
    )


def test_train_writes_a_run_report(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "plan.json", world=4, strategy=LayerStrategy(tp=2, sp="megatron"))
    run = tmp_path / "run"
    done = _train(
        "--plan",
        str(plan),
        "--model",
        "gpt-tiny",
        "--steps",
        "3",
        "--run-dir",
        str(run),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = load(run / "run_report.json", RunReport)
    assert report.status == "completed" and report.world_size == 4
    assert [s.step for s in report.steps] == [0, 1, 2]
    assert all(s.loss is not None and s.loss > 0 for s in report.steps)
    assert sorted(m.rank for m in report.peak_memory) == [0, 1, 2, 3]
    assert all(m.peak_bytes > 100_000 for m in report.peak_memory)
    assert report.throughput_per_s > 0
    assert (run / "plan.json").is_file()
    # Each rank's step split into phases: medians of steps 1 and 2 (their means), so rank 0's
    # add up to the mean of the step times it recorded.
    assert [p.rank for p in report.phases] == [0, 1, 2, 3]
    first = report.phases[0]
    total = first.schedule_s + first.grad_sync_s + first.optimizer_s + first.step_end_s
    assert total == pytest.approx((report.steps[1].time_s + report.steps[2].time_s) / 2)
    for phases in report.phases:
        assert phases.schedule_s > phases.optimizer_s > 0  # 4 blocks' passes against AdamW
        assert phases.grad_sync_s > 0  # dp 2: the DDP buckets' last sum


def test_a_pipelined_plan_trains_on_a_text_file(tmp_path: Path) -> None:
    from partita.models.text_data import sample_text_path

    plan = save(
        Plan(
            world_size=2,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=4,
            num_micro_batches=2,
            pipeline=PipelineConfig(degree=2, schedule="1f1b", stage_num_layers=(2, 2)),
            layers=tuple(LayerStrategy() for _ in range(4)),
        ),
        tmp_path / "plan.json",
    )
    run = tmp_path / "run"
    arguments = ["--plan", str(plan), "--model", "gpt-tiny", "--steps", "3"]
    arguments += ["--data", str(sample_text_path()), "--run-dir", str(run)]
    done = _train(*arguments, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = load(run / "run_report.json", RunReport)
    assert report.status == "completed" and [s.step for s in report.steps] == [0, 1, 2]
    assert sorted(m.rank for m in report.peak_memory) == [0, 1]
    assert [p.rank for p in report.phases] == [0, 1]
    assert all(p.schedule_s > 0 and p.optimizer_s > 0 for p in report.phases)


def test_plan_for_another_world_size_is_refused_before_launch(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "plan.json", world=4, strategy=LayerStrategy())
    arguments = ["--plan", str(plan), "--model", "gpt-tiny", "--nproc", "2"]
    done = _train(*arguments, "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"partita train: error: {plan}: world_size: the plan is for 4 devices but 2 are running"
    ]
    assert not (tmp_path / "run").exists()


def test_inside_a_users_torchrun_a_plan_for_another_world_size_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "plan.json", world=4, strategy=LayerStrategy())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "partita.formats.cli", "train"]
    command += ["--plan", str(plan), "--model", "gpt-tiny", "--run-dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode != 0
    expected = (
        f"partita train: error: {plan}: world_size: the plan is for 4 devices but 2 are running"
    )
    errors = [line for line in done.stderr.splitlines() if "partita train: error:" in line]
    # Each rank refuses alike; torchrun may stop the second before it prints.
    assert errors and set(errors) == {expected}, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_plan_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "plan.json", world=4, strategy=LayerStrategy(tp=4, sp="ulysses"))
    done = _train("--plan", str(plan), "--model", "llama-tiny")
    assert done.returncode == 2
    assert (
        "layers: the plan has 4 layer strategies but model 'llama-tiny' has 2 block" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1


def _parent(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may contain spaces, so split after ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _worker_pids(job: int) -> dict[int, int]:
    """rank -> pid of the running partita workers started by process ``job`` (other jobs on
    this machine, e.g. tests running in parallel, have workers too)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            if b"partita.executor.worker" not in command:
                continue
            if not _descends_from(int(entry.name), job):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _train_and_fault_rank_1(
    command: list[str], *, fault: str, ready: Callable[[], bool]
) -> tuple[int, str, float]:
    """Start ``command``; once its two workers run and ``ready()`` holds, kill (SIGKILL) or
    hang (SIGSTOP) rank 1. Returns the exit code, stderr and seconds from fault to exit."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        pids: dict[int, int] = {}
        while time.monotonic() < deadline and (len(pids) < 2 or not ready()):
            time.sleep(0.2)
            pids = _worker_pids(process.pid)
        assert len(pids) == 2 and ready(), "workers did not start or make progress"
        os.kill(pids[1], signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        _, stderr = process.communicate(timeout=150)
        elapsed = time.monotonic() - start
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in _worker_pids(process.pid).values():
            os.kill(pid, signal.SIGKILL)
    return process.returncode, stderr, elapsed


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("partita train: error:")]


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_lost_rank_stops_the_job_and_is_named(tmp_path: Path, fault: str) -> None:
    plan = _plan(tmp_path / "plan.json", world=2, strategy=LayerStrategy())
    command = [_partita(), "train", "--plan", str(plan), "--model", "gpt-tiny"]
    run = tmp_path / "run"
    command += ["--steps", "100000", "--timeout", "10", "--run-dir", str(run)]
    started = time.monotonic()
    code, stderr, elapsed = _train_and_fault_rank_1(
        command,
        fault=fault,
        # well into training: some steps logged (start-up time varies with the machine's load)
        ready=lambda: time.monotonic() - started > 12 and len(_logged_steps(run)) >= 3,
    )
    assert code != 0
    assert elapsed < 90
    last = _error_lines(stderr)
    assert last, stderr[-2000:]
    assert "rank 1" in last[-1] or "rank(s) 1" in last[-1], last[-1]
    report = load(run / "run_report.json", RunReport)
    shown = last[-1].split("error: ", 1)[1]
    assert shown.endswith(f" (the ranks' output: {run / 'train.log'})")
    assert report.status == "failed" and shown.startswith(f"{report.error} (")


def _logged_steps(run: Path) -> list[dict]:
    log = run / "steps.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a rank mid-run, then ``--resume``: the job restarts at the last checkpoint,
    so no step is lost and at most the steps since that checkpoint are done again (with the
    same losses, bit for bit), and the final record has every step once."""
    every, steps = 5, 40
    plan = _plan(tmp_path / "plan.json", world=2, strategy=LayerStrategy(dp="zero1"))
    run = tmp_path / "run"
    command = [_partita(), "train", "--plan", str(plan), "--model", "gpt-tiny"]
    command += ["--steps", str(steps), "--checkpoint-every", str(every), "--timeout", "10"]
    command += ["--run-dir", str(run)]
    code, stderr, elapsed = _train_and_fault_rank_1(
        command, fault="killed", ready=lambda: len(_logged_steps(run)) >= every + 2
    )
    assert code != 0 and elapsed < 90, stderr[-2000:]
    before = _logged_steps(run)  # what the killed run finished
    assert len(before) < steps, "the run ended before the kill"
    latest = latest_checkpoint(run)
    assert latest is not None
    saved_at = int(latest.name.split("-")[1])
    assert 0 <= len(before) - saved_at <= every  # redone after resuming: at most an interval

    done = _train("--resume", str(run), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = load(run / "run_report.json", RunReport)
    assert report.status == "completed" and report.resumed_from_step == saved_at
    assert [s.step for s in report.steps] == list(range(steps))
    again = _logged_steps(run)[len(before) :]
    assert [s["step"] for s in again] == list(range(saved_at, steps))
    # Steps before the checkpoint keep their record; those redone match the killed run's.
    assert [s.loss for s in report.steps[: len(before)]] == [s["loss"] for s in before]


def test_resume_refuses_what_is_not_a_run_folder(tmp_path: Path) -> None:
    done = _train("--resume", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"partita train: error: --resume: {tmp_path} is not a run folder (no run_report.json)"
    ]


def test_resume_keeps_the_runs_settings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    plan = _plan(run / "plan.json", world=2, strategy=LayerStrategy())
    report = RunReport(
        model="gpt-tiny",
        plan_sha256=content_hash(plan),
        world_size=2,
        backend="gloo",
        device="cpu",
        status="failed",
        unit="tokens",
        steps=(),
        peak_memory=(),
        memory_method="",
        error="rank 1 was killed by signal 9",
        settings=TrainingSettings(steps=10, lr=1e-3),
    )
    save(report, run / "run_report.json")
    done = _train("--resume", str(run), "--lr", "0.01")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "partita train: error: --lr: a resumed run keeps its own (lr 0.001)"
    ]


def test_a_run_folder_is_one_runs_and_sigterm_leaves_it_interrupted(tmp_path: Path) -> None:
    """While a run trains, a second run into its folder is refused naming the first; SIGTERM
    to ``partita train`` alone (as a batch scheduler sends it) stops every rank, says so in
    one line and leaves the report ``interrupted``."""
    plan = _plan(tmp_path / "plan.json", world=2, strategy=LayerStrategy())
    run = tmp_path / "run"
    command = [_partita(), "train", "--plan", str(plan), "--model", "gpt-tiny"]
    command += ["--steps", "100000", "--timeout", "10", "--run-dir", str(run)]
    first = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_logged_steps(run)) < 2:
            time.sleep(0.2)
        assert len(_logged_steps(run)) >= 2, "the first run did not start training"
        second = _train(*command[2:])
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"partita train: error: --run-dir: {run} is in use by another partita train "
            f"(pid {first.pid} on {os.uname().nodename}, since "
            + second.stderr.split(", since ", 1)[1].strip()
        ]
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"partita train: interrupted by SIGTERM (the ranks' output: {run / 'train.log'})"
    )
    assert _worker_pids(first.pid) == {}
    report = load(run / "run_report.json", RunReport)
    assert report.status == "interrupted" and report.error == "interrupted by SIGTERM"
    assert "Traceback" not in stderr

"""The CLI end to end over the cases in ``cli_cases.py``: ``partita train`` (after ``partita
profile`` and ``partita plan`` for a searched plan) writes a completed run report with every
rank's peak memory, and the losses equal one process's on the same model, seed, data and batch.

The two-node case starts two torchrun agents on 127.0.0.1 that meet through the c10d
rendezvous; each runs ``partita train`` as its ranks. CUDA cases are skipped, with the reason,
where there are not enough GPUs; the others hide the GPUs and run gloo on CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from partita.formats import Plan, RunReport, content_hash, load, save

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from cli_cases import CASES, CliCase, Search, one_process_plan

RUN_TIMEOUT_S = 240  # one command; the whole file: 2-3.5 min on 2 shared cores (load 2-10)
LOSS_RTOL = {False: 1e-5, True: 1e-4}  # gloo on CPU; NCCL against one GPU process
TORCHRUN_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def _env(*, cuda: bool) -> dict[str, str]:
    """This environment minus a surrounding torchrun's; no GPUs unless the case wants them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in TORCHRUN_VARS and not k.startswith(("MASTER_", "TORCHELASTIC_"))
    }
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TORCH_CPP_LOG_LEVEL="ERROR")
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _shown(command: Sequence[str]) -> str:
    return " ".join(command)


def _run(command: Sequence[str], *, cuda: bool = False) -> str:
    """Run a command to completion within the timeout (then kill it and every process it
    started); fail naming it and the end of its output."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cuda=cuda),
        start_new_session=True,  # its own process group: torchrun's ranks go with it
    )
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {RUN_TIMEOUT_S} s: {_shown(command)}\n{stderr[-3000:]}")
    if process.returncode != 0:
        output = stdout[-1500:] + stderr[-3000:]
        pytest.fail(f"exit {process.returncode}: {_shown(command)}\n{output}")
    return stderr


def _data(case_data: str) -> str:
    if case_data == "synthetic":
        return "synthetic"
    from partita.models.text_data import sample_text_path

    return str(sample_text_path())


def _train_arguments(*, plan: Path, model: str, steps: int, data: str, run_dir: Path) -> list[str]:
    return [
        "train",
        "--plan",
        str(plan),
        "--model",
        model,
        "--steps",
        str(steps),
        "--data",
        _data(data),
        "--run-dir",
        str(run_dir),
        "--timeout",
        "60",
    ]


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One hardware profile (2 gloo ranks) and one model profile of gpt-tiny, at tiny sizes."""
    folder = tmp_path_factory.mktemp("profiles")
    paths = {k: folder / f"{k}.json" for k in ("model", "hardware", "model_profile")}
    partita = _partita()
    _run([partita, "describe", "gpt-tiny", "--out", str(paths["model"])])
    _run(
        [
            partita,
            "profile",
            "hardware",
            "--nproc",
            "2",
            "--backend",
            "gloo",
            "--quick",
            "--out",
            str(paths["hardware"]),
        ]
    )
    _run(
        [
            partita,
            "profile",
            "model",
            "--model",
            "gpt-tiny",
            "--batch-sizes",
            "1",
            "2",
            "4",
            "--tp",
            "1",
            "2",
            "--nproc",
            "2",
            "--device",
            "cpu",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--quiet",
            "--out",
            str(paths["model_profile"]),
        ]
    )
    return paths


@dataclass
class References:
    """One-process losses, trained once per (model, global batch, data, steps, device)."""

    folder: Path
    losses: dict[tuple[str, int, str, int, bool], list[float]] = field(default_factory=dict)

    def for_case(self, case: CliCase, num_layers: int) -> list[float]:
        key = (case.model, case.global_batch, case.data, case.steps, case.needs_cuda)
        if key not in self.losses:
            name = "-".join(str(part) for part in key)
            plan = save(
                one_process_plan(num_layers=num_layers, global_batch=case.global_batch),
                self.folder / f"{name}.json",
            )
            run_dir = self.folder / name
            arguments = _train_arguments(
                plan=plan, model=case.model, steps=case.steps, data=case.data, run_dir=run_dir
            )
            _run([_partita(), *arguments], cuda=case.needs_cuda)
            report = load(run_dir / "run_report.json", RunReport)
            self.losses[key] = [step.loss for step in report.steps]
        return self.losses[key]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> References:
    return References(folder=tmp_path_factory.mktemp("one-process"))


def _skip_without_gpus(case: CliCase) -> None:
    if not case.needs_cuda:
        return
    import torch

    needed = case.world_size
    if not torch.cuda.is_available():
        pytest.skip(f"{case.name}: needs {needed} CUDA devices (NCCL); CUDA is not available here")
    if torch.cuda.device_count() < needed:
        found = torch.cuda.device_count()
        pytest.skip(f"{case.name}: needs {needed} CUDA devices (NCCL); {found} here")


def _case_plan(case: CliCase, folder: Path, request: pytest.FixtureRequest) -> Path:
    """The case's plan file: written from code, or searched by ``partita plan``."""
    out = folder / "plan.json"
    if isinstance(case.plan, Plan):
        return save(case.plan, out)
    search: Search = case.plan
    paths = request.getfixturevalue("profiles")
    _run(
        [
            _partita(),
            "plan",
            "--hardware",
            str(paths["hardware"]),
            "--model-profile",
            str(paths["model_profile"]),
            "--model",
            str(paths["model"]),
            "--world-size",
            str(case.world_size),
            "--global-batch",
            str(search.global_batch),
            "--memory-gb",
            str(search.memory_gb),
            "--space",
            search.space,
            "--out",
            str(out),
        ]
    )
    return out


def _run_nodes(case: CliCase, arguments: list[str], logs: Path) -> None:
    """``case.nodes`` torchrun agents on 127.0.0.1, c10d rendezvous; kill all on timeout."""
    from partita.executor.launch import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    commands = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(case.nodes),
            "--nproc-per-node",
            str(case.nproc),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            f"{case.name}-{os.getpid()}",
            "--local-addr",
            "127.0.0.1",
            "--max-restarts",
            "0",
            # the installed script: `python -m partita.formats.cli` finds no commands
            _partita(),
            *arguments,
        ]
        for _ in range(case.nodes)
    ]  # --node-rank is not passed: the c10d rendezvous assigns ranks itself (and ignores it)
    agents = []
    for node, command in enumerate(commands):
        log = (logs / f"node{node}.log").open("w")
        agents.append(
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(cuda=case.needs_cuda),
                start_new_session=True,  # its own process group: the ranks die with it
            )
        )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
        time.sleep(0.2)
    timed_out = any(a.poll() is None for a in agents)
    for agent in agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
    codes = [a.returncode for a in agents]
    if timed_out or any(codes):
        what = f"timed out after {RUN_TIMEOUT_S} s" if timed_out else f"exit codes {codes}"
        tails = "\n".join(
            f"--- node {n}: {_shown(c)}\n{(logs / f'node{n}.log').read_text()[-2000:]}"
            for n, c in enumerate(commands)
        )
        pytest.fail(f"{case.name}: {what}\n{tails}")


def _max_relative_difference(losses: Sequence[float | None], reference: Sequence[float]) -> float:
    assert all(loss is not None for loss in losses), losses
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))  # type: ignore[operator]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_case_trains_and_reports(
    case: CliCase,
    tmp_path: Path,
    references: References,
    request: pytest.FixtureRequest,
) -> None:
    _skip_without_gpus(case)
    started = time.monotonic()
    plan_path = _case_plan(case, tmp_path, request)
    plan = load(plan_path, Plan)
    assert plan.world_size == case.world_size
    run_dir = tmp_path / "run"
    arguments = _train_arguments(
        plan=plan_path, model=case.model, steps=case.steps, data=case.data, run_dir=run_dir
    )
    if case.nodes == 1:
        _run([_partita(), *arguments, "--nproc", str(case.nproc)], cuda=case.needs_cuda)
    else:
        _run_nodes(case, arguments, tmp_path)
    elapsed = time.monotonic() - started

    report = load(run_dir / "run_report.json", RunReport)
    assert report.status == "completed"
    assert report.world_size == case.world_size and report.num_nodes == case.nodes
    assert report.backend == ("nccl" if case.needs_cuda else "gloo")
    assert report.plan_sha256 == content_hash(plan)
    assert content_hash(load(run_dir / "plan.json", Plan)) == content_hash(plan)
    assert [s.step for s in report.steps] == list(range(case.steps))
    assert sorted(m.rank for m in report.peak_memory) == list(range(case.world_size))
    assert all(m.peak_bytes > 0 for m in report.peak_memory)
    summary = f"{case.name}: {elapsed:.1f} s, plan world {plan.world_size}"
    if case.compare_losses:
        reference = references.for_case(case, num_layers=len(plan.layers))
        difference = _max_relative_difference([s.loss for s in report.steps], reference)
        summary += f", losses vs one process: max relative difference {difference:.2e}"
        assert difference <= LOSS_RTOL[case.needs_cuda], (summary, report.steps, reference)
    print(summary)

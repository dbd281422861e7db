"""Run a list of cases in one torchrun launch of gloo ranks (start-up dominates on 2 cores)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

LAUNCH_TIMEOUT_S = 1200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_cases(worker: Path, world: int, folder: Path, cases: list[dict]) -> dict[str, dict]:
    """Run ``worker CASES_JSON OUT_JSON`` on ``world`` gloo ranks; rank 0's results by name."""
    done = run_launch(worker, world, folder, cases)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((folder / f"out{world}.json").read_text())


def run_launch(
    worker: Path, world: int, folder: Path, cases: list[dict], *, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """The torchrun launch of ``launch_cases``, whatever its outcome; ``timeout_s`` is the
    ranks' process-group timeout."""
    (folder / f"cases{world}.json").write_text(json.dumps(cases))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(world),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(worker),
        str(folder / f"cases{world}.json"),
        str(folder / f"out{world}.json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PARTITA_CASE_TIMEOUT_S": str(timeout_s)}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, env=env, check=False
    )


def equality_failures(
    outcomes: dict[str, dict], names: list[str], *, steps: int | None = None
) -> dict[str, str]:
    """What went wrong in each named case of ``equality_worker``'s outcomes: an error, a
    parameter missing, a loss off by more than rtol 1e-5 (or ``steps`` losses not all
    there), parameters off by more than atol. Empty when every case equals one process."""
    failures = {}
    for name in names:
        outcome = outcomes[name]
        if "error" in outcome:
            failures[name] = outcome["error"][-1500:]
            continue
        problems = []
        if outcome["missing"]:
            problems.append(f"missing {outcome['missing']}")
        losses = outcome["losses"]
        if not losses or (steps is not None and len(losses) != steps):
            problems.append(f"{len(losses)} losses")
        elif outcome["loss_error"] > 1e-5:
            problems.append(f"loss error {outcome['loss_error']:.2e}")
        if outcome["param_error"] > 1.0:
            problems.append(f"parameters {outcome['param_error']:.2f} x atol off")
        if problems:
            failures[name] = "; ".join(problems)
    return failures

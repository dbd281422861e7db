"""partita.executor.comm: every step checked on 4 gloo ranks against a single-process reference.

The distributed part runs ``comm_worker.py`` under one torchrun job of 4 ranks (about 10 s on
two cores); see that module for what is compared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partita.executor import comm
from partita.models.attention import sdpa_attention

WORKER = Path(__file__).with_name("comm_worker.py")
DEADLINE_S = 180
GRACE_S = 20


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_torchrun(script: Path, nproc: int, deadline_s: float) -> tuple[int | None, str, str]:
    """``script`` under torchrun on ``nproc`` CPU ranks: (exit code or None on timeout, out, err).

    On the deadline the agent gets SIGTERM, on which it stops its ranks (each rank runs in a
    session of its own, so killing the agent's process group would not reach them), then
    SIGKILL with its whole process group.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(script),
    ]
    agent = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = agent.communicate(timeout=deadline_s)
        return agent.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        agent.terminate()
        try:
            stdout, stderr = agent.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            stdout, stderr = agent.communicate()
        return None, stdout, stderr


def test_steps_match_single_process_reference_on_four_gloo_ranks() -> None:
    code, stdout, stderr = run_torchrun(WORKER, 4, DEADLINE_S)
    print(stdout)
    assert code is not None, f"torchrun did not finish within {DEADLINE_S}s:\n{stdout}\n{stderr}"
    assert code == 0, f"torchrun exited {code}:\n{stdout}\n{stderr}"
    assert "failures on all ranks: 0" in stdout, stdout + stderr


@pytest.mark.parametrize(
    "step",
    [
        lambda x: comm.copy_to_region(x, None),
        lambda x: comm.reduce_from_region(x, None),
        lambda x: comm.gather_from_region(x, None, -1),
        lambda x: comm.scatter_to_region(x, None, -1),
        lambda x: comm.gather_sequence(x, None),
        lambda x: comm.reduce_scatter_sequence(x, None),
        lambda x: comm.split_sequence(x, None),
        lambda x: comm.all_gather_sequence_no_reduce(x, None),
        lambda x: comm.seq_to_heads(x, None),
        lambda x: comm.heads_to_seq(x, None),
        lambda x: comm.ulysses_attention(sdpa_attention, None),
    ],
)
def test_no_default_group(step) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="process group is required"):
        step(torch.zeros(2, 2, 2, 2))

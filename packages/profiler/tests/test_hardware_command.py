"""`partita profile hardware` end to end on gloo CPU ranks: the file it writes, two runs that
agree, and user mistakes refused in one line before anything starts."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from profiler_testing import unwritable_folder

from partita.formats import HardwareProfile, load
from partita.profiler.hardware_plan import QUICK, QUICK_SIZES

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")
RUN_TIMEOUT_S = 240
# Two runs on a shared machine also differ by what else runs between them, which the spread
# within a run cannot see: a point may differ by its two spreads plus this factor.
BETWEEN_RUNS_MARGIN = 1.25


def _partita() -> str:
    script = shutil.which("partita", path=str(Path(sys.executable).parent))
    assert script is not None
    return script


def _profile(out: Path, *arguments: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [_partita(), "profile", "hardware", "--out", str(out), *arguments],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "LOCAL_RANK"},
    )
    return done, time.monotonic() - start


def _under_users_torchrun(out: Path) -> subprocess.CompletedProcess[str]:
    """As on a cluster: the user starts torchrun, which runs the CLI as each rank."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"),
            *("2", _partita(), "profile", "hardware", "--quick", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[HardwareProfile]:
    """One run launched by the command, one inside a torchrun the user started."""
    folder = tmp_path_factory.mktemp("hardware")
    done, _ = _profile(folder / "hw0.json", "--nproc", "2", "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    # The summary table and the progress bar reach the user.
    assert "collective" in done.stderr and "bandwidth" in done.stderr
    assert "[ 1/" in done.stderr and "all_reduce 2 ranks consecutive" in done.stderr
    done = _under_users_torchrun(folder / "hw1.json")
    assert done.returncode == 0, done.stderr[-3000:]
    return [load(folder / f"hw{index}.json", HardwareProfile) for index in range(2)]


def test_2_gloo_ranks_quick_writes_a_complete_profile(two_runs: list[HardwareProfile]) -> None:
    profile = two_runs[0]
    assert (profile.origin, profile.backend, profile.world_size) == ("measured", "gloo", 2)
    assert (profile.num_nodes, profile.devices_per_node) == (1, 2)
    assert profile.device.kind == "cpu"
    # Copy bandwidth of a CPU core: between 100 MB/s and 1 TB/s.
    assert 1e8 < (profile.device.memory_bandwidth_bytes_per_s or 0) < 1e12
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert profile.device.memory_bytes == physical // 2  # RAM shared by the node's 2 ranks
    assert profile.measurement is not None
    assert (profile.measurement.warmup, profile.measurement.repeats) == (
        QUICK.warmup,
        QUICK.repeats,
    )
    assert "torch" in profile.tools
    entries = {(c.op, c.group_size, c.placement, c.scope): c for c in profile.collectives}
    assert set(entries) == {(op, 2, "consecutive", "intra_node") for op in OPS}
    grows = 0
    for entry in entries.values():
        assert entry.origin == "measured"
        assert entry.bandwidth_bytes_per_s > 0 and entry.latency_s >= 0
        assert [s.bytes for s in entry.samples] == list(QUICK_SIZES)
        assert all(s.time_s > 0 and s.spread >= 0 for s in entry.samples)
        grows += entry.samples[-1].time_s > entry.samples[0].time_s
        # The fit passes near its largest point (bandwidth-bound) within that point's noise.
        last = entry.samples[-1]
        predicted = entry.latency_s + last.bytes / entry.bandwidth_bytes_per_s
        assert abs(math.log(predicted / last.time_s)) < math.log(3 + 3 * last.spread), entry
    # Monotone-ish: 16 MiB takes longer than 4 KiB for (nearly) every op.
    assert grows >= len(OPS) - 1, entries
    assert [c.dtype for c in profile.compute] == ["fp32"]
    assert profile.compute[0].flops_per_s > 1e8
    assert profile.overlap.compute >= 1 and profile.overlap.communication >= 1


def test_2_gloo_ranks_measure_the_optimizer_step_and_the_work_of_ddp_and_fsdp(
    two_runs: list[HardwareProfile],
) -> None:
    for profile in two_runs:
        optimizer = profile.optimizer
        assert optimizer is not None and optimizer.origin == "measured"
        # An AdamW step over 64 tensors of 4,096 fp32 elements takes between 10 us and 1 s.
        step = (
            optimizer.latency_s + 64 * optimizer.per_tensor_s + 64 * 4096 * 4 * optimizer.per_byte_s
        )
        assert 1e-5 < step < 1.0, optimizer
        assert optimizer.per_tensor_s > 0 or optimizer.per_byte_s > 0
    # DDP's and FSDP's work may fit as zero on a quiet machine, but is recorded on every run.
    recorded = [
        work for p in two_runs for work in (p.fsdp_gather, p.fsdp_reduce_scatter, p.ddp_reducer)
    ]
    assert all(work is not None for work in recorded), recorded
    for work in recorded:
        assert work is not None
        unit = work.latency_s + 16 * work.per_tensor_s + 16 * 64 * 64 * 4 * work.per_byte_s
        assert unit < 1.0, work  # 16 tensors of 64 kB in all: under a second of overhead
    for profile in two_runs:  # a meeting after compute: under 0.1 s and at most the compute
        assert profile.sync is not None, profile
        assert profile.sync.latency_s < 0.1 and profile.sync.compute_fraction <= 1.0, profile


def test_2_gloo_ranks_two_runs_agree_within_their_spread(two_runs: list[HardwareProfile]) -> None:
    """Agree: at each (op, size), the two medians differ by at most the two runs' recorded
    spreads (IQR/median) plus BETWEEN_RUNS_MARGIN, for at least half the points (others may
    have met a burst of other work on the shared cores). The spreads themselves must be those
    of a measurement, not of noise, so the check cannot pass by recording huge spreads."""
    first, second = two_runs
    ratios, spreads = [], []
    for a, b in zip(first.collectives, second.collectives, strict=True):
        assert (a.op, a.group_size, a.placement) == (b.op, b.group_size, b.placement)
        for sa, sb in zip(a.samples, b.samples, strict=True):
            allowed = math.log1p(sa.spread) + math.log1p(sb.spread) + math.log(BETWEEN_RUNS_MARGIN)
            ratios.append(abs(math.log(sa.time_s / sb.time_s)) / allowed)
            spreads += [sa.spread, sb.spread]
    # Matmul throughput is one more point.
    ca, cb = first.compute[0], second.compute[0]
    allowed = math.log1p(ca.spread) + math.log1p(cb.spread) + math.log(BETWEEN_RUNS_MARGIN)
    ratios.append(abs(math.log(ca.flops_per_s / cb.flops_per_s)) / allowed)
    assert statistics.median(ratios) <= 1.0, (ratios, spreads)
    assert statistics.median(spreads) < 1.0, spreads


def test_4_gloo_ranks_quick_measures_every_group_and_placement(tmp_path: Path) -> None:
    out = tmp_path / "hw4.json"
    done, seconds = _profile(out, "--nproc", "4", "--quick", "--sizes", "16K,256K,4M")
    assert done.returncode == 0, done.stderr[-3000:]
    profile = load(out, HardwareProfile)
    keys = {(c.op, c.group_size, c.placement) for c in profile.collectives}
    for op in OPS[:-1]:
        assert {(op, 2, "consecutive"), (op, 2, "strided"), (op, 4, "consecutive")} <= keys
    assert {("p2p", 2, "consecutive"), ("p2p", 2, "strided")} <= keys
    assert all(c.scope == "intra_node" for c in profile.collectives)
    assert all(
        [s.bytes for s in c.samples] == [16384, 262144, 4 << 20] for c in profile.collectives
    )
    assert seconds < 120


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--nproc", "2", "--backend", "mpi"], "--backend: expected one of auto, gloo, nccl"),
        (["--nproc", "2", "--backend", "nccl"], "--backend nccl needs CUDA"),
        (["--nproc", "2", "--sizes", "4K"], "at least two distinct sizes"),
    ],
)
def test_bad_input_exits_2_in_one_line(arguments: list[str], message: str, tmp_path: Path) -> None:
    if "nccl" in arguments:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    done, _ = _profile(tmp_path / "hw.json", *arguments)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("partita profile: error: "), done.stderr
    assert message in lines[0]
    assert not (tmp_path / "hw.json").exists()


def test_an_unwritable_out_is_refused_before_launch(tmp_path: Path) -> None:
    done, seconds = _profile(unwritable_folder(tmp_path) / "hw.json", "--nproc", "2")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("partita profile: error: --out: cannot write in")
    assert "ranks" not in done.stderr  # nothing was launched
    assert seconds < 60

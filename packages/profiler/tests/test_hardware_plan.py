"""The measurement plan, the profile built from raw timings, and the device/timer choices,
all without starting ranks."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from profiler_testing import unwritable_folder

from partita.formats import HardwareProfile, dumps, loads
from partita.profiler import hardware_command
from partita.profiler.hardware_plan import (
    Settings,
    build_tasks,
    element_count,
    group_sizes,
    groups_of,
    scope_of,
)
from partita.profiler.hardware_report import RankResults, build_profile, layout_of
from partita.profiler.hardware_timing import (
    CudaEventTimer,
    PerfCounterTimer,
    choose_backend,
    device_for,
    matmul_dtypes,
    timer_for,
)


def test_group_sizes_are_powers_of_two_divisors_and_the_world() -> None:
    assert group_sizes(2) == (2,)
    assert group_sizes(4) == (2, 4)
    assert group_sizes(6) == (2, 3, 4, 6)
    assert group_sizes(8) == (2, 4, 8)


def test_groups_are_consecutive_or_strided_like_mesh_axes() -> None:
    assert groups_of(8, 2, "consecutive") == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert groups_of(8, 2, "strided") == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert groups_of(8, 4, "strided") == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert groups_of(6, 4, "consecutive") == ((0, 1, 2, 3),)  # ranks 4, 5 sit it out


def test_the_plan_has_every_op_once_per_size_and_placement() -> None:
    keys = [task.key for task in build_tasks(4)]
    assert len(keys) == len(set(keys))
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert {k for k in keys if k.startswith(op + "/")} == {
            f"{op}/2/consecutive",
            f"{op}/2/strided",
            f"{op}/4/consecutive",  # strided over the whole world is the same group
        }
    assert {k for k in keys if k.startswith("p2p/")} == {"p2p/2/consecutive", "p2p/2/strided"}
    assert [t.key for t in build_tasks(2) if t.op == "p2p"] == ["p2p/2/consecutive"]


def test_scope_follows_the_nodes_of_the_ranks() -> None:
    nodes = (0, 0, 1, 1)
    assert scope_of((0, 1), nodes) == "intra_node"
    assert scope_of((0, 2), nodes) == "inter_node"


def test_element_count_splits_evenly_over_the_group() -> None:
    assert element_count(4096, 2) == 1024
    assert element_count(4096, 3) == 1023
    assert element_count(1, 4) == 4


def test_settings_refuse_what_cannot_be_fitted() -> None:
    with pytest.raises(ValueError, match="two distinct sizes"):
        Settings(sizes=(4096, 4096))
    with pytest.raises(ValueError, match="--repeats must be >= 3"):
        Settings(repeats=2)
    with pytest.raises(ValueError, match="--warmup"):
        Settings(warmup=-1)


def _rank(rank: int, node: int, slow: float = 1.0) -> RankResults:
    results = RankResults(
        rank=rank, node=node, device_kind="cpu", device_name="cpu", memory_bytes=8 << 30
    )
    for task in build_tasks(4):
        for nbytes in (4096, 65536, 1 << 20):
            latency, bandwidth = 50e-6 * task.group_size, 1e9 / task.group_size
            base = latency + nbytes / bandwidth
            results.collectives[(task.key, nbytes)] = [base * slow * f for f in (1.0, 1.1, 0.9)]
    results.matmul_flops["fp32"] = [40e9, 42e9, 38e9]
    results.overlap = {
        "compute_alone": [1.0, 1.0],
        "compute_together": [1.3, 1.3],
        "communication_alone": [2.0, 2.0],
        "communication_together": [1.0, 1.0],  # faster together: clipped to 1
    }
    return results


def test_the_profile_takes_the_last_arrival_of_the_slowest_group() -> None:
    # Rank 1 is twice as slow as rank 0; ranks 2 and 3 (node 1) three times.
    slowdowns = (1.0, 2.0, 3.0, 3.0)
    ranks = [_rank(r, node=r // 2, slow=slow) for r, slow in enumerate(slowdowns)]
    layout = layout_of(ranks, backend="gloo", local_world_size=2)
    profile, warnings = build_profile(
        name="t", tasks=build_tasks(4), results=ranks, layout=layout, settings=Settings(), tools={}
    )
    assert warnings == []
    assert loads(dumps(profile), HardwareProfile) == profile  # valid against the format
    assert (profile.num_nodes, profile.devices_per_node) == (2, 2)
    entries = {(c.op, c.group_size, c.placement, c.scope): c for c in profile.collectives}
    # Consecutive pairs (0, 1), (2, 3) stay on a node; strided pairs (0, 2), (1, 3) cross nodes.
    consecutive = entries[("all_reduce", 2, "consecutive", "intra_node")]
    strided = entries[("all_reduce", 2, "strided", "inter_node")]
    # In a group the fastest rank counts (no arrival skew); over groups, the slowest group.
    for entry, slow in ((consecutive, 3.0), (strided, 2.0)):
        assert entry.latency_s == pytest.approx(slow * 100e-6, rel=1e-6)
        assert entry.bandwidth_bytes_per_s == pytest.approx(0.5e9 / slow, rel=1e-6)
        assert [s.bytes for s in entry.samples] == [4096, 65536, 1 << 20]
        assert entry.samples[0].spread == pytest.approx(0.1)
    assert profile.compute[0].flops_per_s == 40e9
    assert (profile.overlap.compute, profile.overlap.communication) == (pytest.approx(1.3), 1.0)


def _with_wrapped_and_sync(results: RankResults, slow: float) -> RankResults:
    """Rounds of compute then a meeting cost 0.3 ms + a quarter of the compute beyond their
    parts; DDP costs 1 ms + 10 us a tensor beyond its all-reduce (the profile's fit)."""
    for count in (0, 2, 8):
        compute = count * 1e-3 * slow
        results.sync[count] = {
            "rounds": [compute + 0.5e-3 + 0.3e-3 + 0.25 * compute],
            "compute": [compute],
            "collective": [0.5e-3],
        }
    for tensors, elements in ((2, 4160), (16, 4160), (4, 65792)):
        nbytes = 4 * tensors * elements * 4  # four units
        all_reduce = 200e-6 + nbytes / 0.25e9  # the fit of a 4-rank all_reduce above
        results.wrapped[(tensors, elements)] = {
            "plain_forward": [1e-3],
            "plain_backward": [2e-3],
            "ddp_forward": [1e-3],
            "ddp_backward": [2e-3 + all_reduce + 1e-3 + 4 * tensors * 10e-6],
            "fsdp_forward": [1e-3],
            "fsdp_backward": [2e-3],
        }
    return results


def test_ddps_reducer_and_the_cost_of_meeting_are_fitted_beyond_their_parts() -> None:
    ranks = [_with_wrapped_and_sync(_rank(r, node=0), slow=1.0 + r) for r in range(4)]
    layout = layout_of(ranks, backend="gloo", local_world_size=4)
    profile, _ = build_profile(
        name="t", tasks=build_tasks(4), results=ranks, layout=layout, settings=Settings(), tools={}
    )
    assert profile.sync is not None and profile.ddp_reducer is not None
    # The slowest rank (4x the compute) counts: 0.3 ms + 0.25 of its compute.
    assert profile.sync.latency_s == pytest.approx(0.3e-3, rel=1e-3)
    assert profile.sync.compute_fraction == pytest.approx(0.25, rel=1e-3)
    reducer = profile.ddp_reducer
    assert (reducer.latency_s, reducer.per_tensor_s) == pytest.approx((1e-3, 10e-6), rel=1e-3)
    assert reducer.per_byte_s == pytest.approx(0.0, abs=1e-15)


def test_uneven_nodes_are_refused() -> None:
    ranks = [_rank(0, 0), _rank(1, 0), _rank(2, 0), _rank(3, 1)]
    with pytest.raises(ValueError, match="same number of ranks"):
        layout_of(ranks, backend="gloo", local_world_size=2)


def test_backend_choice() -> None:
    assert choose_backend("auto", cuda_available=True) == "nccl"
    assert choose_backend("auto", cuda_available=False) == "gloo"
    assert choose_backend("gloo", cuda_available=True) == "gloo"
    with pytest.raises(ValueError, match="needs CUDA"):
        choose_backend("nccl", cuda_available=False)
    with pytest.raises(ValueError, match="expected one of auto, gloo, nccl"):
        choose_backend("mpi", cuda_available=True)


def test_a_cuda_rank_times_with_events_and_measures_three_dtypes() -> None:
    # A device object needs no CUDA; only the choice is checked here.
    cuda = device_for("nccl", local_rank=3)
    assert cuda == torch.device("cuda", 3)
    assert isinstance(timer_for(cuda), CudaEventTimer)
    assert matmul_dtypes(cuda) == ("fp32", "bf16", "fp16")
    cpu = device_for("gloo", local_rank=3)
    assert cpu == torch.device("cpu")
    assert isinstance(timer_for(cpu), PerfCounterTimer)
    assert matmul_dtypes(cpu) == ("fp32",)
    assert timer_for(cpu).seconds(lambda: sum(range(1000))) > 0


def test_sizes_parse_with_binary_suffixes() -> None:
    assert hardware_command.parse_sizes("1M,4K, 4096,64KiB") == (4096, 65536, 1 << 20)
    with pytest.raises(ValueError, match="'ten' is not a size"):
        hardware_command.parse_sizes("4K,ten")
    with pytest.raises(ValueError, match="'0' is not a size"):
        hardware_command.parse_sizes("0,4K")


def test_an_unwritable_out_is_refused(tmp_path: Path) -> None:
    hardware_command.check_writable(tmp_path / "new" / "deeper" / "hw.json")  # save makes folders
    with pytest.raises(ValueError, match="is a directory"):
        hardware_command.check_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        hardware_command.check_writable(tmp_path / "file" / "hw.json")
    with pytest.raises(ValueError, match="cannot write"):
        hardware_command.check_writable(unwritable_folder(tmp_path) / "hw.json")


def _args(**changes: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hardware_command.add_arguments(parser)
    args = parser.parse_args(["--out", "hw.json"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nproc": 0}, "--nproc must be at least 1"),
        ({}, "--nproc is required outside torchrun"),
        ({"nproc": 2, "backend": "mpi"}, "--backend"),
        ({"nproc": 2, "repeats": 1}, "--repeats"),
        ({"nproc": 2, "timeout": 0.0}, "--timeout"),
    ],
)
def test_user_mistakes_raise_before_launch(
    changes: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match=message):
        hardware_command.run(_args(**changes))


def test_each_timed_optimizer_step_finds_the_caches_written_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In training the step's passes went through the activations since the last optimizer
    step: each timed repeat follows a write of ``EVICT_BYTES``, outside its time."""
    import torch.distributed as dist

    from partita.profiler import hardware_measure as measure
    from partita.profiler.hardware_plan import QUICK

    calls: list[str] = []
    monkeypatch.setattr(measure, "cache_evictor", lambda device: lambda: calls.append("evict"))

    class Timer:
        def seconds(self, call: object) -> float:
            calls.append("time")
            call()  # type: ignore[operator]
            return 1e-3

    from partita.profiler import model_measure

    monkeypatch.setattr(model_measure, "host_cores", lambda device: 1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        results = []
        for rank in (0, 1):  # the host's one core lets rank 0 time; rank 1 only meets
            context = measure.Context(torch.device("cpu"), Timer(), QUICK, rank, dist.group.WORLD)  # type: ignore[arg-type]
            results.append(measure.measure_optimizer_step(context, quick=True))
    finally:
        dist.destroy_process_group()
    assert set(results[0]) == set(measure.OPTIMIZER_SHAPES) and results[1] == {}
    assert calls == ["evict", "time"] * (QUICK.matmul_repeats * len(measure.OPTIMIZER_SHAPES))


def test_the_optimizer_fit_reads_only_the_ranks_that_timed_it() -> None:
    from partita.profiler.hardware_measure import OPTIMIZER_SHAPES
    from partita.profiler.hardware_report import RankResults, _optimizer

    def rank(number: int, seconds: float | None) -> RankResults:
        timed = {} if seconds is None else {s: [seconds * s[0]] * 5 for s in OPTIMIZER_SHAPES}
        return RankResults(number, 0, "cpu", "cpu", 1 << 30, optimizer=timed)

    warnings: list[str] = []
    fit = _optimizer([rank(0, 1e-3), rank(1, 2e-3), rank(2, None), rank(3, None)], warnings)
    assert fit is not None and fit.per_tensor_s == pytest.approx(2e-3)  # the slower timer
    assert _optimizer([rank(0, None)], warnings) is None

"""Spec-sheet profiles: presets, spec files, ring costs and the analytic model profile."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import (
    CollectiveProfile,
    HardwareProfile,
    LayerStrategy,
    ModelDescription,
    ModelProfile,
    PipelineConfig,
    Plan,
    load,
    save,
)
from partita.formats.common import MeshAxis
from partita.simulator.compute_model import ComputeModel
from partita.simulator.placement import group_placement
from partita.simulator.specsheet import (
    COLLECTIVE_OPS,
    DEFAULT_EFFICIENCIES,
    DEFAULT_OVERLAP_COMMUNICATION,
    DEFAULT_OVERLAP_COMPUTE,
    LAYER_OVERHEAD_S,
    PRESETS,
    ClusterSpec,
    collective_group_sizes,
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_DESCRIPTION = REPO / "docs" / "examples" / "model_description.json"
SIMULATOR_SOURCE = REPO / "packages" / "simulator" / "src" / "partita" / "simulator"

AXES: tuple[MeshAxis, ...] = ("pp", "dp", "tp")
GB = 10**9
INTRA_BW, INTRA_LAT = 100e9, 1e-6
INTER_BW, INTER_LAT = 10e9, 4e-6


def two_by_four() -> ClusterSpec:
    """2 nodes x 4 devices with round numbers, for hand-computed costs."""
    return ClusterSpec(
        name="test 2x4",
        device_name="test gpu",
        devices_per_node=4,
        num_nodes=2,
        memory_bytes=16 * GB,
        peak_flops_per_s={"fp32": 10e12, "bf16": 100e12},
        intra_node_bandwidth_bytes_per_s=INTRA_BW,
        intra_node_latency_s=INTRA_LAT,
        inter_node_bandwidth_bytes_per_s=INTER_BW,
        inter_node_latency_s=INTER_LAT,
    )


def entry(
    profile: HardwareProfile, op: str, size: int, placement: str, scope: str
) -> CollectiveProfile:
    found = [
        c
        for c in profile.collectives
        if (c.op, c.group_size, c.placement, c.scope) == (op, size, placement, scope)
    ]
    assert len(found) == 1, (op, size, placement, scope, found)
    return found[0]


def time_s(collective: CollectiveProfile, nbytes: float) -> float:
    return collective.latency_s + nbytes / collective.bandwidth_bytes_per_s


@pytest.fixture
def description() -> ModelDescription:
    loaded = load(EXAMPLE_DESCRIPTION, ModelDescription)
    assert isinstance(loaded, ModelDescription)
    return loaded


# --- presets and specs -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["h100-sxm", "a100-sxm-80g", "cpu-gloo-local"])
def test_presets_exist_and_load_by_name(name: str) -> None:
    assert load_cluster_spec(name) == PRESETS[name]
    assert PRESETS[name].name == name


def test_h100_preset_uses_published_dense_numbers() -> None:
    h100 = PRESETS["h100-sxm"]
    assert h100.devices_per_node == 8
    assert h100.memory_bytes == 80 * GB
    assert h100.peak_flops_per_s == {"fp32": 67e12, "bf16": 989.5e12, "fp16": 989.5e12}
    assert h100.intra_node_bandwidth_bytes_per_s == 450e9
    assert h100.inter_node_bandwidth_bytes_per_s == 50e9
    assert h100.backend == "nccl"


def test_with_changes_makes_a_checked_copy() -> None:
    base = PRESETS["h100-sxm"]
    study = base.with_changes(
        num_nodes=16, inter_node_bandwidth_bytes_per_s=2 * base.inter_node_bandwidth_bytes_per_s
    )
    assert (study.num_nodes, study.world_size) == (16, 128)
    assert study.inter_node_bandwidth_bytes_per_s == 100e9
    assert base.num_nodes == 1
    with pytest.raises(ValueError, match="num_nodes: must be >= 1"):
        base.with_changes(num_nodes=0)


def test_spec_copies_its_flops_so_a_caller_cannot_change_it() -> None:
    flops = {"bf16": 1e12}
    spec = two_by_four().with_changes(peak_flops_per_s=flops)
    flops["bf16"] = 5.0
    assert spec.peak_flops_per_s == {"bf16": 1e12}


def test_nccl_needs_cuda() -> None:
    with pytest.raises(ValueError, match="backend: backend 'nccl' needs device_kind 'cuda'"):
        two_by_four().with_changes(device_kind="cpu")


# --- spec files --------------------------------------------------------------------------------


def write(tmp_path: Path, data: object, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def full_spec_dict() -> dict[str, object]:
    spec = two_by_four()
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def test_spec_file_round_trips(tmp_path: Path) -> None:
    assert load_cluster_spec(write(tmp_path, full_spec_dict())) == two_by_four()


def test_spec_file_can_start_from_a_preset(tmp_path: Path) -> None:
    path = write(tmp_path, {"preset": "h100-sxm", "num_nodes": 16, "name": "h100 x128"})
    spec = load_cluster_spec(str(path))
    assert spec == PRESETS["h100-sxm"].with_changes(num_nodes=16, name="h100 x128")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"inter_node_bandwidth_bytes_per_s": -1.0}, "inter_node_bandwidth_bytes_per_s", "> 0"),
        ({"num_nodes": 2.0}, "num_nodes", "expected an integer"),
        ({"devices_per_node": True}, "devices_per_node", "expected an integer"),
        ({"intra_node_latency_s": "2 us"}, "intra_node_latency_s", "expected a number"),
        ({"peak_flops_per_s": {"tf32": 1e12}}, "peak_flops_per_s.tf32", "unknown dtype"),
        ({"peak_flops_per_s": {"bf16": 0}}, "peak_flops_per_s.bf16", "> 0"),
        ({"peak_flops_per_s": []}, "peak_flops_per_s", "expected an object"),
        ({"backend": "mpi"}, "backend", "expected one of"),
        ({"overlap_compute": 0.9}, "overlap_compute", ">= 1"),
        ({"memory_gb": 80}, "memory_gb", "unknown field"),
        ({"preset": "h200"}, "preset", "unknown preset"),
    ],
)
def test_bad_spec_file_names_file_and_field(
    tmp_path: Path, change: dict[str, object], field: str, message: str
) -> None:
    path = write(tmp_path, {**full_spec_dict(), **change}, name="bad_spec.json")
    with pytest.raises(ValueError) as caught:
        load_cluster_spec(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {field}: "), text
    assert message in text


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = full_spec_dict()
    del data["memory_bytes"]
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=r"spec\.json: missing required field 'memory_bytes'"):
        load_cluster_spec(path)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nosuch\.json: not a preset .* cannot read"):
        load_cluster_spec(tmp_path / "nosuch.json")
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_cluster_spec(bad_json)
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        load_cluster_spec(write(tmp_path, [1], name="list.json"))


# --- hardware profile --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("num_nodes", [1, 3, 32])
def test_hardware_profiles_pass_the_format_round_trip(
    tmp_path: Path, name: str, num_nodes: int
) -> None:
    profile = hardware_profile_from_spec(PRESETS[name].with_changes(num_nodes=num_nodes))
    save(profile, tmp_path / "hw.json")
    assert load(tmp_path / "hw.json", HardwareProfile) == profile
    assert profile.origin == "spec_sheet"
    assert all(c.origin == "spec_sheet" and c.samples == () for c in profile.collectives)
    assert profile.measurement is None


def test_hardware_profile_copies_the_spec() -> None:
    profile = hardware_profile_from_spec(two_by_four())
    assert (profile.num_nodes, profile.devices_per_node, profile.backend) == (2, 4, "nccl")
    assert profile.device.kind == "cuda"
    assert profile.device.memory_bytes == 16 * GB
    assert [(c.dtype, c.flops_per_s) for c in profile.compute] == [
        ("fp32", 10e12),
        ("bf16", 100e12),
    ]
    assert profile.overlap.compute == DEFAULT_OVERLAP_COMPUTE
    assert profile.overlap.communication == DEFAULT_OVERLAP_COMMUNICATION
    custom = hardware_profile_from_spec(two_by_four().with_changes(overlap_compute=1.5))
    assert custom.overlap.compute == 1.5


def test_group_sizes() -> None:
    assert collective_group_sizes(two_by_four()) == (2, 4, 8)
    # World 12: powers of two, then the divisors 3, 6 and 12 that plans' groups can have.
    twelve = (2, 3, 4, 6, 8, 12)
    assert collective_group_sizes(two_by_four().with_changes(num_nodes=3)) == twelve
    six = two_by_four().with_changes(devices_per_node=6, num_nodes=2)
    assert collective_group_sizes(six) == twelve
    assert collective_group_sizes(two_by_four().with_changes(devices_per_node=1, num_nodes=1)) == ()


def test_all_reduce_across_nodes_runs_a_ring_per_nic() -> None:
    profile = hardware_profile_from_spec(two_by_four())
    ring = entry(profile, "all_reduce", 8, "consecutive", "inter_node")
    # Ring all-reduce over 8 ranks: 2*7 steps, each hop carries 2*7/8 of the bytes. The group
    # holds both nodes whole, so each node's share leaves through its 4 NICs at once (one ring
    # per NIC), as NCCL does: 4 x 10 GB/s, below the 100 GB/s in the node.
    expected = 14 * INTER_LAT + 2 * 7 / 8 * GB / (4 * INTER_BW)
    assert time_s(ring, GB) == pytest.approx(expected, rel=1e-12)
    assert ring.latency_s == pytest.approx(14 * INTER_LAT)
    assert ring.bandwidth_bytes_per_s == pytest.approx(4 * INTER_BW * 8 / 14)
    # A group of the whole world never fits in one node.
    assert not [c for c in profile.collectives if c.group_size == 8 and c.scope == "intra_node"]


def test_rings_across_nodes_are_bound_by_the_slower_of_nics_and_node_links() -> None:
    # Strided groups may have one member per node (e.g. data parallel across node-wide tp):
    # one NIC.
    profile = hardware_profile_from_spec(two_by_four())
    strided = entry(profile, "all_gather", 2, "strided", "inter_node")
    assert time_s(strided, GB) == pytest.approx(INTER_LAT + 1 / 2 * GB / INTER_BW)
    # Many NICs: the ring is as fast as a device's link inside the node.
    many = hardware_profile_from_spec(
        two_by_four().with_changes(inter_node_bandwidth_bytes_per_s=40e9)
    )
    ring = entry(many, "all_gather", 8, "consecutive", "inter_node")
    assert time_s(ring, GB) == pytest.approx(7 * INTER_LAT + 7 / 8 * GB / INTRA_BW)


def test_intra_node_groups_use_nvlink() -> None:
    profile = hardware_profile_from_spec(two_by_four())
    ring = entry(profile, "all_reduce", 4, "consecutive", "intra_node")
    assert time_s(ring, GB) == pytest.approx(6 * INTRA_LAT + 2 * 3 / 4 * GB / INTRA_BW)
    for op in ("all_gather", "reduce_scatter", "all_to_all"):
        half = entry(profile, op, 4, "consecutive", "intra_node")
        assert time_s(half, GB) == pytest.approx(3 * INTRA_LAT + 3 / 4 * GB / INTRA_BW)
    p2p = entry(profile, "p2p", 2, "consecutive", "intra_node")
    assert time_s(p2p, GB) == pytest.approx(INTRA_LAT + GB / INTRA_BW)


def test_scopes_of_consecutive_and_strided_groups() -> None:
    profile = hardware_profile_from_spec(two_by_four())
    scopes = {
        (c.group_size, c.placement): sorted(
            d.scope
            for d in profile.collectives
            if d.op == "all_gather" and (d.group_size, d.placement) == (c.group_size, c.placement)
        )
        for c in profile.collectives
        if c.op == "all_gather"
    }
    assert scopes == {
        # Aligned consecutive groups that fit in a node stay there.
        (2, "consecutive"): ["intra_node"],
        (4, "consecutive"): ["intra_node"],
        (8, "consecutive"): ["inter_node"],
        # Strided groups span nodes; size 2 with stride 2 also fits in a node of 4.
        (2, "strided"): ["inter_node", "intra_node"],
        (4, "strided"): ["inter_node"],
        (8, "strided"): ["inter_node"],
    }
    assert {c.scope for c in profile.collectives if c.op == "p2p"} == {"intra_node", "inter_node"}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@pytest.mark.parametrize(("per_node", "nodes"), [(4, 2), (8, 12), (3, 4), (2, 1), (1, 4)])
def test_every_group_the_simulator_places_has_an_exact_entry(per_node: int, nodes: int) -> None:
    spec = two_by_four().with_changes(devices_per_node=per_node, num_nodes=nodes)
    world = spec.world_size
    have = {
        (c.op, c.group_size, c.placement, c.scope)
        for c in hardware_profile_from_spec(spec).collectives
    }
    for order in itertools.permutations(AXES):
        for pp in _divisors(world):
            for tp in _divisors(world // pp):
                plan = Plan(
                    world_size=world,
                    mesh_axis_order=order,
                    global_batch_size=world,
                    num_micro_batches=1,
                    pipeline=PipelineConfig(degree=pp, schedule="1f1b", stage_num_layers=(1,) * pp),
                    layers=(LayerStrategy(tp=tp),) * pp,
                )
                for axis in AXES:
                    group = group_placement(
                        plan, axis=axis, tp=tp, devices_per_node=per_node, num_nodes=nodes
                    )
                    if group.size < 2:
                        continue
                    ops = ("p2p",) if axis == "pp" else COLLECTIVE_OPS[:-1]
                    for op in ops:
                        size = 2 if op == "p2p" else group.size
                        assert (op, size, group.placement, group.scope) in have, (
                            order,
                            pp,
                            tp,
                            axis,
                        )


def test_one_node_has_no_inter_node_entries() -> None:
    profile = hardware_profile_from_spec(two_by_four().with_changes(num_nodes=1))
    assert profile.collectives
    assert {c.scope for c in profile.collectives} == {"intra_node"}
    assert max(c.group_size for c in profile.collectives) == 4


def test_doubling_the_nic_halves_the_inter_node_transfer_time() -> None:
    slow = hardware_profile_from_spec(two_by_four())
    fast = hardware_profile_from_spec(
        two_by_four().with_changes(inter_node_bandwidth_bytes_per_s=2 * INTER_BW)
    )
    before = entry(slow, "reduce_scatter", 8, "strided", "inter_node")
    after = entry(fast, "reduce_scatter", 8, "strided", "inter_node")
    assert time_s(after, GB) - after.latency_s == pytest.approx(
        (time_s(before, GB) - before.latency_s) / 2
    )


# --- model profile -----------------------------------------------------------------------------


def test_model_profile_passes_the_format_round_trip(
    tmp_path: Path, description: ModelDescription
) -> None:
    profile = model_profile_from_description(description, PRESETS["h100-sxm"])
    save(profile, tmp_path / "mp.json")
    assert load(tmp_path / "mp.json", ModelProfile) == profile
    assert profile.origin == "analytic"
    assert (profile.model, profile.dtype) == ("gpt-tiny", "bf16")
    assert profile.device == PRESETS["h100-sxm"].device_name
    # The H100's calibration (its sources: specsheet.PRESETS).
    assert profile.efficiencies == {"gemm": 0.75, "attention": 0.35, "memory": 0.85}
    assert [lt.layer_type for lt in profile.layer_types] == [
        "gpt_embedding",
        "gpt_block",
        "gpt_head",
    ]
    for layer_type in profile.layer_types:
        assert all(t.origin == "analytic" for t in layer_type.timings)
        assert all(m.origin == "analytic" for m in layer_type.memory)


def test_forward_time_follows_the_compute_model(description: ModelDescription) -> None:
    """The profile's times are ``compute_model``'s for each configuration; efficiencies come
    from the argument, then the spec, then the defaults."""
    spec = two_by_four().with_changes(efficiencies={"gemm": 0.6})
    profile = model_profile_from_description(description, spec, efficiencies={"memory": 0.5})
    assert profile.efficiencies == {**DEFAULT_EFFICIENCIES, "gemm": 0.6, "memory": 0.5}
    block = profile.layer_type("gpt_block")
    assert block is not None
    layer = description.blocks[0]
    memory = {(m.tp, m.sp): m for m in block.memory}
    model = ComputeModel(
        peak_flops_per_s=100e12,
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s,
        element_bytes=2,
        gemm=0.6,
        attention=DEFAULT_EFFICIENCIES["attention"],
        memory=0.5,
        overhead_s=LAYER_OVERHEAD_S,
    )
    for t in block.timings:
        expected = model.layer_seconds(
            layer,
            tp=t.tp,
            sp=t.sp,
            batch=t.micro_batch,
            activation_bytes=memory[t.tp, t.sp].activation_bytes_per_sample,
        )
        assert (t.forward_s, t.backward_s) == pytest.approx(expected)


def test_block_configurations_follow_the_plan_checks(description: ModelDescription) -> None:
    profile = model_profile_from_description(description, two_by_four(), micro_batches=(1,))
    block = profile.layer_type("gpt_block")
    assert block is not None
    # 4 heads: tp 8 never divides them; tp 1 only with sp "none".
    expected = [(1, "none")] + [(tp, sp) for tp in (2, 4) for sp in ("none", "megatron", "ulysses")]
    assert [(t.tp, t.sp) for t in block.timings] == expected
    assert [(m.tp, m.sp) for m in block.memory] == expected
    head = profile.layer_type("gpt_head")
    assert head is not None
    # vocab_size 512: every degree divides it, always with sp "none".
    assert [(t.tp, t.sp) for t in head.timings] == [(tp, "none") for tp in (1, 2, 4, 8)]


def test_memory_per_device(description: ModelDescription) -> None:
    profile = model_profile_from_description(description, two_by_four(), dtype="bf16")
    block = profile.layer_type("gpt_block")
    assert block is not None
    memory = {(m.tp, m.sp): m for m in block.memory}
    params, activations, output = 49984, 180224.0, 8192.0  # parameters; fp32 bytes
    # Parameters and gradients stay fp32 under bf16 (the executor's master weights); Adam's
    # two moments are 8 bytes a parameter.
    assert memory[1, "none"].param_bytes == params * 4
    assert memory[2, "megatron"].param_bytes == params * 4 // 2
    assert memory[2, "ulysses"].param_bytes == params * 4  # Ulysses does not split parameters
    assert memory[4, "none"].grad_bytes == params * 4 // 4
    assert memory[1, "none"].optimizer_bytes == params * 8
    assert memory[4, "megatron"].optimizer_bytes == params * 8 // 4
    half = activations / 2  # fp32 description, bf16 profile
    assert memory[1, "none"].activation_bytes_per_sample == pytest.approx(half)
    assert memory[4, "none"].activation_bytes_per_sample == pytest.approx(half * (0.25 + 0.75 / 4))
    assert memory[4, "megatron"].activation_bytes_per_sample == pytest.approx(half / 4)
    assert memory[4, "none"].checkpoint_activation_bytes_per_sample == pytest.approx(output / 2)
    assert memory[4, "ulysses"].checkpoint_activation_bytes_per_sample == pytest.approx(output / 8)


def test_fp32_matches_the_format_example(description: ModelDescription) -> None:
    profile = model_profile_from_description(description, two_by_four(), dtype="fp32")
    block = profile.layer_type("gpt_block")
    assert block is not None
    ulysses = next(m for m in block.memory if (m.tp, m.sp) == (2, "ulysses"))
    # formats.md: param_bytes 199936 and optimizer_bytes 399872 (no master copy in fp32).
    assert (ulysses.param_bytes, ulysses.optimizer_bytes) == (199936, 399872)


def test_one_layer_type_at_several_sequence_lengths(
    tmp_path: Path, description: ModelDescription
) -> None:
    blocks = list(description.layers)
    blocks[3] = dataclasses.replace(blocks[3], seq_len=16)
    blocks[4] = dataclasses.replace(blocks[4], seq_len=16)
    swin_like = dataclasses.replace(description, layers=tuple(blocks))
    profile = model_profile_from_description(swin_like, two_by_four())
    save(profile, tmp_path / "mp.json")  # runs the uniqueness checks
    block = profile.layer_type("gpt_block")
    assert block is not None
    assert {m.seq_len for m in block.memory} == {32, 16}


def test_conflicting_layers_of_one_type_are_refused(description: ModelDescription) -> None:
    layers = list(description.layers)
    layers[2] = dataclasses.replace(layers[2], params=1)
    with pytest.raises(ValueError, match=r"'blocks\.0' and 'blocks\.1' share layer_type"):
        model_profile_from_description(
            dataclasses.replace(description, layers=tuple(layers)), two_by_four()
        )


def test_bad_model_profile_arguments(description: ModelDescription) -> None:
    spec = two_by_four()
    with pytest.raises(ValueError, match="dtype: spec 'test 2x4' gives peak FLOP/s for"):
        model_profile_from_description(description, spec, dtype="fp16")
    with pytest.raises(
        ValueError, match=r"^efficiencies.matmul: unknown \(expected gemm, attention, memory\)$"
    ):
        model_profile_from_description(description, spec, efficiencies={"matmul": 0.3})
    with pytest.raises(ValueError, match=r"^efficiencies.gemm: a share of at most 1, got 1.5$"):
        model_profile_from_description(description, spec, efficiencies={"gemm": 1.5})
    with pytest.raises(ValueError, match=r"^efficiencies.memory: "):
        spec.with_changes(efficiencies={"memory": 0})
    with pytest.raises(ValueError, match="tp_degrees: must be >= 1"):
        model_profile_from_description(description, spec, tp_degrees=(0, 1))


# --- no torch ----------------------------------------------------------------------------------


def test_simulator_sources_never_import_torch() -> None:
    imports_torch = re.compile(r"^\s*(import|from)\s+torch\b|^\s*import\s.*\btorch\b", re.M)
    for source in SIMULATOR_SOURCE.rglob("*.py"):
        assert not imports_torch.search(source.read_text(encoding="utf-8")), source


def test_specsheet_imports_without_loading_torch() -> None:
    code = (
        "import sys, partita.simulator.specsheet as s; "
        "s.hardware_profile_from_spec(s.PRESETS['h100-sxm']); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_spec_sets_its_own_efficiencies_over_its_presets() -> None:
    spec = load_cluster_spec('{"preset": "h100-sxm", "efficiencies": {"gemm": 0.7}}')
    assert spec.efficiencies == {"gemm": 0.7, "attention": 0.35, "memory": 0.85}
    with pytest.raises(
        ValueError, match=r"^--cluster \(inline JSON\): efficiencies.flash: unknown"
    ):
        load_cluster_spec('{"preset": "h100-sxm", "efficiencies": {"flash": 0.7}}')
    slower = model_profile_from_description(
        load(EXAMPLE_DESCRIPTION, ModelDescription),
        load_cluster_spec('{"preset": "h100-sxm", "efficiencies": {"gemm": 0.375}}'),
    )
    faster = model_profile_from_description(
        load(EXAMPLE_DESCRIPTION, ModelDescription), PRESETS["h100-sxm"]
    )
    block = slower.layer_type("gpt_block"), faster.layer_type("gpt_block")
    assert block[0] is not None and block[1] is not None
    assert all(
        s.forward_s > f.forward_s for s, f in zip(block[0].timings, block[1].timings, strict=True)
    )


def test_blocks_of_one_type_that_attend_over_different_reaches_are_priced_as_the_costliest(
    description: ModelDescription,
) -> None:
    """Qwen2 slides a window in some blocks of one layer type: the profile, keyed by type,
    keeps the costlier (unwindowed) attention, so no block is priced short."""
    blocks = [i for i, layer in enumerate(description.layers) if layer.kind == "block"]
    layers = list(description.layers)
    full = layers[blocks[0]]
    windowed = dataclasses.replace(
        layers[blocks[1]],
        forward_flops_per_sample=full.forward_flops_per_sample * 0.9,
        backward_flops_per_sample=full.backward_flops_per_sample * 0.9,
    )
    layers[blocks[1]] = windowed
    mixed = dataclasses.replace(description, layers=tuple(layers))
    profile = model_profile_from_description(mixed, two_by_four())
    same = model_profile_from_description(description, two_by_four())
    assert profile.layer_type("gpt_block") == same.layer_type("gpt_block")
    layers[blocks[1]] = dataclasses.replace(windowed, params=1)
    with pytest.raises(ValueError, match="share layer_type 'gpt_block' and seq_len 32 but differ"):
        model_profile_from_description(
            dataclasses.replace(description, layers=tuple(layers)), two_by_four()
        )

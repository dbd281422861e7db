"""``partita profile import-galvatron``: conversions checked by hand on files in Galvatron's format.

galvatron_fixtures/gpt-tiny/ describes 1 node of 4 GPUs and a small GPT ("gpt-tiny", sequence
128) in Galvatron's layout (hardware_configs/*.json and configs/*.json), written by hand;
galvatron_fixtures/shipped/ holds files Galvatron's repositories ship, verbatim (its README.md
says where each comes from).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from partita.formats import HardwareProfile, ModelProfile, load
from partita.profiler import galvatron_command
from partita.profiler.galvatron import ImportOptions, import_directory

FIXTURES = Path(__file__).resolve().parent / "galvatron_fixtures/gpt-tiny"
SHIPPED = Path(__file__).resolve().parent / "galvatron_fixtures/shipped"
MIB = 2**20


@pytest.fixture
def copied(tmp_path: Path) -> Path:
    target = tmp_path / "galvatron"
    shutil.copytree(FIXTURES, target)
    return target


def _run(directory: Path, out_dir: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    galvatron_command.add_arguments(parser)
    args = parser.parse_args([str(directory), "--out-dir", str(out_dir), *extra])
    return galvatron_command.run(args)


def _entry(profile: HardwareProfile, op: str, size: int, placement: str = "consecutive"):
    matches = [
        e for e in profile.collectives if (e.op, e.group_size, e.placement) == (op, size, placement)
    ]
    assert len(matches) == 1, (op, size, placement, matches)
    return matches[0]


def _imported() -> tuple[HardwareProfile, ModelProfile]:
    report = import_directory(FIXTURES, ImportOptions())
    assert report.errors == []
    assert report.hardware is not None and report.model is not None
    return report.hardware, report.model


# --- hardware ---------------------------------------------------------------------------------


def test_cluster_shape_and_device_from_file_names_and_defaults() -> None:
    hardware, _ = _imported()
    assert (hardware.num_nodes, hardware.devices_per_node) == (1, 4)
    assert hardware.origin == "galvatron" and hardware.backend == "nccl"
    assert hardware.device.memory_bytes == 80 * 10**9
    assert hardware.compute == ()


def test_all_reduce_bus_bandwidth_becomes_bandwidth_of_the_input() -> None:
    hardware, _ = _imported()
    # busbw 160 GB/s (MB/ms) over 2 ranks: time = B * 2(2-1)/2 / busbw -> bandwidth 160e9 B/s.
    consecutive = _entry(hardware, "all_reduce", 2)
    assert consecutive.bandwidth_bytes_per_s == pytest.approx(160e9)
    assert consecutive.latency_s == 0.0 and consecutive.origin == "galvatron"
    strided = _entry(hardware, "all_reduce", 2, "strided")
    assert strided.bandwidth_bytes_per_s == pytest.approx(140e9)
    assert strided.scope == "intra_node"


def test_all_reduce_of_four_is_fitted_from_sequence_parallel_times() -> None:
    hardware, _ = _imported()
    entry = _entry(hardware, "all_reduce", 4)
    # 0.06, 0.07, 0.09 ms at 1, 2, 4 MiB: 0.05 ms + 0.01 ms per MiB.
    assert entry.latency_s == pytest.approx(0.05e-3)
    assert entry.bandwidth_bytes_per_s == pytest.approx(MIB / 0.01e-3)
    assert [s.bytes for s in entry.samples] == [MIB, 2 * MIB, 4 * MIB]
    assert entry.samples[0].time_s == pytest.approx(0.06e-3)


def test_all_to_all_fitted_where_measured_and_derived_elsewhere() -> None:
    hardware, _ = _imported()
    measured = _entry(hardware, "all_to_all", 2)  # 0.03 ms + 0.02 ms per MiB
    assert measured.latency_s == pytest.approx(0.03e-3)
    assert measured.bandwidth_bytes_per_s == pytest.approx(MIB / 0.02e-3)
    assert len(measured.samples) == 3
    derived = _entry(hardware, "all_to_all", 2, "strided")  # twice the all-reduce's 140e9
    assert derived.bandwidth_bytes_per_s == pytest.approx(280e9)
    assert derived.samples == ()


def test_all_gather_and_reduce_scatter_are_half_an_all_reduce() -> None:
    hardware, _ = _imported()
    for op in ("all_gather", "reduce_scatter"):
        assert _entry(hardware, op, 2).bandwidth_bytes_per_s == pytest.approx(320e9)
        four = _entry(hardware, op, 4)
        assert four.latency_s == pytest.approx(0.025e-3)
        assert four.bandwidth_bytes_per_s == pytest.approx(2 * MIB / 0.01e-3)


def test_p2p_keeps_the_slowest_pipeline_bandwidth_for_both_placements() -> None:
    hardware, _ = _imported()
    for placement in ("consecutive", "strided"):
        entry = _entry(hardware, "p2p", 2, placement)
        assert entry.bandwidth_bytes_per_s == pytest.approx(110e9)  # min(120, 110) MB/ms
        assert entry.scope == "intra_node"


def test_one_overlap_coefficient_slows_both_streams() -> None:
    hardware, _ = _imported()
    assert (hardware.overlap.compute, hardware.overlap.communication) == (1.15, 1.15)


def test_several_nodes_make_spanning_groups_inter_node(copied: Path) -> None:
    configs = copied / "hardware_configs"
    for path in configs.glob("*1nodes_4gpus*"):
        path.rename(path.with_name(path.name.replace("1nodes_4gpus", "2nodes_2gpus")))
    report = import_directory(copied, ImportOptions())
    assert report.errors == [] and report.hardware is not None
    assert (report.hardware.num_nodes, report.hardware.devices_per_node) == (2, 2)
    assert _entry(report.hardware, "all_reduce", 2).scope == "intra_node"
    assert _entry(report.hardware, "all_reduce", 2, "strided").scope == "inter_node"
    assert _entry(report.hardware, "all_reduce", 4).scope == "inter_node"
    assert _entry(report.hardware, "p2p", 2).scope == "inter_node"


# --- model ------------------------------------------------------------------------------------


def _timing(model: ModelProfile, layer_type: str, tp: int, sp: str, batch: int):
    profile = model.layer_type(layer_type)
    assert profile is not None
    (found,) = [t for t in profile.timings if (t.tp, t.sp, t.micro_batch) == (tp, sp, batch)]
    return found


def _memory(model: ModelProfile, layer_type: str, tp: int, sp: str):
    profile = model.layer_type(layer_type)
    assert profile is not None
    (found,) = [m for m in profile.memory if (m.tp, m.sp) == (tp, sp)]
    return found


def test_model_name_dtype_and_layer_types_from_file_name_and_family() -> None:
    _, model = _imported()
    assert (model.model, model.dtype, model.origin) == ("gpt-tiny", "bf16", "galvatron")
    assert [lt.layer_type for lt in model.layer_types] == ["gpt_block", "gpt_embedding", "gpt_head"]


def test_block_timings_are_ms_per_sample_times_batch_over_tp() -> None:
    _, model = _imported()
    one = _timing(model, "gpt_block", 1, "none", 1)  # 0.3 ms per sample
    assert (one.forward_s, one.backward_s) == (pytest.approx(0.3e-3), pytest.approx(0.6e-3))
    assert one.seq_len == 128 and one.origin == "galvatron"
    two = _timing(model, "gpt_block", 2, "megatron", 2)  # 0.25 ms x 2 samples / tp 2
    assert two.forward_s == pytest.approx(0.25e-3)
    assert two.backward_s == pytest.approx(0.5e-3)
    assert _timing(model, "gpt_block", 4, "ulysses", 2).forward_s == pytest.approx(0.125e-3)


def test_block_memory_splits_galvatron_model_states_four_ways() -> None:
    _, model = _imported()
    one = _memory(model, "gpt_block", 1, "none")  # parameter_size 0.75 MiB
    assert (one.param_bytes, one.grad_bytes, one.optimizer_bytes) == (786432, 786432, 1572864)
    assert one.activation_bytes_per_sample == 2 * MIB
    assert one.checkpoint_activation_bytes_per_sample == 0.0625 * MIB
    plain = _memory(model, "gpt_block", 2, "none")
    assert plain.param_bytes == 393216 and plain.activation_bytes_per_sample == 1.25 * MIB
    assert plain.checkpoint_activation_bytes_per_sample == 0.0625 * MIB  # not split without SP
    megatron = _memory(model, "gpt_block", 2, "megatron")  # from layertype_0_sp
    assert megatron.param_bytes == 393216 and megatron.activation_bytes_per_sample == MIB
    assert megatron.checkpoint_activation_bytes_per_sample == 0.03125 * MIB
    ulysses = _memory(model, "gpt_block", 2, "ulysses")  # parameters stay whole
    assert ulysses.param_bytes == 786432 and ulysses.optimizer_bytes == 1572864
    assert ulysses.activation_bytes_per_sample == MIB


def test_other_goes_to_head_and_pipeline_stage_memory_to_each_end() -> None:
    _, model = _imported()
    embedding = _memory(model, "gpt_embedding", 1, "none")  # model states 4 MiB = 4 x params
    assert (embedding.param_bytes, embedding.optimizer_bytes) == (MIB, 2 * MIB)
    assert embedding.activation_bytes_per_sample == 0.25 * MIB
    assert _timing(model, "gpt_embedding", 1, "none", 1).forward_s == 0.0
    head = _memory(model, "gpt_head", 2, "none")  # 2.25 MiB of model states
    assert head.param_bytes == 589824 and head.activation_bytes_per_sample == 1.375 * MIB
    timing = _timing(model, "gpt_head", 2, "none", 2)  # 1.1 ms x 2 / tp 2
    assert timing.forward_s == pytest.approx(1.1e-3)
    assert timing.backward_s == pytest.approx(2.2e-3)


def test_embedding_share_and_layer_type_mapping_options() -> None:
    options = ImportOptions(
        embedding_share=0.25, layer_types={"0": ("a_block", "b_block"), "head": ("h",)}
    )
    report = import_directory(FIXTURES, options)
    assert report.model is not None
    names = [lt.layer_type for lt in report.model.layer_types]
    assert names == ["a_block", "b_block", "gpt_embedding", "h"]
    embedding = _timing(report.model, "gpt_embedding", 1, "none", 1)
    assert embedding.forward_s == pytest.approx(1.3e-3 * 0.25)
    assert _timing(report.model, "h", 1, "none", 1).forward_s == pytest.approx(1.3e-3 * 0.75)


def test_without_pipeline_entries_each_end_gets_half_of_pp_off(copied: Path) -> None:
    path = next(copied.rglob("memory_profiling*.json"))
    data = json.loads(path.read_text())
    del data["other_memory_pp_on_first"], data["other_memory_pp_on_last"]
    path.write_text(json.dumps(data))
    report = import_directory(copied, ImportOptions())
    assert report.errors == [] and report.model is not None
    assert _memory(report.model, "gpt_head", 1, "none").param_bytes == MIB  # 8 MiB / 2 / 4
    assert any("half of pp_off" in note for note in report.notes)


# --- files Galvatron ships (galvatron_fixtures/shipped/README.md) -------------------------------

LLAMA = SHIPPED / "llama2-7b"


def _shipped(tmp_path: Path, capsys) -> tuple[HardwareProfile, ModelProfile, str]:
    assert _run(LLAMA, tmp_path) == 0, capsys.readouterr().err
    output = capsys.readouterr().out
    hardware = load(tmp_path / "hardware_profile.json", HardwareProfile)
    model = load(tmp_path / "model_profile.json", ModelProfile)
    return hardware, model, output


def test_shipped_llama2_7b_profiles_import_with_their_bf16_precision(
    tmp_path: Path, capsys
) -> None:
    hardware, model, output = _shipped(tmp_path, capsys)
    assert (model.model, model.dtype, model.origin) == ("llama2-7b", "bf16", "galvatron")
    assert [lt.layer_type for lt in model.layer_types] == [
        "llama_block",
        "llama_embedding",
        "llama_head",
    ]
    assert (hardware.num_nodes, hardware.devices_per_node) == (1, 8)
    # The precision, and the raw runs left out, are said in the output.
    assert "llama2-7b (bf16)" in output
    assert "dtype bf16: Galvatron's precision, from the file name" in output
    assert "computation_profiling_bf16_llama2-7b_all.json" in output
    assert "skipped 16 raw per-strategy runs (1_1_8_sp, 1_2_4_sp, 1_2_4_vtp_sp, ...)" in output


def test_shipped_llama2_7b_block_numbers_are_galvatron_s(tmp_path: Path, capsys) -> None:
    _, model, _ = _shipped(tmp_path, capsys)
    # computation: "layertype_0_bsz1_seq2048": 4.396252679824831 ms per sample
    one = _timing(model, "llama_block", 1, "none", 1)
    assert one.seq_len == 2048
    assert one.forward_s == pytest.approx(4.396252679824831e-3)
    assert one.backward_s == pytest.approx(2 * 4.396252679824831e-3)
    # "layertype_0_bsz8_seq2048": 3.9369729995727534 ms per sample, x 8 samples / tp 8
    assert _timing(model, "llama_block", 8, "megatron", 8).forward_s == pytest.approx(
        3.9369729995727534e-3
    )
    # memory: "layertype_0_sp" at "2048": parameter_size 778.2236328125 MiB, activation
    # {"1": 514.5634765625, "8": 68.3204345703125, "checkpoint": 32.0} MiB per sample
    whole = _memory(model, "llama_block", 1, "none")
    assert whole.param_bytes == round(778.2236328125 * MIB) == 816026624
    assert (whole.grad_bytes, whole.optimizer_bytes) == (816026624, 2 * 816026624)
    assert whole.activation_bytes_per_sample == 514.5634765625 * MIB
    assert whole.checkpoint_activation_bytes_per_sample == 32.0 * MIB
    megatron = _memory(model, "llama_block", 8, "megatron")
    assert megatron.param_bytes == round(778.2236328125 * MIB / 8)
    assert megatron.activation_bytes_per_sample == 68.3204345703125 * MIB
    assert megatron.checkpoint_activation_bytes_per_sample == 4.0 * MIB  # split by sp
    assert _memory(model, "llama_block", 8, "ulysses").param_bytes == 816026624
    # Only sequence-parallel sections are shipped: no sp "none" beyond tp 1.
    block = model.layer_type("llama_block")
    assert block is not None
    assert {(m.tp, m.sp) for m in block.memory if m.sp == "none"} == {(1, "none")}


def test_shipped_llama2_7b_embedding_and_head_numbers(tmp_path: Path, capsys) -> None:
    _, model, _ = _shipped(tmp_path, capsys)
    # "other_memory_pp_on_last_sp" at "2048": model_states {"1": 2021.0673828125},
    # activation {"1": 717.560302734375, "8": 85.55889892578125}
    head = _memory(model, "llama_head", 1, "none")
    assert head.param_bytes == round(2021.0673828125 / 4 * MIB)
    assert head.activation_bytes_per_sample == 717.560302734375 * MIB
    assert _memory(model, "llama_head", 8, "none").activation_bytes_per_sample == (
        85.55889892578125 * MIB
    )
    # "other_memory_pp_on_first_sp": model_states {"4": 775.68310546875}
    embedding = _memory(model, "llama_embedding", 4, "none")
    assert embedding.param_bytes == round(775.68310546875 / 4 * MIB)
    # "layertype_other_bsz1_seq2048": 6.286115455627439 ms, all of it to the head
    assert _timing(model, "llama_head", 1, "none", 1).forward_s == pytest.approx(
        6.286115455627439e-3
    )
    assert _timing(model, "llama_embedding", 1, "none", 1).forward_s == 0.0


def test_shipped_hardware_numbers(tmp_path: Path, capsys) -> None:
    hardware, _, _ = _shipped(tmp_path, capsys)
    # "allreduce_size_8_consec_1": 140.35589599609375 GB/s of bus bandwidth over 8 ranks
    eight = _entry(hardware, "all_reduce", 8)
    assert eight.bandwidth_bytes_per_s == pytest.approx(140.35589599609375e9 * 8 / 14)
    assert _entry(hardware, "all_reduce", 4, "strided").bandwidth_bytes_per_s == pytest.approx(
        140.14663696289062e9 * 4 / 6
    )
    # "pp_size_2/4/8": 159.058, 104.771, 78.7145: the slowest paces a pipeline
    assert _entry(hardware, "p2p", 2).bandwidth_bytes_per_s == pytest.approx(78.7145e9)
    assert hardware.overlap.compute == 1.0908971982840632


def test_shipped_vit_profile_without_sequence_parallelism(tmp_path: Path, capsys) -> None:
    """An older Galvatron layout: plain sections, _vtp runs, fewer tp for pipeline stages."""
    assert _run(SHIPPED / "vit-hidden1280", tmp_path, "--family", "vit") == 2
    assert "allreduce_bandwidth*.json" in _one_error(capsys)  # no hardware files shipped
    model = load(tmp_path / "model_profile.json", ModelProfile)
    assert (model.model, model.dtype) == ("hidden1280_head16", "bf16")
    # "layertype_0_bsz8_seq197": 0.2053900023301443 ms per sample, x 8 samples
    timing = _timing(model, "vit_block", 1, "none", 8)
    assert (timing.seq_len, timing.forward_s) == (197, pytest.approx(8 * 0.2053900023301443e-3))
    # "layertype_0" at "197": parameter_size 75.09375, activation {"4": 3.75677490234375},
    # checkpoint 0.438232421875 (not split by tp without sequence parallelism)
    four = _memory(model, "vit_block", 4, "none")
    assert four.param_bytes == round(75.09375 * MIB / 4)
    assert four.activation_bytes_per_sample == 3.75677490234375 * MIB
    assert four.checkpoint_activation_bytes_per_sample == 0.438232421875 * MIB
    head = model.layer_type("vit_head")
    assert head is not None and sorted({m.tp for m in head.memory}) == [1, 2]


def test_a_malformed_raw_run_is_refused_naming_it(copied: Path, tmp_path: Path, capsys) -> None:
    path = next(copied.rglob("memory_profiling*.json"))
    data = json.loads(path.read_text())
    data["1_1_4_sp"] = {"layernum[1]_bsz8_seq128_rank0_ms": "lots"}
    path.write_text(json.dumps(data))
    assert _run(copied, tmp_path) == 2
    line = _one_error(capsys)
    assert f"{path.name}: 1_1_4_sp.layernum[1]_bsz8_seq128_rank0_ms: expected a number" in line
    data["1_1_4_sp"] = [1.0]
    path.write_text(json.dumps(data))
    assert _run(copied, tmp_path) == 2
    assert "1_1_4_sp: expected a non-empty JSON object" in _one_error(capsys)


def test_raw_runs_of_every_kind_are_skipped_with_one_note(copied: Path) -> None:
    path = next(copied.rglob("memory_profiling*.json"))
    data = json.loads(path.read_text())
    run = {"layernum[1]_bsz8_seq128_rank0_ms": 9.5, "layernum[1]_bsz8_seq128_rank3_act_peak": 0}
    for key in ("1_1_4", "1_2_2_vtp", "1_1_4_c", "2_2_1_vtp_sp", "1_1_4_c_sp"):
        data[key] = run
    path.write_text(json.dumps(data))
    report = import_directory(copied, ImportOptions())
    assert report.errors == [] and report.model == _imported()[1]
    (note,) = [n for n in report.notes if "raw per-strategy" in n]
    assert "skipped 5 raw per-strategy runs (1_1_4, 1_2_2_vtp, 1_1_4_c, ...)" in note


def test_sections_not_keyed_by_sequence_length_take_the_computation_s(copied: Path) -> None:
    """Older Galvatron files (e.g. AFDWang/Hetu-Galvatron, models/llama_hf/configs/
    memory_profiling_bf16_hidden4096_head32_seqlen2048.json) hold one entry per section, and
    one number, not one per tp, in other_memory_*."""
    path = next(copied.rglob("memory_profiling*.json"))
    data = json.loads(path.read_text())
    for key in list(data):
        data[key] = data[key]["128"]
    for key in ("other_memory_pp_on_first", "other_memory_pp_on_last"):
        data[key] = {part: values["1"] for part, values in data[key].items()}
    path.write_text(json.dumps(data))
    report = import_directory(copied, ImportOptions())
    assert report.errors == [] and report.model is not None
    assert _memory(report.model, "gpt_block", 2, "megatron").seq_len == 128
    head = report.model.layer_type("gpt_head")
    assert head is not None and [(m.tp, m.seq_len) for m in head.memory] == [(1, 128)]
    assert _memory(report.model, "gpt_head", 1, "none").param_bytes == round(4.5 / 4 * MIB)


def test_unprofiled_checkpoint_gives_the_whole_activation_with_a_note(copied: Path) -> None:
    path = next(copied.rglob("memory_profiling*.json"))
    data = json.loads(path.read_text())
    data["layertype_0"]["128"]["tp_activation_per_bsz_dict"]["checkpoint"] = -1
    path.write_text(json.dumps(data))
    report = import_directory(copied, ImportOptions())
    assert report.errors == [] and report.model is not None
    plain = _memory(report.model, "gpt_block", 2, "none")
    assert plain.checkpoint_activation_bytes_per_sample == 1.25 * MIB
    assert any("layertype_0.128: checkpoint not profiled" in note for note in report.notes)


def test_precision_from_the_file_names(copied: Path, tmp_path: Path, capsys) -> None:
    for path in copied.rglob("*_profiling_bf16_*.json"):
        path.rename(path.with_name(path.name.replace("_bf16_", "_fp16_")))
    assert _run(copied, tmp_path) == 0
    assert load(tmp_path / "model_profile.json", ModelProfile).dtype == "fp16"
    assert "dtype fp16: Galvatron's precision" in capsys.readouterr().out


def test_precisions_that_disagree_are_refused_unless_chosen(
    copied: Path, tmp_path: Path, capsys
) -> None:
    memory = next(copied.rglob("memory_profiling*.json"))
    memory.rename(memory.with_name("memory_profiling_fp32_gpt-tiny.json"))
    assert _run(copied, tmp_path) == 2
    line = _one_error(capsys)
    assert "memory_profiling_fp32_gpt-tiny.json: -: precision 'fp32' in the name" in line
    assert "'bf16' in computation_profiling_bf16_gpt-tiny.json" in line
    assert _run(copied, tmp_path, "--dtype", "bf16") == 0
    assert "dtype bf16 (--dtype)" in capsys.readouterr().out


def test_file_names_without_precision_assume_bf16_and_say_so(copied: Path) -> None:
    for path in copied.rglob("*_profiling_bf16_*.json"):
        path.rename(path.with_name(path.name.replace("_bf16_", "_")))
    report = import_directory(copied, ImportOptions())
    assert report.model is not None and report.model.dtype == "bf16"
    assert any("dtype bf16 assumed" in note for note in report.notes)


def test_profile_unit_in_the_name(copied: Path, tmp_path: Path, capsys) -> None:
    for path in copied.rglob("*_profiling_*.json"):
        path.rename(path.with_name(path.name.replace(".json", "_all.json")))
    assert _run(copied, tmp_path) == 0
    assert load(tmp_path / "model_profile.json", ModelProfile).model == "gpt-tiny"
    path = next(copied.rglob("computation_profiling*.json"))
    path.rename(path.with_name(path.name.replace("_all", "_attention")))
    capsys.readouterr()
    assert _run(copied, tmp_path) == 2
    assert "a per-attention profile" in _one_error(capsys)


# --- the command ------------------------------------------------------------------------------


def test_command_writes_both_files_that_load_back(tmp_path: Path, capsys) -> None:
    assert _run(FIXTURES, tmp_path) == 0
    hardware = load(tmp_path / "hardware_profile.json", HardwareProfile)
    model = load(tmp_path / "model_profile.json", ModelProfile)
    assert (hardware, model) == _imported()
    output = capsys.readouterr().out
    assert "gpt_block" in output and "hardware_profile.json" in output


def test_command_options_override_file_names(tmp_path: Path) -> None:
    extra = ["--device-memory-gb", "40", "--name", "lab", "--model", "m", "--dtype", "fp16"]
    assert _run(FIXTURES, tmp_path, *extra, "--family", "llama") == 0
    hardware = load(tmp_path / "hardware_profile.json", HardwareProfile)
    model = load(tmp_path / "model_profile.json", ModelProfile)
    assert (hardware.name, hardware.device.memory_bytes) == ("lab", 40 * 10**9)
    assert (model.model, model.dtype) == ("m", "fp16")
    assert model.layer_type("llama_block") is not None


def _one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_file_is_one_line_and_the_other_part_is_written(
    copied: Path, tmp_path: Path, capsys
) -> None:
    next(copied.rglob("p2p_bandwidth*.json")).unlink()
    out = tmp_path / "out"
    assert _run(copied, out) == 2
    line = _one_error(capsys)
    assert "p2p_bandwidth*.json" in line and "no such file" in line
    assert not (out / "hardware_profile.json").exists()
    assert load(out / "model_profile.json", ModelProfile).model == "gpt-tiny"


def test_malformed_json_names_the_file_and_keeps_earlier_output(
    copied: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert _run(copied, out) == 0
    before = (out / "model_profile.json").read_bytes()
    path = next(copied.rglob("memory_profiling*.json"))
    path.write_text('{"layertype_0": ')
    capsys.readouterr()
    assert _run(copied, out) == 2
    line = _one_error(capsys)
    assert path.name in line and "not valid JSON" in line
    assert (out / "model_profile.json").read_bytes() == before  # what was measured is kept
    assert (out / "hardware_profile.json").exists()


@pytest.mark.parametrize(
    ("pattern", "edit", "named"),
    [
        (
            "allreduce_bandwidth*.json",
            lambda d: d.update({"allreduce_size_4_consecutive_1": 1.0}),
            "allreduce_size_4_consecutive_1",
        ),
        ("p2p_bandwidth*.json", lambda d: d.update({"pp_size_2": "fast"}), "pp_size_2"),
        ("overlap_coefficient*.json", lambda d: d.update({"overlap_coe": 0.9}), "overlap_coe"),
        (
            "sp_time*.json",
            lambda d: d.update({"allreduce_size_8_1MB_time": 0.1}),
            "allreduce_size_8_1MB_time",
        ),
        (
            "computation_profiling*.json",
            lambda d: d.pop("layertype_other_bsz1_seq128") and d.pop("layertype_other_bsz2_seq128"),
            "layertype_other",
        ),
        (
            "memory_profiling*.json",
            lambda d: d["layertype_0"]["128"]["tp_activation_per_bsz_dict"].pop("checkpoint"),
            "layertype_0.128.tp_activation_per_bsz_dict.checkpoint",
        ),
        (
            "memory_profiling*.json",
            lambda d: d["other_memory_pp_on_last"]["128"]["activation"].pop("4"),
            "other_memory_pp_on_last.128.activation.4",
        ),
    ],
)
def test_a_wrong_key_or_value_is_one_line_naming_file_and_key(
    copied: Path, tmp_path: Path, capsys, pattern: str, edit, named: str
) -> None:
    path = next(copied.rglob(pattern))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    assert _run(copied, tmp_path) == 2
    line = _one_error(capsys)
    assert path.name in line and named in line, line
    written = {p.name for p in tmp_path.glob("*.json")}
    assert len(written) == 1  # the other part was still converted


# Finite in Galvatron's files, out of range once converted (issue 22): the part that converts
# is written, the other names the key in one line.
_OUT_OF_RANGE = [
    (  # 1e308 MiB of parameters: more than 2^53 bytes (it raised OverflowError before)
        "memory_profiling*.json",
        lambda d: d["layertype_0"]["128"].update(parameter_size=1e308),
        "layertype_0.128",
        "1e+308 MiB is more than 2^53 bytes",
    ),
    (  # activations x 2^20 bytes: infinite
        "memory_profiling*.json",
        lambda d: d["layertype_0_sp"]["128"]["tp_activation_per_bsz_dict"].update({"2": 1e308}),
        "layertype_0_sp.128",
        "activation_bytes_per_sample",
    ),
    (
        "memory_profiling*.json",
        lambda d: d["other_memory_pp_on_last"]["128"]["model_states"].update({"1": 1e300}),
        "other_memory_pp_on_last.128",
        "MiB is more than 2^53 bytes",
    ),
    (  # ms x a micro-batch of 10^6: beyond a double
        "computation_profiling*.json",
        lambda d: d.update({"layertype_0_bsz1000000_seq128": 1e308}),
        "layertype_0_bsz1000000_seq128: 1e+308 is out of range once converted (forward_s",
        "forward_s",
    ),
    (
        "computation_profiling*.json",
        lambda d: d.update({"layertype_0_bsz4294967296_seq128": 0.3}),
        "layertype_0_bsz4294967296_seq128",
        "micro_batch: must be < 2^31",
    ),
    (
        "allreduce_bandwidth*.json",
        lambda d: d.update({"allreduce_size_4_consec_1": 1e300}),
        "allreduce_size_4_consec_1: 1e+300 is out of range once converted",
        "bandwidth_bytes_per_s",
    ),
    (  # valid for the all-reduce, not for the all-gather derived from it (twice the bandwidth)
        "allreduce_bandwidth*.json",
        lambda d: d.update({"allreduce_size_2_consec_0": 5e298}),
        "allreduce_size_2_consec_0",
        "bandwidth_bytes_per_s: must be < 2^1023",
    ),
    ("p2p_bandwidth*.json", lambda d: d.update({"pp_size_2": 1e300}), "pp_size_2", "bandwidth"),
    (
        "overlap_coefficient*.json",
        lambda d: d.update({"overlap_coe": 1e308}),
        "overlap_coe: 1e+308 is out of range once converted",
        "compute: must be < 2^1023",
    ),
    (  # the fitted line overflows: the largest time is named
        "sp_time*.json",
        lambda d: d.update({"allreduce_size_4_4MB_time": 1.7e308}),
        "allreduce_size_4_4MB_time",
        "out of range once converted",
    ),
    (
        "sp_time*.json",
        lambda d: d.update({"all2all_size_2_9999999999MB_time": 0.1}),
        "all2all_size_2_9999999999MB_time",
        "bytes: must be at most 2^53",
    ),
    (  # an integer literal no double holds
        "computation_profiling*.json",
        lambda d: d.update({"layertype_0_bsz1_seq128": 10**400}),
        "layertype_0_bsz1_seq128: expected a number",
        "",
    ),
]


@pytest.mark.parametrize(("pattern", "edit", "named", "why"), _OUT_OF_RANGE)
def test_a_value_out_of_range_once_converted_names_its_key_and_the_other_part_is_written(
    copied: Path, tmp_path: Path, capsys, pattern: str, edit, named: str, why: str
) -> None:
    path = next(copied.rglob(pattern))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    assert _run(copied, tmp_path) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {path}: {named}"), line
    assert why in line, line
    written = [p.name for p in tmp_path.glob("*.json")]
    assert len(written) == 1  # the other part was still converted, and loads
    load(tmp_path / written[0])


def test_device_memory_beyond_2_to_the_53_bytes_is_one_line(tmp_path: Path, capsys) -> None:
    for value in ("1e300", "nan"):
        assert _run(FIXTURES, tmp_path, "--device-memory-gb", value) == 2
        assert "--device-memory-gb must be > 0 and at most 9007199" in _one_error(capsys)
    assert not list(tmp_path.glob("*.json"))


def test_directory_that_does_not_exist(tmp_path: Path, capsys) -> None:
    assert _run(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "not a directory" in _one_error(capsys)
    assert not (tmp_path / "out").exists()


# --- torch-free -------------------------------------------------------------------------------

_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
from pathlib import Path
from partita.profiler import galvatron_command
import argparse
parser = argparse.ArgumentParser()
galvatron_command.add_arguments(parser)
code = galvatron_command.run(parser.parse_args([sys.argv[1], "--out-dir", sys.argv[2]]))
assert "torch" not in {m for m, v in sys.modules.items() if v is not None}
sys.exit(code)
"""


def test_converts_without_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(FIXTURES), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hardware_profile.json").exists()
    assert (tmp_path / "model_profile.json").exists()

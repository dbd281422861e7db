from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from support import EXAMPLES

from partita.formats import (
    SPECS,
    CheckpointManifest,
    FormatError,
    HardwareProfile,
    LayerStrategy,
    ModelDescription,
    ModelProfile,
    Plan,
    RunReport,
    load,
    loads,
)


def test_plan_version_1_is_migrated_forward(data_dir: Path) -> None:
    plan = load(data_dir / "plan_v1.json", Plan)
    assert plan.layers == (
        LayerStrategy(tp=2, sp="megatron", dp="zero3", ckpt="full"),
        LayerStrategy(tp=1, sp="none", dp="ddp", ckpt="none"),
    )
    assert plan.vocab.tp == 1  # v1 had no vocab strategy


def test_plan_version_2_names_its_checkpointing_and_runs_one_chunk(data_dir: Path) -> None:
    old = json.loads((data_dir / "plan_v2.json").read_text())
    assert old["version"] == 2
    plan = load(data_dir / "plan_v2.json", Plan)
    assert [layer.ckpt for layer in plan.layers] == [
        "full" if layer["ckpt"] else "none" for layer in old["layers"]
    ]
    assert "full" in {layer.ckpt for layer in plan.layers}
    assert plan.pipeline.chunks == 1
    assert plan.pipeline.stage_num_layers == tuple(old["pipeline"]["stage_num_layers"])
    assert (plan.world_size, plan.global_batch_size) == (
        old["world_size"],
        old["global_batch_size"],
    )


def test_a_bool_ckpt_in_a_version_3_plan_is_refused_naming_the_modes(data_dir: Path) -> None:
    document = json.loads((data_dir / "plan_v2.json").read_text())
    document["version"] = 3
    with pytest.raises(
        FormatError,
        match=r"layers\[0\]\.ckpt: expected 'none' or 'attention' or 'selective-op' or 'full', "
        r"got true",
    ):
        loads(json.dumps(document), Plan, source="new.json")


def test_model_profile_version_3_loads_without_split_costs(data_dir: Path) -> None:
    old = json.loads((data_dir / "model_profile_v3.json").read_text())
    assert old["version"] == 3
    profile = load(data_dir / "model_profile_v3.json", ModelProfile)
    timings = [t for lt in profile.layer_types for t in lt.timings]
    memory = [m for lt in profile.layer_types for m in lt.memory]
    assert timings and memory
    assert all(t.attention_forward_s is None and t.weight_backward_s is None for t in timings)
    assert all(m.attention_saved_bytes_per_sample is None for m in memory)


def test_run_report_version_1_loads_as_version_2(data_dir: Path) -> None:
    report = load(data_dir / "run_report_v1.json", RunReport)
    assert report.status == "completed" and len(report.steps) == 5
    assert report.settings is None and report.resumed_from_step is None
    assert report.num_nodes == 1


def test_run_report_version_2_loads_as_version_3_without_an_attention_kernel(
    data_dir: Path,
) -> None:
    report = load(data_dir / "run_report_v2.json", RunReport)
    assert report.attention == ""  # not recorded
    assert report.settings is not None and report.status == "completed"
    assert load(EXAMPLES / "run_report.json", RunReport).attention == "sdpa"


def test_run_report_version_5_loads_as_version_6_without_phases(data_dir: Path) -> None:
    assert json.loads((data_dir / "run_report_v5.json").read_text())["version"] == 5
    report = load(data_dir / "run_report_v5.json", RunReport)
    assert report.phases == () and report.status == "completed"
    phases = load(EXAMPLES / "run_report.json", RunReport).phases
    assert [p.rank for p in phases] == [0, 1, 2, 3]


def test_model_profile_version_2_loads_as_version_3_without_an_attention_kernel(
    data_dir: Path,
) -> None:
    profile = load(data_dir / "model_profile_v2.json", ModelProfile)
    assert profile.attention == ""  # not recorded
    assert profile.layer_types == load(EXAMPLES / "model_profile.json", ModelProfile).layer_types


@pytest.mark.parametrize("name", ["run_report.json", "model_profile.json"])
def test_an_unknown_attention_kernel_is_refused_naming_the_choices(name: str) -> None:
    document = json.loads((EXAMPLES / name).read_text())
    document["attention"] = "xformers"
    with pytest.raises(FormatError) as error:
        loads(json.dumps(document), source="new.json")
    assert str(error.value) == (
        "new.json: attention: expected '' or 'flash' or 'sdpa' or 'eager', got 'xformers'"
    )


def test_hardware_and_model_profiles_of_version_1_load_as_version_2(data_dir: Path) -> None:
    hardware = load(data_dir / "hardware_profile_v1.json", HardwareProfile)
    assert hardware.optimizer is None and hardware.fsdp_gather is None
    profile = load(data_dir / "model_profile_v1.json", ModelProfile)
    entries = [m for layer_type in profile.layer_types for m in layer_type.memory]
    assert entries and all(m.param_tensors == 0 for m in entries)
    assert all(m.backward_peak_bytes_per_sample == 0 for m in entries)
    timings = [t for layer_type in profile.layer_types for t in layer_type.timings]
    assert all(t.checkpoint_forward_s is None for t in timings)


def test_model_description_version_1_loads_without_loss_or_attention(data_dir: Path) -> None:
    old = load(data_dir / "model_description_v1.json", ModelDescription)
    assert all(layer.loss_bytes_per_sample == 0.0 for layer in old.layers)
    current = load(EXAMPLES / "model_description.json", ModelDescription)
    head = current.layers[-1]
    assert head.kind == "head" and head.loss_bytes_per_sample > 0
    # Version 2 moved the fp32 loss out of the head's activations: nothing else changed.
    moved = dataclasses.replace(
        head,
        activation_bytes_per_sample=head.activation_bytes_per_sample + head.loss_bytes_per_sample,
        loss_bytes_per_sample=0.0,
    )
    # Version 2 also split the attention's FLOPs out (0 when not recorded, as in version 1).
    unsplit = tuple(
        dataclasses.replace(
            layer, attention_flops_per_sample=0.0, attention_kernel_flops_per_sample=0.0
        )
        for layer in current.layers[:-1]
    )
    assert any(layer.attention_flops_per_sample for layer in current.layers)
    assert old == dataclasses.replace(current, layers=(*unsplit, moved))


def test_checkpoint_manifest_version_1_loads_with_no_files_recorded(data_dir: Path) -> None:
    manifest = load(data_dir / "checkpoint_manifest_v1.json", CheckpointManifest)
    assert manifest.files == ()  # not verifiable: trusted, as before version 2
    current = load(EXAMPLES / "checkpoint_manifest.json", CheckpointManifest)
    assert manifest == dataclasses.replace(current, files=())
    assert {f.name for f in current.files} >= {".metadata", "plan.json", "__0_0.distcp"}


def test_migrated_plan_is_validated_like_a_current_one(data_dir: Path) -> None:
    document = json.loads((data_dir / "plan_v1.json").read_text())
    document["layers"][0]["tp_degree"] = 3
    with pytest.raises(FormatError) as error:
        loads(json.dumps(document), Plan, source="old.json")
    message = str(error.value)
    assert message.startswith("old.json: layers[0].tp: tp 3 does not divide")
    assert message.endswith("(in the version 4 form of this version 1 file)")


def test_version_1_layer_with_both_old_and_new_keys_is_refused(data_dir: Path) -> None:
    document = json.loads((data_dir / "plan_v1.json").read_text())
    document["layers"][1]["tp"] = 2
    with pytest.raises(FormatError) as error:
        loads(json.dumps(document), Plan, source="old.json")
    assert str(error.value) == (
        "old.json: layers[1]: has both 'tp_degree' (version 1) and 'tp' (version 2)"
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_newer_version_is_refused_naming_the_supported_one(spec) -> None:  # type: ignore[no-untyped-def]
    text = json.dumps({"format": spec.name, "version": spec.version + 1})
    with pytest.raises(FormatError) as error:
        loads(text, source="future.json")
    assert str(error.value) == (
        f"future.json: version: version {spec.version + 1} is newer than the supported "
        f"version {spec.version} of {spec.name}; upgrade partita-formats to read it"
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_the_specification_table_and_the_example_give_the_current_version(spec) -> None:  # type: ignore[no-untyped-def]
    table = (EXAMPLES.parent / "formats.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith(f"| `{spec.name}` |"))
    assert row.split("|")[2].strip() == str(spec.version), row
    examples = [json.loads(p.read_text()) for p in EXAMPLES.glob("*.json")]
    versions = {e.get("version") for e in examples if e.get("format") == spec.name}
    assert versions == {spec.version}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_older_version_has_a_migration(spec) -> None:  # type: ignore[no-untyped-def]
    assert sorted(spec.migrations) == list(range(1, spec.version))


def test_a_file_of_another_format_is_refused_by_name() -> None:
    text = (EXAMPLES / "run_report.json").read_text()
    with pytest.raises(FormatError) as error:
        loads(text, Plan, source="r.json")
    assert str(error.value) == (
        "r.json: format: expected a partita.plan file, got partita.run_report"
    )


def test_plan_version_3_loads_as_version_4(data_dir: Path) -> None:
    old = json.loads((data_dir / "plan_v3.json").read_text())
    assert old["version"] == 3
    plan = load(data_dir / "plan_v3.json", Plan)
    assert [layer.ckpt for layer in plan.layers] == [layer["ckpt"] for layer in old["layers"]]
    # Version 4 added a ckpt mode: a version 3 reader could not have read it.
    newer = json.loads(json.dumps(old))
    newer["version"] = 4
    newer["layers"][0]["ckpt"] = "selective-op"
    assert loads(json.dumps(newer), Plan).layers[0].ckpt == "selective-op"


def test_model_profile_version_5_loads_without_attention_checkpoint_passes(
    data_dir: Path,
) -> None:
    old = json.loads((data_dir / "model_profile_v5.json").read_text())
    assert old["version"] == 5
    profile = load(data_dir / "model_profile_v5.json", ModelProfile)
    timings = [t for lt in profile.layer_types for t in lt.timings]
    assert timings
    assert all(
        t.attention_checkpoint_forward_s is None and t.attention_checkpoint_backward_s is None
        for t in timings
    )
    newer = json.loads(json.dumps(old))
    newer["version"] = 6
    newer["layer_types"][0]["timings"][0]["attention_checkpoint_backward_s"] = 0.25
    read = loads(json.dumps(newer), ModelProfile)
    assert read.layer_types[0].timings[0].attention_checkpoint_backward_s == 0.25


def test_model_profile_version_4_loads_without_selective_costs(data_dir: Path) -> None:
    old = json.loads((data_dir / "model_profile_v4.json").read_text())
    assert old["version"] == 4
    profile = load(data_dir / "model_profile_v4.json", ModelProfile)
    timings = [t for lt in profile.layer_types for t in lt.timings]
    memory = [m for lt in profile.layer_types for m in lt.memory]
    assert timings and memory
    assert all(t.selective_recompute_s is None and t.selective_forward_s is None for t in timings)
    assert all(m.selective_saved_bytes_per_sample is None for m in memory)

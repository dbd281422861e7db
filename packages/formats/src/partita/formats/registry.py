"""Every format Partita knows: its name, current version, dataclass, migrations and checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from partita.formats import (
    checkpoint_manifest,
    hardware_profile,
    migrations,
    model_description,
    model_profile,
    plan,
    run_report,
)
from partita.formats.consistency import (
    check_checkpoint_manifest,
    check_hardware_profile,
    check_model_description,
    check_model_profile,
    check_run_report,
)
from partita.formats.plan_checks import check_plan_structure

Migration = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class FormatSpec:
    name: str
    version: int
    cls: type
    title: str
    migrations: Mapping[int, Migration] = field(default_factory=dict)  # keyed by source version
    check: Callable[[Any], None] | None = None  # consistency beyond field types


SPECS: tuple[FormatSpec, ...] = (
    FormatSpec(
        hardware_profile.FORMAT,
        hardware_profile.VERSION,
        hardware_profile.HardwareProfile,
        "hardware profile",
        migrations={1: migrations.added_optional_fields},
        check=check_hardware_profile,
    ),
    FormatSpec(
        model_profile.FORMAT,
        model_profile.VERSION,
        model_profile.ModelProfile,
        "model profile",
        migrations={
            1: migrations.added_optional_fields,
            2: migrations.added_optional_fields,
            3: migrations.added_optional_fields,
            4: migrations.added_optional_fields,
            5: migrations.added_optional_fields,
        },
        check=check_model_profile,
    ),
    FormatSpec(
        model_description.FORMAT,
        model_description.VERSION,
        model_description.ModelDescription,
        "model description",
        migrations={1: migrations.added_optional_fields},
        check=check_model_description,
    ),
    FormatSpec(
        plan.FORMAT,
        plan.VERSION,
        plan.Plan,
        "plan",
        migrations={
            1: migrations.plan_v1_to_v2,
            2: migrations.plan_v2_to_v3,
            3: migrations.added_optional_fields,
        },
        check=check_plan_structure,
    ),
    FormatSpec(
        run_report.FORMAT,
        run_report.VERSION,
        run_report.RunReport,
        "run report",
        migrations={
            1: migrations.added_optional_fields,
            2: migrations.added_optional_fields,
            3: migrations.added_optional_fields,
            4: migrations.added_optional_fields,
            5: migrations.added_optional_fields,
        },
        check=check_run_report,
    ),
    FormatSpec(
        checkpoint_manifest.FORMAT,
        checkpoint_manifest.VERSION,
        checkpoint_manifest.CheckpointManifest,
        "checkpoint manifest",
        migrations={1: migrations.checkpoint_v1_to_v2, 2: migrations.added_optional_fields},
        check=check_checkpoint_manifest,
    ),
)

BY_NAME: dict[str, FormatSpec] = {spec.name: spec for spec in SPECS}
BY_CLASS: dict[type, FormatSpec] = {spec.cls: spec for spec in SPECS}


def spec_for(obj_or_cls: Any) -> FormatSpec:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    try:
        return BY_CLASS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not a Partita file format") from None

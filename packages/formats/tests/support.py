"""Paths and example files shared by the formats tests."""

from __future__ import annotations

from pathlib import Path

from partita.formats import (
    CheckpointManifest,
    HardwareProfile,
    ModelDescription,
    ModelProfile,
    Plan,
    RunReport,
)

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"
DATA = Path(__file__).resolve().parent / "data"

EXAMPLE_CLASSES: dict[str, type] = {
    "hardware_profile.json": HardwareProfile,
    "model_profile.json": ModelProfile,
    "model_description.json": ModelDescription,
    "plan.json": Plan,
    "run_report.json": RunReport,
    "checkpoint_manifest.json": CheckpointManifest,
}

"""Partita's versioned file formats: the contract between profiler, simulator and executor."""

from importlib.metadata import PackageNotFoundError, version

from partita.formats.checkpoint_manifest import CheckpointFile, CheckpointManifest
from partita.formats.codec import content_hash, dumps, load, loads, save
from partita.formats.errors import FormatError
from partita.formats.hardware_profile import (
    CollectiveProfile,
    ComputeThroughput,
    Device,
    HardwareProfile,
    Measurement,
    OverlapSlowdown,
    SyncCost,
    TensorWork,
    TimingSample,
)
from partita.formats.model_description import LayerDescription, ModelDescription
from partita.formats.model_profile import LayerMemory, LayerTiming, LayerTypeProfile, ModelProfile
from partita.formats.plan import (
    LayerStrategy,
    PipelineConfig,
    Plan,
    Predictions,
    Provenance,
    VocabStrategy,
)
from partita.formats.plan_checks import validate_plan
from partita.formats.registry import SPECS
from partita.formats.run_report import (
    RankMemory,
    RankPhases,
    RunReport,
    StepRecord,
    TrainingSettings,
)

try:
    __version__ = version("partita-formats")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "SPECS",
    "CheckpointFile",
    "CheckpointManifest",
    "CollectiveProfile",
    "ComputeThroughput",
    "Device",
    "FormatError",
    "HardwareProfile",
    "LayerDescription",
    "LayerMemory",
    "LayerStrategy",
    "LayerTiming",
    "LayerTypeProfile",
    "Measurement",
    "ModelDescription",
    "ModelProfile",
    "OverlapSlowdown",
    "PipelineConfig",
    "Plan",
    "Predictions",
    "Provenance",
    "RankMemory",
    "RankPhases",
    "RunReport",
    "StepRecord",
    "SyncCost",
    "TensorWork",
    "TimingSample",
    "TrainingSettings",
    "VocabStrategy",
    "__version__",
    "content_hash",
    "dumps",
    "load",
    "loads",
    "save",
    "validate_plan",
]

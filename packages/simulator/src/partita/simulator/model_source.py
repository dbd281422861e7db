"""A model description from a file, or from a real-size preset shipped with the simulator.

``partita plan``, ``simulate`` and ``whatif`` plan a preset (``--model llama3-70b``) with no
file and without torch: the descriptions ``partita describe PRESET`` writes are shipped in
``presets/``, at each model's default sequence length. A test in ``integration_tests`` keeps
them equal to what the models package describes today; for another length, write one with
``partita describe PRESET --seq N --out FILE`` (which needs the models package).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from partita.formats import ModelDescription, load, loads


def preset_names() -> list[str]:
    """The presets shipped as descriptions, sorted."""
    folder = resources.files("partita.simulator") / "presets"
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


def load_model_description(source: str) -> ModelDescription:
    """``source`` as a description file when one exists there, else as a shipped preset."""
    if Path(source).exists() or source.endswith(".json") or "/" in source:
        return load(source, ModelDescription)
    names = preset_names()
    if source not in names:
        raise ValueError(
            f"--model {source}: neither a description file nor a preset "
            f"(presets: {', '.join(names)}; other models: partita describe HF_DIR --out FILE)"
        )
    text = (resources.files("partita.simulator") / "presets" / f"{source}.json").read_text()
    return loads(text, ModelDescription, source=f"preset {source}")

"""A model description from a file, or from a preset described on the spot.

``partita plan``, ``simulate`` and ``whatif`` plan a preset (``--model llama3-70b``) with no
file and without torch: ``partita.formats.architectures`` describes it from its config, as
``partita describe PRESET`` does, at the model's default sequence length. For another length
or a model of your own, write a description with ``partita describe ... --seq N --out FILE``.
"""

from __future__ import annotations

from pathlib import Path

from partita.formats import ModelDescription, load
from partita.formats.architectures import describe_config, presets


def preset_names() -> list[str]:
    return sorted(presets())


def load_model_description(source: str) -> ModelDescription:
    """``source`` as a description file when one exists there, else as a preset."""
    if Path(source).exists() or source.endswith(".json") or "/" in source:
        return load(source, ModelDescription)
    known = presets()
    if source not in known:
        raise ValueError(
            f"--model {source}: neither a description file nor a preset "
            f"(presets: {', '.join(sorted(known))}; other models: partita describe --out FILE)"
        )
    return describe_config(known[source], name=source, source=f"preset {source}")

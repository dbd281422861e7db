"""Named model configurations, gathered from the families.

Each family module declares its presets: a ``<family>-tiny`` one for tests (dropout off, so
parallel runs can be compared with one process exactly; a forward and backward well under a
second on one CPU core) and the real sizes, for planning.
"""

from __future__ import annotations

from typing import Any


def all_presets() -> dict[str, dict[str, Any]]:
    from partita.models.families import FAMILIES

    merged: dict[str, dict[str, Any]] = {}
    for family in FAMILIES.values():
        for name, config in family.presets.items():
            assert name not in merged, f"preset {name} is declared twice"
            merged[name] = config
    return merged


def preset_names() -> list[str]:
    return sorted(all_presets())

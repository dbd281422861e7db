"""The real-size presets the simulator ships as descriptions (``partita plan --model
llama3-70b`` with no file and no torch) equal what the models package describes today.

After changing a family's description, rewrite them with
``python integration_tests/test_preset_descriptions.py --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from partita.formats import dumps
from partita.models.api import describe_model
from partita.models.presets import all_presets
from partita.simulator.model_source import load_model_description, preset_names

SHIPPED = Path(__file__).resolve().parents[1] / "packages/simulator/src/partita/simulator/presets"
REAL_SIZE = sorted(name for name in all_presets() if not name.endswith("-tiny"))
# The presets the issue that asked for them names (issue 25), among the real-size ones.
ASKED = {"llama3-8b", "llama3-70b", "llama3-405b", "mistral-7b", "qwen2.5-7b", "qwen2.5-72b"}


def test_every_real_size_preset_is_shipped() -> None:
    assert preset_names() == REAL_SIZE
    assert set(REAL_SIZE) >= ASKED


@pytest.mark.parametrize("name", REAL_SIZE)
def test_shipped_description_equals_the_models_description(name: str) -> None:
    assert load_model_description(name) == describe_model(name), (
        f"presets/{name}.json is stale: python {Path(__file__).name} --write"
    )


def _write() -> None:
    for old in SHIPPED.glob("*.json"):
        old.unlink()
    for name in REAL_SIZE:
        (SHIPPED / f"{name}.json").write_text(dumps(describe_model(name)))
        print(f"wrote {SHIPPED / name}.json")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python {sys.argv[0]} --write")
    _write()

"""``benchmarks/at_scale/validate.py`` predicts every published run it validates against, and
docs/fidelity/at-scale.md shows the table it computes today (no stale numbers in the docs).

Not a target check: the targets (mean absolute time error <= 10%) are tracked on that page.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "at_scale" / "validate.py"
PAGE = REPO / "docs" / "fidelity" / "at-scale.md"


def _validate_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("at_scale_validate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_validation_row_is_predicted_and_the_page_is_current(tmp_path: Path) -> None:
    validate = _validate_module()
    out = tmp_path / "at-scale.json"
    page = tmp_path / "page.md"
    page.write_text(PAGE.read_text())
    assert validate.main(["--json", str(out), "--markdown", str(page)]) == 0
    payload = json.loads(out.read_text())
    rows = json.loads((SCRIPT.parent / "published_runs.json").read_text())["rows"]
    assert payload["skipped"] == []
    assert len(payload["rows"]) == sum(r["split"] == "validation" for r in rows) == 20
    for row in payload["rows"]:
        assert row["predicted"] > 0 and row["predicted_iteration_s"] > 0
    assert page.read_text() == PAGE.read_text(), (
        "docs/fidelity/at-scale.md is stale: python benchmarks/at_scale/validate.py "
        "--markdown docs/fidelity/at-scale.md"
    )


def test_megatron_flop_formula_matches_the_papers_aggregate() -> None:
    """The paper's 1T row: 163 TFLOP/s per GPU on 3072 GPUs is 502.0 PFLOP/s aggregate; its
    formula for that model and batch gives the FLOPs one iteration counts."""
    validate = _validate_module()
    rows = json.loads((SCRIPT.parent / "published_runs.json").read_text())["rows"]
    row = next(r for r in rows if r["id"] == "megatron-t1-gpt-1008.0b-3072gpu")
    case = validate.build_case(row)
    assert case.plan.world_size == 3072 and case.plan.pipeline.degree == 64
    assert 1.0e12 < case.model.params < 1.02e12
    flops = validate.megatron_flops_per_iteration(case.model, 3072)
    # 96 B s l h^2 (1 + s/6h + V/16lh) with B 3072, s 2048, l 128, h 25600, V 51200.
    expected = (
        96 * 3072 * 2048 * 128 * 25600**2 * (1 + 2048 / (6 * 25600) + 51200 / (16 * 128 * 25600))
    )
    assert flops == expected

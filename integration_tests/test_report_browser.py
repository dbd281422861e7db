"""``partita report``'s page in a real headless Chromium: every figure draws, the timeline has
its bars and tooltips, nothing goes to the network, no console error; a screenshot lands in
.reports/report-screenshot.png (the CI artifact folder)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib
from browser import INSTALL_HINT, find_chromium, render

from partita.formats import Plan, RunReport, content_hash, load, save

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "docs" / "examples"
SCREENSHOT = REPO_ROOT / ".reports" / "report-screenshot.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _requirements() -> str:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no Chromium binary (looked for $PARTITA_CHROMIUM, chromium, chromium-browser, "
            f"google-chrome on PATH): install it with `{INSTALL_HINT}`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip(
            "the playwright package is missing: pip install playwright (the system Chromium "
            "is used; never `playwright install`)"
        )
    return chromium


def _run_folder(folder: Path) -> Path:
    """A trained run of the example plan, as partita train writes its folder."""
    folder.mkdir(parents=True)
    plan = load(EXAMPLES / "plan.json", Plan)
    save(plan, folder / "plan.json")
    report = load(EXAMPLES / "run_report.json", RunReport)
    save(dataclasses.replace(report, plan_sha256=content_hash(plan)), folder / "run_report.json")
    with open(folder / "steps.jsonl", "w", encoding="utf-8") as log:
        for step in range(12):
            record = {"step": step, "loss": 6.3 - 0.1 * step, "time_s": 0.047, "items": 256}
            log.write(json.dumps(record) + "\n")
    return folder


def _write_report(tmp_path: Path) -> tuple[Path, int]:
    from partita.simulator.html_report_inputs import search_results_document
    from partita.simulator.report_command import COMMAND
    from partita.simulator.search.engine import Candidate
    from partita.simulator.search.planner import PlanningResult

    plan = load(EXAMPLES / "plan.json", Plan)
    best = Candidate(plan, 0.040, (3.0e6, 4.0e6))
    result = PlanningResult(
        best=best, runners_up=[Candidate(plan, 0.045, (2.5e6, 3.5e6))],
        baselines={"dp": None, "uniform": Candidate(plan, 0.05, (2e6, 2e6))},
        considered=3, elapsed_s=0.0,
    )  # fmt: skip
    search = tmp_path / "search.json"
    search.write_text(json.dumps(search_results_document(result, budget_bytes=5e6)))
    out = tmp_path / "report.html"
    parser = argparse.ArgumentParser()
    COMMAND.add_arguments(parser)
    args = parser.parse_args(
        [
            str(_run_folder(tmp_path / "searched" / "train")),
            "--hardware", str(EXAMPLES / "hardware_profile.json"),
            "--model-profile", str(EXAMPLES / "model_profile.json"),
            "--model", str(EXAMPLES / "model_description.json"),
            "--search", str(search),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert COMMAND.run(args) == 0
    # Every section: the plan's 3 figures, the search's, and 4 of the run (iteration time,
    # the phases of each rank's step, memory per rank, the loss).
    return out, 8


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _requirements()
    started = time.monotonic()
    page, figures = _write_report(tmp_path)
    SCREENSHOT.unlink(missing_ok=True)
    from partita.simulator.html_report import FIGURE_ID_PREFIX

    timeline = f"{FIGURE_ID_PREFIX}0"
    rendered = render(
        page, chromium=chromium, figures=figures, screenshot=SCREENSHOT, hover_figure=timeline
    )
    assert rendered.blocked == [], "the page asked the network for these"
    assert rendered.console_errors == []
    assert rendered.plots == figures
    assert rendered.svgs >= figures  # plotly draws two or three layers of SVG per figure
    assert rendered.bars[timeline] > 0, "the timeline drew no bar"
    # The example plan: 2 stages x 4 micro-batches, forward and backward each, at least.
    assert rendered.bars[timeline] >= 16
    assert "micro-batch" in rendered.hover and "duration" in rendered.hover, rendered.hover
    data = SCREENSHOT.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert time.monotonic() - started < 60, "the browser test must stay under a minute"

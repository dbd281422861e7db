"""``partita report``: the HTML page, its figures, its inputs and its errors (no browser here;
integration_tests/test_report_browser.py opens the page in Chromium)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import synthetic as syn

from partita.formats import (
    HardwareProfile,
    ModelDescription,
    ModelProfile,
    Plan,
    RunReport,
    content_hash,
    load,
    save,
)
from partita.formats import cli as partita_cli
from partita.simulator.html_report import FIGURE_ID_PREFIX
from partita.simulator.html_report_figures import STREAM_LANES, timeline_figure
from partita.simulator.html_report_inputs import (
    SearchResults,
    load_run,
    load_search,
    search_results_document,
)
from partita.simulator.report_command import COMMAND
from partita.simulator.search.engine import Candidate
from partita.simulator.search.planner import PlanningResult
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"
MEASURED = [
    "--hardware", str(EXAMPLES / "hardware_profile.json"),
    "--model-profile", str(EXAMPLES / "model_profile.json"),
    "--model", str(EXAMPLES / "model_description.json"),
]  # fmt: skip


def _report(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    COMMAND.add_arguments(parser)
    return COMMAND.run(parser.parse_args(list(argv)))


def _figure_ids(page: str) -> list[str]:
    """The figures plotly draws: one ``Plotly.newPlot("<id>", ...)`` call each."""
    return re.findall(r'Plotly\.newPlot\(\s*"(' + FIGURE_ID_PREFIX + r'\d+)"', page)


# What would make a browser fetch something: a script, style sheet, frame or image from a URL,
# a CSS import or url(). The inlined plotly.js bundle is set aside first: its source holds URL
# strings (the MathJax and topojson locations, used only by figure kinds the report does not
# draw, and links in comments), which are text, not loads. The browser test checks the same
# thing from the other side: it blocks and counts every request that is not the file itself.
_LOADS = [
    re.compile(r"<script\b[^>]*\bsrc\s*=", re.IGNORECASE),
    re.compile(r"<link\b[^>]*\bhref\s*=", re.IGNORECASE),
    re.compile(r"<(?:img|iframe|embed|source|video|audio)\b[^>]*\bsrc\s*=", re.IGNORECASE),
    re.compile(r"<object\b[^>]*\bdata\s*=", re.IGNORECASE),
    re.compile(r"@import", re.IGNORECASE),
    re.compile(r"url\(\s*['\"]?\s*(?:https?:)?//", re.IGNORECASE),
    re.compile(r"\bhttps?://cdn", re.IGNORECASE),
]


def _external_loads(page: str) -> list[str]:
    from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

    bundle = get_plotlyjs()
    assert page.count(bundle) == 1, "plotly.js is inlined exactly once"
    rest = page.replace(bundle, "")
    return [m.group(0) for pattern in _LOADS for m in pattern.finditer(rest)]


def _spec_plan(tmp_path: Path) -> tuple[Path, Path]:
    plan = syn.plan(world=8, stages=(2, 2), micro_batches=4, global_batch=64, schedule="1f1b")
    save(plan, tmp_path / "plan.json")
    save(syn.description(4), tmp_path / "model.json")
    return tmp_path / "plan.json", tmp_path / "model.json"


def test_plan_from_a_spec_sheet_makes_a_self_contained_page(tmp_path: Path) -> None:
    plan, model = _spec_plan(tmp_path)
    out = tmp_path / "out" / "report.html"
    assert (
        _report(str(plan), "--model", str(model), "--cluster", "h100-sxm", "--out", str(out)) == 0
    )
    page = out.read_text(encoding="utf-8")
    # A plan alone: the timeline, memory over the iteration, peak memory by stage.
    assert _figure_ids(page) == [f"{FIGURE_ID_PREFIX}{i}" for i in range(3)]
    assert page.count('class="plotly-graph-div"') == 3
    assert _external_loads(page) == []
    for section in ("1. The plan", "2. The simulated timeline", "3. Memory", "4. The search"):
        assert section in page
    assert "No search results given" in page and "No trained run given" in page
    # The layer table: one row per block, with its strategy and stage.
    assert page.count("<td>blocks.") == 4
    assert "spec sheet h100-sxm" in page  # where the profiles came from


def test_timeline_has_one_row_per_stage_and_a_lane_per_stream() -> None:
    plan = syn.plan(world=8, stages=(1, 1, 1, 1), micro_batches=4, global_batch=64)
    cluster = load_cluster_spec("h100-sxm").with_changes(num_nodes=1)
    model = syn.description(4)
    hardware = hardware_profile_from_spec(cluster)
    result = simulate(
        plan,
        hardware=hardware,
        model_profile=model_profile_from_description(model, cluster, dtype="fp32"),
        model=model,
    )
    fig, notes = timeline_figure(result)
    assert notes == []
    assert list(fig.layout.yaxis.tickvals) == [0, 1, 2, 3]
    assert [t.split(" (")[0] for t in fig.layout.yaxis.ticktext] == [f"stage {s}" for s in range(4)]
    bars = sum(len(trace.x) for trace in fig.data)
    assert bars == len(result.events)
    for trace in fig.data:
        for y, (name, stage, stream, *_rest) in zip(trace.y, trace.customdata, strict=True):
            assert y == pytest.approx(stage + STREAM_LANES[stream][0]), name
            assert abs(y - stage) < 0.5  # inside its stage's row
    forwards = next(trace for trace in fig.data if trace.name == "forward")
    assert {row[0] for row in forwards.customdata} == {"F0", "F1", "F2", "F3"}
    assert "micro-batch" in forwards.hovertemplate and "duration" in forwards.hovertemplate


def _run_folder(folder: Path, *, losses: list[float], role: str) -> Path:
    """A run folder as partita train writes it, from the shipped examples."""
    train = folder / role / "train"
    train.mkdir(parents=True)
    plan = load(EXAMPLES / "plan.json", Plan)
    save(plan, train / "plan.json")
    report = load(EXAMPLES / "run_report.json", RunReport)
    report = dataclasses.replace(report, plan_sha256=content_hash(plan))
    save(report, train / "run_report.json")
    with open(train / "steps.jsonl", "w", encoding="utf-8") as log:
        for step, loss in enumerate(losses):
            log.write(json.dumps({"step": step, "loss": loss, "time_s": 0.05, "items": 256}) + "\n")
    return train


def _planning_result() -> PlanningResult:
    plan = load(EXAMPLES / "plan.json", Plan)
    best = Candidate(plan, 0.040, (3.0e6, 4.0e6), simulated=True)
    runner = Candidate(plan, 0.045, (2.5e6, 3.5e6))
    return PlanningResult(
        best=best,
        runners_up=[runner],
        baselines={"uniform": runner, "dp": None},
        considered=12,
        elapsed_s=0.1,
    )


def test_run_folder_with_search_and_a_second_run(tmp_path: Path) -> None:
    searched = _run_folder(tmp_path, losses=[6.2, 6.0, 5.7, 5.5, 5.1, 4.9], role="searched")
    baseline = _run_folder(tmp_path, losses=[6.2, 6.1, 5.8], role="baseline")
    search = tmp_path / "search.json"
    search.write_text(
        json.dumps(search_results_document(_planning_result(), budget_bytes=3.8e6)),
        encoding="utf-8",
    )
    out = tmp_path / "report.html"
    argv = [str(searched), *MEASURED, "--run", str(baseline), "--out", str(out)]
    assert _report(*argv, "--search", str(search), "--search", str(EXAMPLES / "plan.json")) == 0
    page = out.read_text(encoding="utf-8")
    # 3 of the plan, the search's chart, then iteration time, the phases of each rank's
    # step, memory per rank and the loss.
    assert len(_figure_ids(page)) == 8
    assert "Where the step goes, per rank" in page and "No run timed" not in page
    assert _external_loads(page) == []
    assert "No search results given" not in page and "No trained run given" not in page
    assert "searched/train" in page and "baseline/train" in page
    assert "runner-up 1" in page and "nothing fits" in page  # the dp baseline found nothing
    # A bar pair per rank, named with its stage (the example plan's pp axis is outermost).
    # (plotly writes "/" in its JSON as \u002f, so that no "</script>" can end its script)
    assert "searched\\u002ftrain rank 3 (stage 1)" in page


def test_the_phases_of_a_step_set_each_rank_against_its_stage(tmp_path: Path) -> None:
    from partita.simulator.html_report_figures import PHASE_NAMES, phases_figure

    run = load_run(_run_folder(tmp_path, losses=[6.2, 6.0], role="searched"))
    hardware = load(EXAMPLES / "hardware_profile.json", HardwareProfile)
    result = simulate(
        run.plan,
        hardware=hardware,
        model_profile=load(EXAMPLES / "model_profile.json", ModelProfile),
        model=load(EXAMPLES / "model_description.json", ModelDescription),
    )
    figure = phases_figure([run], [result])
    assert [trace.name for trace in figure.data] == list(PHASE_NAMES.values())
    schedule = figure.data[0]
    ranks, sides = schedule.x
    assert list(sides) == ["predicted", "measured"] * 4
    assert ranks[0] == ranks[1] == "searched/train rank 0"
    # measured: the example's ranks; predicted: each rank's stage (pp outermost, 2 stages).
    assert list(schedule.y[1::2]) == pytest.approx([39.2, 40.1, 38.9, 39.6])
    stages = [result.stages[s].phases.schedule_s * 1e3 for s in (0, 0, 1, 1)]  # type: ignore[union-attr]
    assert list(schedule.y[0::2]) == pytest.approx(stages)
    assert stages[0] != stages[2]


def test_a_run_without_phases_is_said_so(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, losses=[6.2, 6.0], role="old")
    report = load(folder / "run_report.json", RunReport)
    save(dataclasses.replace(report, phases=()), folder / "run_report.json")
    out = tmp_path / "report.html"
    assert _report(str(folder), *MEASURED, "--out", str(out)) == 0
    page = out.read_text(encoding="utf-8")
    assert "No run timed its step" in page and "Where the step goes" not in page


def test_search_results_document_reads_back() -> None:
    document = search_results_document(_planning_result(), budget_bytes=3.8e6)
    assert document["format"] == "partita.search_results" and document["version"] == 1
    kinds = [c["kind"] for c in document["candidates"]]
    assert kinds == ["best", "runner-up", "baseline", "baseline"]
    # The runner-up peaks at 3.5 MB, the budget is 3.8 MB; the best's 4 MB is over it.
    assert [c["feasible"] for c in document["candidates"]] == [False, True, True, False]
    json.dumps(document, allow_nan=False)  # plain JSON


def _search_file(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "search.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_search_accepts_a_bare_list_and_plan_files(tmp_path: Path) -> None:
    bare = [{"plan": "pp1 x1: 4 x tp1 ddp", "iteration_time_s": 0.5, "peak_memory_bytes": 1e9,
             "feasible": True}]  # fmt: skip
    results = load_search([str(_search_file(tmp_path, bare)), str(EXAMPLES / "plan.json")])
    assert isinstance(results, SearchResults)
    assert [c.kind for c in results.candidates] == ["candidate", "plan file"]
    assert results.candidates[1].iteration_time_s == pytest.approx(0.0421)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "other"}, "expected a partita.search_results file"),
        ([{"plan": "x", "feasible": "yes"}], r"candidates\[0\]\.feasible: expected true or false"),
        ([{"plan": "x", "feasible": True, "iteration_time_s": -1}], "non-negative"),
    ],
)
def test_bad_search_files_are_one_line(tmp_path: Path, document: object, message: str) -> None:
    path = _search_file(tmp_path, document)
    with pytest.raises(ValueError, match=message) as error:
        load_search([str(path)])
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    """What ``partita report ...`` prints on stderr, through the real command line's error
    handling (the entry point may not be installed in this environment yet)."""
    monkeypatch.setattr(partita_cli, "discover_commands", lambda: ([COMMAND], []))
    assert partita_cli.main(["report", *argv]) == partita_cli.EXIT_BAD_INPUT
    return capsys.readouterr().err


def test_bad_paths_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "r.html")
    missing = tmp_path / "missing.json"
    err = _cli(capsys, monkeypatch, str(missing), *MEASURED, "--out", out)
    assert err.splitlines() == [
        f"partita report: error: {missing}: no such plan file or run folder"
    ]
    # A folder that holds runs but is none: the error names the run folders inside.
    _run_folder(tmp_path / "demo", losses=[6.0], role="searched")
    err = _cli(capsys, monkeypatch, str(tmp_path / "demo"), *MEASURED, "--out", out)
    assert err.splitlines() == [
        f"partita report: error: {tmp_path / 'demo'}: not a run folder of partita train, no "
        "run_report.json (run folders inside it: searched/train)"
    ]
    log = tmp_path / "demo" / "searched" / "train" / "steps.jsonl"
    log.write_text('{"step": 0, "loss": 1.0}\n', encoding="utf-8")
    err = _cli(capsys, monkeypatch, str(log.parent), *MEASURED, "--out", out)
    assert len(err.splitlines()) == 1 and f"{log}:1: not a step record" in err
    assert not Path(out).exists()


def test_model_comes_from_the_run_when_it_names_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    train = _run_folder(tmp_path, losses=[6.0], role="searched")
    report = load(train / "run_report.json", RunReport)
    save(dataclasses.replace(report, model="demo/gpt-demo"), train / "run_report.json")
    err = _cli(capsys, monkeypatch, str(train), *MEASURED[:4], "--out", str(tmp_path / "r.html"))
    assert err.splitlines() == [
        f"partita report: error: {train / 'run_report.json'} names model 'demo/gpt-demo', not "
        "a preset: give --model DESC (partita describe demo/gpt-demo --out DESC)"
    ]


def test_load_run_prefers_the_longer_step_log(tmp_path: Path) -> None:
    train = _run_folder(tmp_path, losses=[1.0] * 8, role="r")
    run = load_run(train)
    assert len(run.steps) == 8 and run.notes == ()
    assert run.label == "r/train"
    assert run.measured_step_s == pytest.approx(0.05)

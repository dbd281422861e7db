"""``partita report``'s page: one self-contained HTML file that explains a plan.

Sections: 1. the plan layer by layer; 2. the simulated timeline of one iteration; 3. memory
over the iteration per stage against the device limit; 4. the search's candidates (when
given); 5. after training, predicted against measured, and the loss (when a run is given).

The page works offline and from a file: plotly.js is inlined once in the head (every figure
shares it, where plotly's ``include_plotlyjs=True`` would inline it into each), and nothing is
loaded from anywhere else: no script, style sheet, font or image comes from a URL.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

from partita.formats import HardwareProfile, ModelDescription, ModelProfile, Plan
from partita.formats.text_table import human_bytes, human_seconds
from partita.simulator import html_report_figures as figures
from partita.simulator.html_report_inputs import (
    WARMUP_STEPS,
    SearchResults,
    TrainedRun,
    stage_of_rank,
)
from partita.simulator.result import SimulationResult, bubble_fraction
from partita.simulator.search_report import describe_plan
from partita.simulator.simulation import build_workload, simulate

__all__ = ["FIGURE_ID_PREFIX", "Report", "ReportInputs", "build_report", "write_report"]

FIGURE_ID_PREFIX = "partita-figure-"
# No plotly logo link, and figures follow the window's width.
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class ReportInputs:
    plan: Plan
    plan_source: str  # the file, for the reader
    model: ModelDescription
    hardware: HardwareProfile
    model_profile: ModelProfile
    profiles_origin: str
    runs: tuple[TrainedRun, ...] = ()  # the first is the run of ``plan`` when one was given
    search: SearchResults | None = None
    title: str = ""


@dataclass
class Report:
    html: str
    figures: int  # plotly figures on the page
    notes: list[str] = field(default_factory=list)


@dataclass
class _Page:
    parts: list[str] = field(default_factory=list)
    figures: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: Any) -> None:
        div_id = f"{FIGURE_ID_PREFIX}{self.figures}"
        self.figures += 1
        body = fig.to_html(
            full_html=False,
            include_plotlyjs=False,  # inlined once in the head
            div_id=div_id,
            config=_PLOTLY_CONFIG,
            default_width="100%",
        )
        self.add(f'<div class="figure">{body}</div>')

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{_e(text)}</p>')


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def build_report(inputs: ReportInputs) -> Report:
    """Simulate the plan (and each run's) and lay out the page."""
    plan, model = inputs.plan, inputs.model
    result = _simulate(plan, inputs, inputs.plan_source)
    page = _Page()
    title = inputs.title or f"Partita report: {plan.provenance.model or model.name}"
    _summary(page, inputs, result, title)
    _plan_section(page, inputs)
    _timeline_section(page, result)
    _memory_section(page, inputs, result)
    _search_section(page, inputs.search)
    _runs_section(page, inputs, result)
    document = _document(title, "\n".join(page.parts))
    return Report(html=document, figures=page.figures)


def write_report(inputs: ReportInputs, path: str | Path) -> tuple[Path, Report]:
    report = build_report(inputs)
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.html, encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write: {error.strerror or error}") from None
    return out, report


def _simulate(plan: Plan, inputs: ReportInputs, source: str) -> SimulationResult:
    try:
        return simulate(
            plan, hardware=inputs.hardware, model_profile=inputs.model_profile, model=inputs.model
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


# --- sections -------------------------------------------------------------------------------


def _summary(page: _Page, inputs: ReportInputs, result: SimulationResult, title: str) -> None:
    plan = inputs.plan
    device = inputs.hardware.device
    rows = [
        ("plan", f"{describe_plan(plan)} ({inputs.plan_source})"),
        ("model", f"{inputs.model.name}: {len(plan.layers)} blocks, {inputs.model.params:,} "
         "parameters"),
        ("devices", f"{plan.world_size} ({inputs.hardware.num_nodes} node(s) x "
         f"{inputs.hardware.devices_per_node}, {device.name}, {human_bytes(device.memory_bytes)} "
         "each)"),
        ("batch", f"global {plan.global_batch_size} in {plan.num_micro_batches} micro-batch(es) "
         f"of {plan.micro_batch_size}, {plan.precision}"),
        ("profiles", inputs.profiles_origin),
        ("predicted", f"iteration {human_seconds(result.iteration_time_s)}, "
         f"{result.throughput_samples_per_s:.2f} samples/s, bubble "
         f"{bubble_fraction(result):.1%}, peak {human_bytes(max(result.peak_memory_bytes))} "
         "per device"),
    ]  # fmt: skip
    if plan.provenance.created_by:
        rows.append(("written by", plan.provenance.created_by))
    page.add(f"<header><h1>{_e(title)}</h1>")
    page.add(_table(["", ""], [[name, value] for name, value in rows], cls="summary", head=False))
    for warning in result.warnings:
        page.note(f"warning: {warning}")
    page.add(
        '<nav><a href="#plan">1. plan</a> <a href="#timeline">2. timeline</a> '
        '<a href="#memory">3. memory</a> <a href="#search">4. search</a> '
        '<a href="#training">5. training</a></nav></header>'
    )


def _plan_section(page: _Page, inputs: ReportInputs) -> None:
    plan, model = inputs.plan, inputs.model
    pipeline = plan.pipeline
    page.add('<section id="plan"><h2>1. The plan, layer by layer</h2>')
    page.add(
        f"<p>{pipeline.degree} pipeline stage(s), schedule {_e(pipeline.schedule)}"
        + (f", {pipeline.chunks} chunks per stage" if pipeline.chunks > 1 else "")
        + f"; {plan.devices_per_stage} device(s) per stage, mesh "
        f"{_e(' x '.join(plan.mesh_axis_order))} (outermost first). Memory is per device of "
        "the stage, after sharding; times are one micro-batch's.</p>"
    )
    works, _ = build_workload(
        plan, hardware=inputs.hardware, model_profile=inputs.model_profile, model=model
    )
    kinds = {layer.name: layer.kind for layer in model.layers}
    names = [layer.name for layer in model.layers if layer.kind == "block"]
    blocks = {name: index for index, name in enumerate(names)}
    vocab = plan.vocab
    rows: list[list[object]] = []
    for work in works:
        rank, chunk = pipeline.rank_of_virtual_stage(work.stage), work.stage // pipeline.degree
        for layer in work.layers:
            if layer.name in blocks:
                s = plan.layers[blocks[layer.name]]
                strategy: list[object] = [s.tp, s.sp, s.dp, s.ckpt]
            else:  # the embedding and the head follow the vocabulary's strategy
                strategy = [vocab.tp, "vocab" if vocab.sp else "none", vocab.dp, "-"]
            held = layer.param_bytes + layer.grad_bytes + layer.optimizer_bytes
            rows.append(
                [
                    len(rows),
                    layer.name,
                    kinds.get(layer.name, "-"),
                    *strategy,
                    rank,
                    chunk,
                    human_bytes(layer.param_bytes),
                    human_bytes(held),
                    human_bytes(layer.activation_bytes),
                    human_bytes(layer.transient_bytes),
                    human_seconds(layer.forward_s),
                    human_seconds(layer.backward_s),
                ]
            )
    headers = ["#", "layer", "kind", "tp", "sp", "dp", "ckpt", "stage", "chunk", "params"]
    headers += ["params+grads+optim", "activations", "transient", "forward", "backward"]
    page.add('<div class="scroll">' + _table(headers, rows, cls="layers") + "</div></section>")


def _timeline_section(page: _Page, result: SimulationResult) -> None:
    page.add('<section id="timeline"><h2>2. The simulated timeline, per stage</h2>')
    page.add(
        "<p>One row per pipeline stage (its devices run alike in the simulation), one lane per "
        "stream: compute (tall), then tensor-parallel, data-parallel and point-to-point "
        "communication. F: forward, B: backward (input gradients only where a W follows), W: "
        "weight gradients, R: recomputation; the number is the micro-batch, after a dot the "
        "chunk. Hover a bar for its details; click a legend entry to hide that kind.</p>"
    )
    fig, notes = figures.timeline_figure(result, devices=_devices(result))
    for note in notes:
        page.note(note)
    page.figure(fig)
    page.add("</section>")


def _devices(result: SimulationResult) -> dict[int, int]:
    return {stage.stage: stage.devices for stage in result.stages}


def _memory_section(page: _Page, inputs: ReportInputs, result: SimulationResult) -> None:
    plan = inputs.plan
    limit = inputs.hardware.device.memory_bytes
    page.add('<section id="memory"><h2>3. Memory per device, by stage</h2>')
    page.figure(figures.memory_timeline_figure(result, limit_bytes=limit))
    page.figure(figures.memory_breakdown_figure(result, limit_bytes=limit))
    ranks: dict[int, list[int]] = {}
    for rank in range(plan.world_size):
        ranks.setdefault(stage_of_rank(plan, rank), []).append(rank)
    rows = []
    for stage in sorted(result.stages, key=lambda s: s.stage):
        m = stage.memory
        rows.append(
            [
                stage.stage,
                _ranges(ranks.get(stage.stage, [])),
                human_seconds(stage.busy_s),
                human_seconds(stage.bubble_s),
                human_bytes(m.parameters),
                human_bytes(m.gradients),
                human_bytes(m.optimizer_states),
                human_bytes(m.activations),
                human_bytes(m.transient),
                human_bytes(m.total),
                figures.share(m.total / limit) if limit else "-",
            ]
        )
    headers = ["stage", "ranks", "busy", "bubble", "params", "grads", "optim", "acts"]
    headers += ["transient", "peak", "of device"]
    page.add(_table(headers, rows) + "</section>")


def _ranges(ranks: Sequence[int]) -> str:
    """0,1,2,3,8,9 -> "0-3, 8-9": a stage of a big plan holds thousands of ranks."""
    spans: list[list[int]] = []
    for rank in sorted(ranks):
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _search_section(page: _Page, search: SearchResults | None) -> None:
    page.add('<section id="search"><h2>4. The search: runners-up and baselines</h2>')
    if search is None or not search.candidates:
        page.note(
            "No search results given: pass --search FILE, the candidates partita plan wrote "
            "(format partita.search_results), or plan files with predictions."
        )
        page.add("</section>")
        return
    if search.budget_bytes is not None:
        page.add(f"<p>Memory budget per device: {_e(human_bytes(search.budget_bytes))}.</p>")
    fig = figures.search_figure(search)
    if fig is None:
        page.note("No candidate has a predicted iteration time to chart.")
    else:
        page.figure(fig)
    rows = [
        [
            c.kind,
            c.name,
            c.plan or "nothing fits",
            "-" if c.iteration_time_s is None else human_seconds(c.iteration_time_s),
            "-" if c.throughput_samples_per_s is None else f"{c.throughput_samples_per_s:.2f}",
            "-" if c.peak_memory_bytes is None else human_bytes(c.peak_memory_bytes),
            "yes" if c.feasible else "no",
        ]
        for c in search.candidates
    ]
    headers = ["kind", "name", "plan", "iteration", "samples/s", "peak", "fits"]
    page.add(_table(headers, rows) + "</section>")


def _runs_section(page: _Page, inputs: ReportInputs, result: SimulationResult) -> None:
    page.add('<section id="training"><h2>5. After training: predicted against measured</h2>')
    runs = inputs.runs
    if not runs:
        page.note(
            "No trained run given: pass a run folder of partita train as the report's input "
            "(or with --run DIR) to compare the prediction with what it measured."
        )
        page.add("</section>")
        return
    predictions = [
        result if run.plan == inputs.plan else _simulate(run.plan, inputs, str(run.folder))
        for run in runs
    ]
    rows = []
    for run, predicted in zip(runs, predictions, strict=True):
        measured = run.measured_step_s
        error = (
            f"{(measured - predicted.iteration_time_s) / predicted.iteration_time_s:+.1%}"
            if measured is not None and predicted.iteration_time_s > 0
            else "-"
        )
        rows.append(
            [
                run.label,
                describe_plan(run.plan),
                f"{run.report.status}, {len(run.steps)} steps",
                f"{run.report.world_size} x {run.report.device} ({run.report.backend})",
                human_seconds(predicted.iteration_time_s),
                "-" if measured is None else human_seconds(measured),
                error,
            ]
        )
        for note in run.notes:
            page.note(f"note: {note}")
        if run.report.error:
            page.note(f"{run.label} failed: {run.report.error}")
    headers = ["run", "plan", "status", "ranks", "iteration predicted", "measured", "error"]
    page.add(_table(headers, rows))
    page.add(
        f"<p>Measured iteration: the median step after the first "
        f"{WARMUP_STEPS} (warm-up); peak memory: "
        f"{_e(runs[0].report.memory_method)}. Predictions: the simulation of each run's "
        "plan with the profiles above.</p>"
    )
    page.figure(figures.iteration_figure(runs, [p.iteration_time_s for p in predictions]))
    if any(run.report.phases for run in runs):
        page.add(
            "<p>Where the step went on each rank, as the executor times it: the passes of the "
            "schedule (with the pipeline's transfers and the bubble), the gradient sync the "
            "passes did not hide, the optimizer step, and the step's end (the loss all-reduce "
            "and the barrier, so the wait for the slowest rank too); medians over the steps "
            "after the first, against the simulation of the rank's stage.</p>"
        )
        page.figure(figures.phases_figure(runs, predictions))
    else:
        page.note("No run timed its step's phases (a run report before version 6).")
    if any(run.report.peak_memory for run in runs):
        page.figure(figures.rank_memory_figure(runs, [p.peak_memory_bytes for p in predictions]))
    else:
        page.note("No run measured its peak memory per rank.")
    loss = figures.loss_figure(runs)
    if loss is None:
        page.note("No run recorded a finite loss.")
    else:
        page.figure(loss)
    page.add("</section>")


# --- HTML -----------------------------------------------------------------------------------


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, cls: str = "", head: bool = True
) -> str:
    parts = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        parts.append(
            "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>"
        )
    parts.append("<tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1.5em 3em;
       color: #222; }
h1 { font-size: 1.5em; margin-top: 1em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
table.summary td:first-child { font-weight: 600; }
.scroll { max-height: 32em; overflow: auto; }
.note { color: #8a5a00; background: #fff8e6; padding: .4em .6em; border-left: 3px solid #e0a800; }
.figure { margin: 1em 0; }
footer { color: #888; font-size: .8em; margin-top: 3em; }
"""


def _document(title: str, body: str) -> str:
    tools = ", ".join(
        f"{name} {_version(name)}" for name in ("partita-simulator", "partita-formats", "plotly")
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n"
        # plotly.js itself, inlined: the page must open offline and from a file.
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head><body>\n"
        f"{body}\n"
        f"<footer>Written by partita report ({_e(tools)}).</footer>\n"
        "</body></html>\n"
    )


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"

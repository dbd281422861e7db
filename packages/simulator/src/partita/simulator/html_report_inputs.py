"""What ``partita report`` reads besides a plan: trained run folders and search results.

A run folder is what ``partita train --run-dir`` writes: ``plan.json`` (the plan trained),
``run_report.json`` (``partita.run_report``: step times, losses, peak memory per rank) and
``steps.jsonl`` (one JSON object per step, appended as it trains).

Search results are a small JSON file of the plans a search priced (``partita.search_results``,
see :func:`search_results_document`, which is what ``partita plan`` writes there), or plan
files that carry predictions (each becomes one candidate). Nothing here imports plotly.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partita.formats import Plan, RunReport, StepRecord, content_hash, load

if TYPE_CHECKING:
    from partita.simulator.search.engine import Candidate
    from partita.simulator.search.planner import PlanningResult

__all__ = [
    "SEARCH_FORMAT",
    "SearchCandidate",
    "SearchResults",
    "TrainedRun",
    "load_run",
    "load_search",
    "search_results_document",
    "stage_of_rank",
]

SEARCH_FORMAT = "partita.search_results"
SEARCH_VERSION = 1
RUN_REPORT = "run_report.json"
STEP_LOG = "steps.jsonl"
PLAN = "plan.json"
# The first steps build optimizer states and warm caches: the measured iteration time is the
# median of the steps after them (as the demo's comparison does).
WARMUP_STEPS = 3


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    label: str
    plan: Plan
    report: RunReport
    steps: tuple[StepRecord, ...]  # the report's, with any later ones from steps.jsonl
    notes: tuple[str, ...] = ()

    @property
    def measured_step_s(self) -> float | None:
        times = [s.time_s for s in self.steps]
        if not times:
            return None
        return statistics.median(times[WARMUP_STEPS:] or times)


def load_run(folder: str | Path, *, label: str | None = None) -> TrainedRun:
    """A run folder of ``partita train``; a one-line ``ValueError`` naming what is wrong."""
    path = Path(folder)
    if path.is_file() and path.name == RUN_REPORT:
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"{path}: no such run folder")
    if not (path / RUN_REPORT).is_file():
        inside = sorted(str(p.parent.relative_to(path)) for p in path.glob(f"*/*/{RUN_REPORT}"))
        inside += sorted(str(p.parent.relative_to(path)) for p in path.glob(f"*/{RUN_REPORT}"))
        hint = f" (run folders inside it: {', '.join(sorted(inside))})" if inside else ""
        raise ValueError(f"{path}: not a run folder of partita train, no {RUN_REPORT}{hint}")
    if not (path / PLAN).is_file():
        raise ValueError(f"{path / PLAN}: missing; a run folder of partita train holds its plan")
    report = load(path / RUN_REPORT, RunReport)
    plan = load(path / PLAN, Plan)
    notes = []
    if content_hash(plan) != report.plan_sha256:
        notes.append(f"{path / PLAN} is not the plan {path / RUN_REPORT} records (sha256 differs)")
    steps = _merged_steps(report.steps, path / STEP_LOG)
    return TrainedRun(
        folder=path,
        label=label or _run_label(path),
        plan=plan,
        report=report,
        steps=steps,
        notes=tuple(notes),
    )


def _run_label(path: Path) -> str:
    # partita train's folder is often called "train" inside a folder named for the plan
    # (the demo's searched/train, baseline/train): the parent tells runs apart.
    resolved = path.resolve()
    if resolved.name == "train" and resolved.parent.name:
        return f"{resolved.parent.name}/{resolved.name}"
    return resolved.name or str(path)


def _merged_steps(recorded: tuple[StepRecord, ...], log: Path) -> tuple[StepRecord, ...]:
    """The report's steps, with the step log's on top: the log is appended at every step, the
    report only at checkpoints and the end, so a run still going (or killed) has more there."""
    steps = {s.step: s for s in recorded}
    if log.is_file():
        for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                loss = item["loss"]
                record = StepRecord(
                    step=int(item["step"]),
                    loss=None if loss is None or not math.isfinite(loss) else float(loss),
                    time_s=float(item["time_s"]),
                    items=int(item.get("items", 0)),
                )
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{log}:{number}: not a step record ({error})") from None
            steps[record.step] = record
    return tuple(steps[k] for k in sorted(steps))


def stage_of_rank(plan: Plan, rank: int) -> int:
    """The pipeline stage ``rank`` belongs to, by ``mesh_axis_order`` (outermost first)."""
    tp = plan.layers[0].tp if plan.layers else 1
    sizes = {"pp": plan.pipeline.degree, "dp": plan.dp_degree(tp), "tp": tp}
    stride = 1
    for axis in reversed(plan.mesh_axis_order):
        if axis == "pp":
            return (rank // stride) % plan.pipeline.degree
        stride *= sizes[axis]
    return 0


# --- search results -------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchCandidate:
    kind: str  # "best", "runner-up", "baseline", "without" (a technique left out), "plan file"
    name: str
    plan: str | None  # one-line description (search_report.describe_plan); None: nothing fit
    iteration_time_s: float | None
    peak_memory_bytes: float | None
    feasible: bool
    throughput_samples_per_s: float | None = None


@dataclass(frozen=True)
class SearchResults:
    candidates: tuple[SearchCandidate, ...]
    budget_bytes: float | None = None
    sources: tuple[str, ...] = ()


def search_results_document(result: PlanningResult, *, budget_bytes: float) -> dict[str, Any]:
    """What ``partita plan --search-out FILE`` writes: every plan the search shows, as JSON."""
    from partita.simulator.search_report import describe_plan

    def entry(kind: str, name: str, candidate: Candidate | None) -> dict[str, Any]:
        if candidate is None:
            return {
                "kind": kind,
                "name": name,
                "plan": None,
                "iteration_time_s": None,
                "throughput_samples_per_s": None,
                "peak_memory_bytes": None,
                "feasible": False,
            }
        return {
            "kind": kind,
            "name": name,
            "plan": describe_plan(candidate.plan),
            "iteration_time_s": candidate.iteration_time_s,
            "throughput_samples_per_s": candidate.throughput,
            "peak_memory_bytes": max(candidate.peak_memory_bytes),
            "feasible": max(candidate.peak_memory_bytes) <= budget_bytes,
        }

    candidates = [entry("best", "best", result.best)]
    candidates += [
        entry("runner-up", f"runner-up {i}", c) for i, c in enumerate(result.runners_up, 1)
    ]
    candidates += [entry("baseline", name, c) for name, c in result.baselines.items()]
    candidates += [entry("without", f"without {name}", c) for name, c in result.techniques.items()]
    return {
        "format": SEARCH_FORMAT,
        "version": SEARCH_VERSION,
        "budget_bytes": budget_bytes,
        "considered": result.considered,
        "candidates": candidates,
    }


def load_search(paths: list[str]) -> SearchResults:
    """Search results files and plan files, in the order given."""
    candidates: list[SearchCandidate] = []
    budget: float | None = None
    for name in paths:
        path = Path(name)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"--search {path}: cannot read: {error.strerror or error}") from None
        except ValueError as error:
            raise ValueError(f"--search {path}: not JSON ({error})") from None
        if isinstance(document, dict) and document.get("format") == "partita.plan":
            candidates.append(_plan_candidate(path))
            continue
        found, found_budget = _search_document(document, path)
        candidates += found
        budget = found_budget if found_budget is not None else budget
    return SearchResults(tuple(candidates), budget, tuple(paths))


def _plan_candidate(path: Path) -> SearchCandidate:
    from partita.simulator.search_report import describe_plan

    plan = load(path, Plan)
    predictions = plan.predictions
    return SearchCandidate(
        kind="plan file",
        name=path.stem,
        plan=describe_plan(plan),
        iteration_time_s=predictions.iteration_time_s if predictions else None,
        peak_memory_bytes=(
            max(predictions.peak_memory_bytes_per_stage)
            if predictions and predictions.peak_memory_bytes_per_stage
            else None
        ),
        # partita plan writes only a plan that fits its budget.
        feasible=True,
        throughput_samples_per_s=predictions.throughput_samples_per_s if predictions else None,
    )


def _search_document(document: Any, path: Path) -> tuple[list[SearchCandidate], float | None]:
    where = f"--search {path}"
    budget: float | None = None
    if isinstance(document, dict):
        if document.get("format") != SEARCH_FORMAT:
            raise ValueError(
                f"{where}: expected a {SEARCH_FORMAT} file, a plan file or a list of candidates"
            )
        version = document.get("version")
        if version != SEARCH_VERSION:
            raise ValueError(f"{where}: version {version!r} unknown (this reads {SEARCH_VERSION})")
        budget = _number(document.get("budget_bytes"), f"{where}: budget_bytes")
        items = document.get("candidates")
    else:
        items = document
    if not isinstance(items, list):
        raise ValueError(f"{where}: candidates: expected a list")
    return [_candidate(item, f"{where}: candidates[{i}]") for i, item in enumerate(items)], budget


def _candidate(item: Any, where: str) -> SearchCandidate:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object")
    plan = item.get("plan")
    if plan is not None and not isinstance(plan, str):
        raise ValueError(f"{where}.plan: expected a string or null")
    feasible = item.get("feasible")
    if not isinstance(feasible, bool):
        raise ValueError(f"{where}.feasible: expected true or false")
    kind, name = item.get("kind", "candidate"), item.get("name", plan or "")
    if not isinstance(kind, str) or not isinstance(name, str):
        raise ValueError(f"{where}: kind and name are strings")
    return SearchCandidate(
        kind=kind,
        name=name,
        plan=plan,
        iteration_time_s=_number(item.get("iteration_time_s"), f"{where}.iteration_time_s"),
        peak_memory_bytes=_number(item.get("peak_memory_bytes"), f"{where}.peak_memory_bytes"),
        feasible=feasible,
        throughput_samples_per_s=_number(
            item.get("throughput_samples_per_s"), f"{where}.throughput_samples_per_s"
        ),
    )


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    # bool is an int to Python, never a time or a size.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number or null, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: expected a non-negative number, got {value!r}")
    return float(value)

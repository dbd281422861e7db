"""``partita whatif``: simulate one plan over clusters, memories, bandwidths and batches."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partita.formats.cli import EXIT_OK, Command

if TYPE_CHECKING:
    from partita.simulator.whatif import WhatIfPoint

_AXIS_OPTIONS = {
    "world_size": ("--world-sizes", int, "numbers of devices, e.g. 64,128,256"),
    "devices_per_node": ("--devices-per-node", int, "devices per node, e.g. 4,8"),
    "memory_gb": ("--memory-gb", float, "device memory in GiB, e.g. 40,80"),
    "intra_bandwidth_x": ("--intra-bandwidth-x", float, "intra-node bandwidth factors"),
    "inter_bandwidth_x": ("--inter-bandwidth-x", float, "inter-node bandwidth factors, e.g. 1,2"),
    "global_batch": ("--global-batch", int, "global batch sizes"),
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, metavar="P", help="the plan to study")
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="DESC|PRESET",
        help="model description or preset; repeat with descriptions of other sequence lengths "
        "(partita describe --seq) to vary it",
    )
    parser.add_argument("--cluster", metavar="NAME|FILE", help="cluster spec preset or JSON file")
    parser.add_argument("--hardware", metavar="H", help="measured hardware profile instead")
    parser.add_argument("--model-profile", metavar="M", help="measured model profile instead")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        help="the plan's precision (the default); another one is refused",
    )
    for axis, (flag, kind, text) in _AXIS_OPTIONS.items():
        parser.add_argument(flag, dest=axis, metavar="LIST", type=_list_of(kind), help=text)
    parser.add_argument("--plot", metavar="PNG", help="throughput against the first axis")
    parser.add_argument("--json", metavar="FILE", help="write every point as JSON")


def _list_of(kind: Callable[[str], float]) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None

    return parse


def _run(args: argparse.Namespace) -> int:
    from partita.formats import HardwareProfile, ModelProfile, Plan, load
    from partita.simulator.model_source import load_model_description
    from partita.simulator.specsheet import load_cluster_spec
    from partita.simulator.whatif import Study

    study = Study(
        plan=load(args.plan, Plan),
        models=[load_model_description(source) for source in args.model],
        cluster=load_cluster_spec(args.cluster) if args.cluster else None,
        hardware=load(args.hardware, HardwareProfile) if args.hardware else None,
        model_profile=load(args.model_profile, ModelProfile) if args.model_profile else None,
        dtype=args.dtype,
    )
    axes = {axis: getattr(args, axis) for axis in _AXIS_OPTIONS if getattr(args, axis)}
    points = study.run(axes)
    print(_table(points, list(axes)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([_as_dict(p) for p in points], indent=2) + "\n")
        print(f"points: {args.json}")
    if args.plot:
        print(f"plot: {_plot(points, list(axes), args.plot)}")
    return EXIT_OK


def _table(points: Sequence[WhatIfPoint], axes: Sequence[str]) -> str:
    from partita.formats.text_table import human_bytes, human_seconds, table

    headers = [
        *axes,
        "seq",
        "devices",
        "iteration",
        "samples/s",
        "per device",
        "bubble",
        "peak mem by stage",
        "fits",
    ]
    rows = []
    for p in points:
        settings = [_fmt(p.settings[a]) for a in axes] + [_fmt(p.settings["seq_len"]), p.world_size]
        if p.prediction is None:
            rows.append([*settings, "-", "-", "-", "-", "-", f"no: {p.error}"])
            continue
        pred = p.prediction
        rows.append(
            [
                *settings,
                human_seconds(pred.iteration_time_s),
                f"{pred.throughput_samples_per_s:.2f}",
                f"{pred.throughput_samples_per_s / p.world_size:.3f}",
                f"{pred.bubble_fraction:.1%}",
                _stage_peaks(pred.stage_peak_bytes or (pred.peak_memory_bytes,)),
                "yes" if pred.fits else f"no: over {human_bytes(pred.device_memory_bytes)}",
            ]
        )
    lines = [table(headers, rows)]
    # The simulator's warnings, each once, with the points it was given at.
    seen: dict[str, list[int]] = {}
    for index, p in enumerate(points, start=1):
        for warning in p.prediction.warnings if p.prediction else ():
            seen.setdefault(warning, []).append(index)
    for warning, rows_at in seen.items():
        where = "every row" if len(rows_at) == len(points) else f"rows {_ranges(rows_at)}"
        lines.append(f"warning ({where}): {warning}")
    return "\n".join(lines)


def _stage_peaks(peaks: Sequence[float]) -> str:
    """Every stage's peak, the fullest first named: "65.02 GiB (stage 0 of 2; 60.37)"."""
    from partita.formats.text_table import human_bytes

    fullest = max(range(len(peaks)), key=lambda i: peaks[i])
    if len(peaks) == 1:
        return human_bytes(peaks[0])
    others = ", ".join(f"{p / 2**30:.2f}" for i, p in enumerate(peaks) if i != fullest)
    if len(peaks) > 4:
        low = min(peaks) / 2**30
        others = f"others {low:.2f} to {sorted(peaks)[-2] / 2**30:.2f}"
    return f"{human_bytes(peaks[fullest])} (stage {fullest} of {len(peaks)}; {others})"


def _ranges(numbers: Sequence[int]) -> str:
    """1,2,3,5 -> "1-3, 5"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _as_dict(point: WhatIfPoint) -> dict[str, Any]:
    return {**dataclasses.asdict(point), "fits": point.fits}


def _plot(points: Sequence[WhatIfPoint], axes: Sequence[str], path: str) -> Path:
    from partita.simulator.plots import plot_throughput

    x_axis = axes[0] if axes else "world_size"
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.prediction is None:
            continue
        others = [f"{a}={_fmt(p.settings[a])}" for a in (*axes[1:], "seq_len") if a in p.settings]
        x = p.settings.get(x_axis, p.world_size)
        rate = p.prediction.throughput_samples_per_s
        series.setdefault(", ".join(others) or "plan", []).append((x, rate))
    if not series:
        raise ValueError("no point of the study could be simulated; nothing to plot")
    return plot_throughput(series, path, xlabel=x_axis.replace("_", " "))


COMMAND = Command(
    name="whatif",
    help="simulate a plan across cluster sizes, memories, bandwidths and batch sizes",
    add_arguments=_add_arguments,
    run=_run,
)

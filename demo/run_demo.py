"""The main job on this machine, as far as Partita goes today (`nox -s demo`).

describe a small GPT -> profiles of this CPU host -> search the best plan for 2 gloo ranks
under a memory budget -> simulate it (trace and plots) -> train with it -> predicted against
measured. Everything lands in one run folder, runs/demo-<UTC time>/, printed at the end.

Until the profiler lands, the profiles are spec-sheet estimates of this host (the
``cpu-gloo-local`` cluster preset, FLOPs at a stated efficiency), so the predicted column
says what a spec sheet predicts, not yet what a measured profile would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL, SEQ, RANKS, GLOBAL_BATCH, STEPS, MEMORY_GB = "gpt-tiny", 64, 2, 8, 30, 1.0


def cli() -> str:
    beside = Path(sys.executable).with_name("partita")
    found = str(beside) if beside.is_file() else shutil.which("partita")
    if found is None:
        raise SystemExit("demo: the `partita` command is not installed")
    return found


def step(title: str, *args: str, timeout: int = 600) -> None:
    print(f"\n== {title}\n$ partita {' '.join(args)}", flush=True)
    done = subprocess.run([cli(), *args], timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo: `partita {args[0]}` failed with exit {done.returncode}")


def spec_sheet_profiles(folder: Path) -> None:
    from partita.formats import ModelDescription, load, save
    from partita.simulator.specsheet import (
        hardware_profile_from_spec,
        load_cluster_spec,
        model_profile_from_description,
    )

    spec = load_cluster_spec("cpu-gloo-local").with_changes(devices_per_node=RANKS, num_nodes=1)
    model = load(folder / "model.json", ModelDescription)
    save(hardware_profile_from_spec(spec), folder / "hardware.json")
    profile = model_profile_from_description(model, spec, dtype="fp32", tp_degrees=(1, 2))
    save(profile, folder / "model_profile.json")
    print("\n== profiles of this host (spec-sheet estimates until the profiler lands)")
    print(f"wrote {folder / 'hardware.json'} and {folder / 'model_profile.json'}")


def compare(folder: Path) -> None:
    from partita.formats import (
        HardwareProfile,
        ModelDescription,
        ModelProfile,
        Plan,
        RunReport,
        load,
    )
    from partita.formats.text_table import human_bytes, human_seconds, table
    from partita.simulator.simulation import simulate

    plan = load(folder / "plan.json", Plan)
    predicted = simulate(
        plan,
        hardware=load(folder / "hardware.json", HardwareProfile),
        model_profile=load(folder / "model_profile.json", ModelProfile),
        model=load(folder / "model.json", ModelDescription),
        record_events=False,
    )
    report = load(folder / "train" / "run_report.json", RunReport)
    measured_step = statistics.median(s.time_s for s in report.steps[1:])
    rows = [
        [
            "iteration time",
            human_seconds(predicted.iteration_time_s),
            human_seconds(measured_step),
            f"{measured_step / predicted.iteration_time_s:.2f}x",
        ]
    ]
    for memory in report.peak_memory:
        stage_peak = predicted.stages[0].memory.total
        rows.append(
            [
                f"peak memory rank {memory.rank}",
                human_bytes(stage_peak),
                human_bytes(memory.peak_bytes),
                f"{memory.peak_bytes / stage_peak:.2f}x",
            ]
        )
    print("\n== predicted against measured")
    print(table(["", "predicted", "measured", "measured/predicted"], rows))
    losses = [s.loss for s in report.steps if s.loss is not None]
    print(f"\nloss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    (folder / "comparison.json").write_text(
        json.dumps(
            {
                "predicted_iteration_s": predicted.iteration_time_s,
                "measured_step_median_s": measured_step,
                "predicted_peak_bytes": predicted.stages[0].memory.total,
                "measured_peak_bytes": {m.rank: m.peak_bytes for m in report.peak_memory},
            },
            indent=2,
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    folder = args.runs_dir / f"demo-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    folder.mkdir(parents=True)
    step(
        "describe the model",
        "describe",
        MODEL,
        "--seq",
        str(SEQ),
        "--out",
        str(folder / "model.json"),
    )
    spec_sheet_profiles(folder)
    step(
        "search the best plan",
        "plan",
        "--hardware",
        str(folder / "hardware.json"),
        "--model-profile",
        str(folder / "model_profile.json"),
        "--model",
        str(folder / "model.json"),
        "--world-size",
        str(RANKS),
        "--memory-gb",
        str(MEMORY_GB),
        "--global-batch",
        str(GLOBAL_BATCH),
        "--space",
        "uniform",
        "--max-pipeline-degree",
        "1",
        "--out",
        str(folder / "plan.json"),
    )
    step(
        "simulate it",
        "simulate",
        "--plan",
        str(folder / "plan.json"),
        "--hardware",
        str(folder / "hardware.json"),
        "--model-profile",
        str(folder / "model_profile.json"),
        "--model",
        str(folder / "model.json"),
        "--trace",
        str(folder / "trace.json"),
        "--plot",
        str(folder / "timeline.png"),
        "--memory-plot",
        str(folder / "memory.png"),
    )
    from partita.models.text_data import sample_text_path

    step(
        "train with it, on the sample text shipped with partita-models",
        "train",
        "--plan",
        str(folder / "plan.json"),
        "--model",
        MODEL,
        "--steps",
        str(args.steps),
        "--data",
        str(sample_text_path()),
        "--lr",
        "5e-3",
        "--run-dir",
        str(folder / "train"),
    )
    compare(folder)
    print(f"\nrun folder: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The main job on this machine (`nox -s demo`): profile, search, simulate, train, compare.

A small GPT (demo/gpt-demo/config.json, 10.8 M parameters) on 2 gloo ranks of this CPU host:

1. describe the model; profile this machine (collectives, matmul, overlap, memory) and the
   model's layers (tp 1 and 2), measured with 2 gloo ranks;
2. set a memory budget per rank below what pure data parallelism needs, and search the
   fastest plan under it (full space: layer-wise strategies and pipelines); if the executor
   does not run that plan yet, say why and search again in what it runs;
3. pick a baseline of another kind (the best uniform plan, or when the searched plan is
   itself uniform, the best plain data-parallel, ZeRO-3 or 3D plan that differs from it);
4. simulate both (Chrome trace, timeline and memory plots), train with both on the sample
   text shipped with partita-models, and print predicted against measured iteration time and
   peak memory per rank, and the searched plan's speed-up over the baseline; the searched
   run's final checkpoint is exported as a Hugging Face model directory.

Everything lands in one run folder, runs/demo-<UTC time>/, whose path is printed first and
last. A stage that fails ends the demo with one line naming it and its log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from demo_steps import EXIT_BAD_INPUT, StageFailed, header, stage, try_stage

from partita.formats import Plan, load

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "demo" / "gpt-demo"  # a Hugging Face config.json: 6 blocks, hidden 384
MODEL_NAME = "gpt-demo"
# partita train cuts text into blocks of min(n_positions, 128) tokens; n_positions is 128, so
# the profiles, the plan and the training all see sequences of 128.
SEQ = 128
RANKS = 2
# One sample per rank under data parallelism: the executor takes the local batch in one pass
# until pipelines land, and at this size a data-parallel plan has no second micro-batch.
GLOBAL_BATCH = 2
STEPS = 40
BUDGET_FRACTION = 0.6  # of what pure data parallelism needs per rank
LEARNING_RATE = "2e-3"

BASELINE_SPACES = {
    "dp": "plain data parallelism (DDP)",
    "zero3": "ZeRO-3 data parallelism",
    "3d": "Megatron-style 3D (uniform tensor parallelism with DDP or ZeRO-1)",
    "uniform": "the best uniform plan (one strategy for every layer)",
}


@dataclass
class Run:
    folder: Path
    steps: int
    summary: list[str] = field(default_factory=list)
    _stages: int = 0

    def log(self, name: str) -> Path:
        self._stages += 1
        return self.folder / "logs" / f"{self._stages:02d}-{name}.log"

    def note(self, line: str = "") -> None:
        print(line, flush=True)
        self.summary.append(line)

    @property
    def profiles(self) -> list[str]:
        return [
            "--hardware",
            str(self.folder / "hardware.json"),
            "--model-profile",
            str(self.folder / "model_profile.json"),
            "--model",
            str(self.folder / "model.json"),
        ]


def profile(run: Run) -> None:
    stage(
        f"describe the model ({MODEL_DIR.relative_to(REPO_ROOT)}, sequence {SEQ})",
        ["describe", str(MODEL_DIR), "--seq", str(SEQ), "--name", MODEL_NAME, "--out",
         str(run.folder / "model.json")],
        log=run.log("describe"),
    )  # fmt: skip
    stage(
        f"profile this machine: collectives, matmul, overlap, memory ({RANKS} gloo ranks)",
        ["profile", "hardware", "--nproc", str(RANKS), "--backend", "gloo", "--out",
         str(run.folder / "hardware.json")],
        log=run.log("profile-hardware"),
    )  # fmt: skip
    stage(
        f"profile the model's layers: micro-batches 1 and 2, tp 1 and 2 ({RANKS} gloo ranks)",
        ["profile", "model", "--model", str(MODEL_DIR), "--seq", str(SEQ), "--batch-sizes",
         "1", "2", "--tp", "1", "2", "--nproc", str(RANKS), "--device", "cpu", "--out",
         str(run.folder / "model_profile.json")],
        log=run.log("profile-model"),
    )  # fmt: skip


def search(
    run: Run, title: str, *, space: str, budget_gb: float, max_pp: int | None, out: Path
) -> tuple[Plan | None, str]:
    """``partita plan`` in ``space``: (the plan, "") or (None, why nothing fits)."""
    args = ["plan", *run.profiles, "--world-size", str(RANKS), "--global-batch",
            str(GLOBAL_BATCH), "--memory-gb", f"{budget_gb:.6g}", "--space", space]  # fmt: skip
    if max_pp is not None:
        args += ["--max-pipeline-degree", str(max_pp)]
    search_out = out.with_name(f"{out.stem}.search.json")
    args += ["--out", str(out), "--search-out", str(search_out)]
    result = try_stage(title, args, log=run.log(out.stem))
    if result.returncode == EXIT_BAD_INPUT:
        return None, result.last_line.removeprefix("partita plan: error: ")
    return load(out, Plan), ""


def memory_budget(run: Run) -> float:
    """Budget per rank in GiB: a fraction of what the best pure data-parallel plan needs."""
    plan, why = search(
        run,
        "what pure data parallelism needs per rank (search without a budget)",
        space="dp",
        budget_gb=1024,
        max_pp=1,
        out=run.folder / "search" / "dp-unbounded.json",
    )
    if plan is None or plan.predictions is None:
        raise StageFailed(f"demo: no data-parallel plan for {RANKS} ranks: {why}")
    need = max(plan.predictions.peak_memory_bytes_per_stage)
    budget = BUDGET_FRACTION * need
    run.note(
        f"memory budget: {BUDGET_FRACTION:.0%} of the {need / 2**20:.1f} MiB per rank that pure "
        f"data parallelism needs = {budget / 2**20:.1f} MiB per rank "
        f"(--memory-gb {budget / 2**30:.6g})"
    )
    return budget / 2**30


def searched_plan(run: Run, budget_gb: float) -> tuple[Plan, Path]:
    """The fastest plan under the budget that the executor runs, falling back if need be."""
    from demo_plans import describe_plan, executor_refusal

    attempts = [("full", None), ("full", 1), ("uniform", 1)]
    for index, (space, max_pp) in enumerate(attempts):
        suffix = "" if max_pp is None else f", pipeline degree <= {max_pp}"
        out = run.folder / "search" / f"plan-{space}{'' if max_pp is None else '-pp1'}.json"
        title = f"search the fastest plan under the budget ({space} space{suffix})"
        plan, why = search(run, title, space=space, budget_gb=budget_gb, max_pp=max_pp, out=out)
        if plan is None:
            raise StageFailed(f"demo: stage 'search' found no plan: {why}")
        refusal = executor_refusal(plan)
        if refusal is None:
            run.note(f"searched plan: {describe_plan(plan)} ({space} space{suffix})")
            return plan, out
        nxt = attempts[index + 1] if index + 1 < len(attempts) else None
        run.note(
            f"the executor does not run the {space}-space plan ({describe_plan(plan)}) yet: "
            f"{refusal}" + (f"; searching again in the {nxt[0]} space, no pipeline" if nxt else "")
        )
    raise StageFailed("demo: stage 'search' found no plan under the budget that the executor runs")


def baseline_plan(run: Run, searched: Plan, budget_gb: float) -> tuple[Plan, Path]:
    """The best uniform plan of another kind than ``searched`` that the executor runs."""
    from demo_plans import describe_plan, executor_refusal, is_uniform, same_strategy

    if is_uniform(searched):
        spaces = ["dp", "zero3", "3d", "uniform"]
        why = "the searched plan is itself uniform: the baseline is the best plan of another kind"
    else:
        spaces = ["uniform", "dp", "zero3", "3d"]
        why = "the searched plan is layer-wise or pipelined: the baseline is the best uniform plan"
    for space in spaces:
        out = run.folder / "search" / f"baseline-{space}.json"
        title = f"baseline candidate: {BASELINE_SPACES[space]} (--space {space})"
        plan, refused = search(run, title, space=space, budget_gb=budget_gb, max_pp=1, out=out)
        if plan is None:
            run.note(f"baseline: nothing in the {space} space: {refused}")
            continue
        if same_strategy(plan, searched):
            run.note(f"baseline: the best {space} plan is the searched plan itself; next")
            continue
        refusal = executor_refusal(plan)
        if refusal is not None:
            run.note(f"baseline: the executor does not run the best {space} plan yet: {refusal}")
            continue
        run.note(f"baseline: {describe_plan(plan)}, {BASELINE_SPACES[space]}; {why}")
        return plan, out
    raise StageFailed("demo: stage 'baseline' found no other plan under the budget to compare with")


def simulate_and_train(run: Run, role: str, plan_file: Path) -> None:
    from partita.models.text_data import sample_text_path

    folder = run.folder / role
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan_file, folder / "plan.json")
    stage(
        f"simulate the {role} plan (trace and plots)",
        ["simulate", "--plan", str(folder / "plan.json"), *run.profiles,
         "--trace", str(folder / "trace.json"), "--plot", str(folder / "timeline.png"),
         "--memory-plot", str(folder / "memory.png")],
        log=run.log(f"simulate-{role}"),
    )  # fmt: skip
    stage(
        f"train with the {role} plan: {run.steps} steps on the sample text, {RANKS} gloo ranks",
        ["train", "--plan", str(folder / "plan.json"), "--model", str(MODEL_DIR),
         "--steps", str(run.steps), "--data", str(sample_text_path()), "--lr", LEARNING_RATE,
         "--nproc", str(RANKS), "--run-dir", str(folder / "train"),
         *([] if role == "searched" else ["--no-final-checkpoint"])],
        log=run.log(f"train-{role}"),
    )  # fmt: skip
    if role == "searched":  # the trained model, as transformers reads it
        stage(
            "export the searched run's final checkpoint as a Hugging Face model",
            ["export", str(folder / "train"), "--out", str(folder / "hf-model")],
            log=run.log("export"),
        )  # fmt: skip


def write_report(run: Run, searched_file: Path) -> Path:
    """One offline HTML page: the searched plan layer by layer, its simulated timeline and
    memory, the search's runners-up, and both trainings predicted against measured."""
    out = run.folder / "report.html"
    search = searched_file.with_name(f"{searched_file.stem}.search.json")
    stage(
        "write the report (plan, timeline, memory, search, predicted vs measured)",
        ["report", str(run.folder / "searched" / "train"),
         "--run", str(run.folder / "baseline" / "train"), "--search", str(search),
         *run.profiles, "--title", f"Partita demo: {MODEL_NAME}", "--out", str(out)],
        log=run.log("report"),
    )  # fmt: skip
    return out


def machine_note() -> str:
    cores = _cores()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if cores < RANKS:
        fit = f"oversubscribed: {RANKS} ranks on {cores} core(s), timings include scheduler waits"
    elif cores == RANKS:
        fit = "one core per rank; more ranks would oversubscribe the cores"
    else:
        fit = f"{cores} cores"
    return f"machine: {RANKS} gloo ranks on {cores} CPU core(s) ({fit}); load average {load}"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_note() -> str | None:
    """A warning when other work shared the cores during the last minute."""
    load, cores = os.getloadavg()[0], _cores()
    if load <= 1.5 * cores + 0.5:  # our own ranks keep about one core each busy
        return None
    return (
        f"note: load average {load:.1f} on {cores} cores: other work shared the cores, so the "
        "measured times (and the profiles) include waiting for it"
    )


def compare(run: Run, budget_gb: float, elapsed_s: float) -> None:
    from demo_compare import (
        WARMUP_STEPS,
        Trained,
        artifact_lines,
        comparison_json,
        comparison_table,
        loss_line,
        same_losses_line,
        speedup_line,
    )

    from partita.formats import RunReport

    runs = [
        Trained(
            role=role,
            plan=load(run.folder / role / "plan.json", Plan),
            report=load(run.folder / role / "train" / "run_report.json", RunReport),
        )
        for role in ("searched", "baseline")
    ]
    document = comparison_json(runs, budget_bytes=int(budget_gb * 2**30))
    (run.folder / "comparison.json").write_text(json.dumps(document, indent=2) + "\n")
    header("predicted against measured")
    run.note(comparison_table(runs))
    run.note()
    run.note(speedup_line(runs[0], runs[1]))
    for trained in runs:
        run.note(loss_line(trained))
    same = same_losses_line(runs)
    if same is not None:
        run.note(same)
    run.note(
        f"measured iteration time: median step after {WARMUP_STEPS} warm-up steps; peak memory: "
        f"{runs[0].report.memory_method} (the lowest of steps 2-4)"
    )
    busy = busy_note()
    if busy:
        run.note(busy)
    run.note("\nartifacts:")
    (run.folder / "summary.txt").touch()
    for line in artifact_lines(run.folder):
        run.note(line)
    run.note(f"\nrun folder: {run.folder} ({elapsed_s / 60:.1f} min)")
    (run.folder / "summary.txt").write_text("\n".join(run.summary) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    folder = args.runs_dir.resolve() / f"demo-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    folder.mkdir(parents=True)
    run = Run(folder=folder, steps=args.steps)
    print(f"run folder: {folder}")
    run.note(f"Partita demo: {MODEL_NAME} (sequence {SEQ}, global batch {GLOBAL_BATCH})")
    run.note(machine_note())
    try:
        profile(run)
        budget_gb = memory_budget(run)
        searched, searched_file = searched_plan(run, budget_gb)
        _, baseline_file = baseline_plan(run, searched, budget_gb)
        simulate_and_train(run, "searched", searched_file)
        simulate_and_train(run, "baseline", baseline_file)
        report = write_report(run, searched_file)
        compare(run, budget_gb, time.monotonic() - started)
        print(f"report: {report} (open in a browser; works offline)")
    except StageFailed as failure:
        print(str(failure), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"demo: interrupted (run folder: {folder})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

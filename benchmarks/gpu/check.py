"""The GPU check (docs/gpu.md): Partita's main job on one NVIDIA GPU, within 8 minutes.

Run it through ``bash benchmarks/gpu/check.sh [--out DIR]``, which installs the packages
when they are missing. On a machine without CUDA it prints one line and writes nothing.
Otherwise it runs these stages, each a command with its own timeout inside one overall
deadline; a stage that fails is recorded (command, exit code, the end of its stderr) and
the check goes on with what does not need it:

1. device: name, memory, versions, whether ``flash_attn`` imports (a child process, so that
   this process never holds a CUDA context while the stages use the GPU);
2. ``partita train --help``, ``partita profile model --help``: which flags exist;
3. ``partita profile hardware --nproc 1``: bf16 matmul rate and memory bandwidth (if it
   fails, a direct measurement by a child process: ``check.py --probe direct``);
4. ``partita describe``, then ``partita profile model --tp 1`` (world 1 only, bf16);
5. ``partita plan --world-size 1`` under the GPU's memory less a margin;
6. the searched plan and its alternatives (checkpointing flipped; 1, 2, 4 micro-batches;
   the other attention kernel): ``partita simulate`` each, then ``partita train --nproc 1``
   each, the most telling first, while the deadline allows.

It writes ``gpu-check.json`` (every number and stage), ``gpu-check.md`` (the summary) and
``gpu-check-work.tar.gz`` (profiles, plans, run reports, logs) into ``--out``, rewriting the
first two after every stage so that a check stopped from outside still leaves its results.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "partita.gpu_check"
VERSION = 1

MODEL = "gpt2-xl"  # 1.56 B parameters (GPT-2 XL): 48 blocks, hidden 1600, 25 heads
SEQ = 1024
GLOBAL_BATCH = 8
STEPS = 20
PRECISION = "bf16"
PROFILE_BATCH_SIZES = (1, 2, 4, 8)  # every micro-batch that 1, 2 or 4 micro-batches of 8 give
MICRO_BATCHES = (1, 2, 4)
WARMUP_STEPS = 3  # left out of the measured step time, as in the demo (the first builds states)
DEADLINE_S = 450.0
MEMORY_MARGIN = 0.10  # of the device's memory, at least MIN_MARGIN_BYTES: context, fragmentation
MIN_MARGIN_BYTES = 2 * 2**30
MFU_TARGET = 0.50  # for this model on one H100/H200: a reference point, never an assertion
RESERVE_S = 10.0  # kept back from the deadline to write the results
MIN_STAGE_S = 10.0  # a stage that would get less is skipped

# Per-stage timeouts (seconds); each is also cut to what is left of the deadline.
TIMEOUTS = {
    "probe": 90.0,
    "help": 60.0,
    "hardware": 150.0,
    "describe": 90.0,
    "model_profile": 200.0,
    "plan": 90.0,
    "simulate": 60.0,
    "train": 180.0,
}

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; first match.
GPU_PEAKS_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe"),
    (r"\bH100\b.*\bNVL\b", 835.0, "H100 NVL"),
    (r"\bH100\b", 989.0, "H100 SXM"),
    (r"\bH200\b.*\bNVL\b", 835.0, "H200 NVL"),
    (r"\bH200\b", 989.0, "H200"),
    (r"\bA100\b", 312.0, "A100"),
)

TORCHRUN_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
PARTITA = [sys.executable, "-m", "partita.formats.cli"]  # this interpreter's own packages


# ---------------------------------------------------------------------------------------
# Pure parts: formulas, lookups, parsing, plan variants (unit-tested)


def peak_bf16_flops(device_name: str) -> tuple[float | None, str]:
    """The device's dense bf16 peak in FLOP/s and where it comes from; None if unknown."""
    for pattern, tflops, label in GPU_PEAKS_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops * 1e12, f"{label} dense bf16 peak, {tflops:g} TFLOP/s (datasheet)"
    return None, f"no datasheet peak known for {device_name!r}"


def model_flops_per_step(
    *, params: int, num_layers: int, hidden: int, seq: int, batch: int
) -> float:
    """Model FLOPs of one training step (forward and backward): 6 N T for the weights plus
    12 L h s^2 per sample for attention's scores and weighted sums (full, not causal-halved);
    recomputation under checkpointing is not counted (MFU, not hardware FLOPs)."""
    tokens = batch * seq
    return 6.0 * params * tokens + 12.0 * num_layers * hidden * seq**2 * batch


FLOPS_FORMULA = (
    "model FLOPs per step = 6 * N * T + 12 * L * h * s^2 * B (N parameters, T = B * s tokens, "
    "L blocks, h hidden size, s sequence length, B sequences per step; forward and backward; "
    "attention counted in full, not halved for causality; recomputation under checkpointing "
    "not counted)"
)


def mfu(flops_per_step: float, step_s: float, peak_flops: float) -> float:
    return flops_per_step / step_s / peak_flops


def measured_step_s(step_times: Sequence[float], warmup: int = WARMUP_STEPS) -> float:
    """Median step time after the warm-up steps (all steps when there are no more)."""
    times = list(step_times)
    if not times:
        raise ValueError("no steps recorded")
    return statistics.median(times[warmup:] or times)


def memory_budget_gib(total_bytes: int, margin: float = MEMORY_MARGIN) -> float:
    """The search's memory budget: the device's memory less max(margin, 2 GiB), in GiB,
    rounded down to 0.01 GiB."""
    usable = total_bytes - max(total_bytes * margin, MIN_MARGIN_BYTES)
    return max(0.0, int(usable / 2**30 * 100) / 100)


_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_BYTES = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_simulation(text: str) -> dict[str, float]:
    """Iteration time and the largest stage peak from ``partita simulate``'s summary (it has
    no machine-readable output): ``iteration 1.234 s, ...`` and the stage table's last
    byte column (``peak``)."""
    found = re.search(r"^iteration ([\d.]+) (s|ms|us)\b", text, re.MULTILINE)
    if not found:
        raise ValueError("no 'iteration ...' line in partita simulate's output")
    lines = text.splitlines()
    header = next(
        (i for i, line in enumerate(lines) if line.split()[:2] == ["stage", "devices"]), None
    )
    if header is None:
        raise ValueError("no stage table in partita simulate's output")
    peaks = []
    for line in lines[header + 1 :]:
        if not re.match(r"\s*\d+\s", line):
            break
        values = re.findall(r"([\d.]+) (B|KiB|MiB|GiB)\b", line)
        if values:
            number, unit = values[-1]
            peaks.append(float(number) * _BYTES[unit])
    if not peaks:
        raise ValueError("no stage rows in partita simulate's output")
    return {
        "iteration_s": float(found.group(1)) * _SECONDS[found.group(2)],
        "peak_bytes": max(peaks),
    }


def ckpt_label(plan: dict[str, Any]) -> str:
    # Plan files before version 3 said true or false; "attention" recomputes too.
    flags = [layer.get("ckpt") not in (None, False, "none") for layer in plan["layers"]]
    if all(flags):
        return "all"
    if not any(flags):
        return "none"
    return f"{sum(flags)} of {len(flags)}"


@dataclass(frozen=True)
class Variant:
    """One training run: a plan (the searched one or a changed copy) and an attention kernel."""

    name: str
    plan: dict[str, Any]
    attention: str | None  # the --attention value; None: the flag is not given
    changes: str  # what differs from the searched plan
    skip_reason: str | None = None


def _changed(plan: dict[str, Any], note: str, **fields: Any) -> dict[str, Any]:
    changed = copy.deepcopy(plan)
    changed.update(fields)
    changed.pop("predictions", None)  # the search's prediction is of the plan it found
    provenance = changed.setdefault("provenance", {})
    provenance["created_by"] = (
        f"benchmarks/gpu/check.py: {note} ({provenance.get('created_by', '')})"
    )
    return changed


def plan_variants(
    plan: dict[str, Any],
    *,
    attention: str | None,
    other_attention: str | None,
    attention_skip: str | None = None,
    base_name: str = "searched",
) -> list[Variant]:
    """The plan, then the alternatives in the order they are worth training: checkpointing
    flipped, each other count of micro-batches that divides the batch, the other kernel."""
    variants = [Variant(base_name, plan, attention, "as searched")]
    on = ckpt_label(plan) == "none"
    layers = [{**layer, "ckpt": "full" if on else "none"} for layer in plan["layers"]]
    label = "ckpt on" if on else "ckpt off"
    note = f"activation checkpointing {'on' if on else 'off'} in every block"
    variants.append(Variant(label, _changed(plan, note, layers=layers), attention, note))
    for count in MICRO_BATCHES:
        if count == plan["num_micro_batches"] or plan["global_batch_size"] % count:
            continue
        note = f"{count} micro-batch{'es' if count > 1 else ''}"
        changed = _changed(plan, note, num_micro_batches=count)
        variants.append(Variant(note, changed, attention, note))
    name = f"{other_attention or 'other'} attention"
    note = f"attention kernel {other_attention or '(none available)'}"
    variants.append(Variant(name, plan, other_attention, note, attention_skip))
    return variants


def fallback_plan(*, num_blocks: int, global_batch: int, precision: str) -> dict[str, Any]:
    """What to train when the search gave nothing: one device, DDP, every block checkpointed
    (the leanest plan without sharding), one micro-batch."""
    return {
        "format": "partita.plan",
        "version": 3,
        "world_size": 1,
        "mesh_axis_order": ["pp", "dp", "tp"],
        "global_batch_size": global_batch,
        "num_micro_batches": 1,
        "pipeline": {"degree": 1, "schedule": "gpipe", "stage_num_layers": [num_blocks]},
        "layers": [{"tp": 1, "sp": "none", "dp": "ddp", "ckpt": "full"}] * num_blocks,
        "vocab": {"tp": 1, "sp": False, "dp": "ddp"},
        "precision": precision,
        "provenance": {"created_by": "benchmarks/gpu/check.py: fallback, the search failed"},
    }


def stderr_tail(text: str, lines: int = 12, width: int = 400) -> list[str]:
    """The last lines of a stream, progress bars' carriage returns counted as line ends."""
    kept = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return [line[:width] for line in kept[-lines:]]


_EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Interrupt)\b.*)$")


def error_line(text: str) -> str | None:
    """The line that says what went wrong: the last exception a rank raised (torchrun's own
    ChildFailedError summary names no cause), else the last ``partita ...: error:`` line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    causes = [
        m.group(1)
        for line in lines
        if (m := _EXCEPTION.match(line)) and not m.group(1).startswith(_TORCHRUN_SUMMARY)
    ]
    if causes:
        return causes[-1][:400]
    said = [line for line in lines if re.match(r"^partita [\w ]+: error: ", line)]
    return said[-1][:400] if said else None


_TORCHRUN_SUMMARY = ("torch.distributed.elastic", "ChildFailedError")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------
# Stages: run a command within its timeout, record what happened


class Deadline:
    def __init__(self, *, started_at: float, total_s: float) -> None:
        self.started_at, self.total_s = started_at, total_s

    def elapsed(self) -> float:
        return time.time() - self.started_at

    def budget(self, timeout_s: float) -> float:
        """What a stage may take: its timeout, cut to the deadline less the reserve."""
        return min(timeout_s, self.total_s - self.elapsed() - RESERVE_S)


def stage_env() -> dict[str, str]:
    """This environment minus a surrounding torchrun's; offline; unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in TORCHRUN_VARS and not k.startswith(("MASTER_", "TORCHELASTIC_"))
    }
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return env


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """End the command and everything it started (torchrun and its ranks): SIGTERM, then
    SIGKILL to whatever of its process group is left 10 s later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10.0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_command(
    argv: Sequence[str], *, timeout_s: float, cwd: Path, stdout: Path, stderr: Path
) -> tuple[int | None, bool]:
    """(exit code, timed out); run in ``cwd``, output into the two files."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=stage_env(),
            start_new_session=True,  # its own process group, killed as one
        )
        try:
            return process.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return process.returncode, True
        except BaseException:
            _kill_group(process)
            raise


def shown(argv: Sequence[str]) -> str:
    """A command as a person would type it: ``partita ...`` for the CLI."""
    words = list(argv)
    if words[: len(PARTITA)] == PARTITA:
        words = ["partita", *words[len(PARTITA) :]]
    elif words and words[0] == sys.executable:
        words = ["python3", *words[1:]]
    return " ".join(words)


@dataclass
class Check:
    """The check's state: where it writes, its deadline, what each stage did."""

    out: Path
    work: Path
    deadline: Deadline
    results: dict[str, Any]
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))
    _count: int = field(default=0)

    def note(self, text: str) -> None:
        self.log(f"gpu check [{self.deadline.elapsed():4.0f}s] {text}")

    def skip(self, title: str, reason: str) -> dict[str, Any]:
        record = {"name": title, "status": "skipped", "reason": reason}
        self.results["stages"].append(record)
        self.note(f"{title}: skipped: {reason}")
        self.save()
        return record

    def stage(self, title: str, argv: Sequence[str], *, timeout_s: float) -> dict[str, Any]:
        """Run one stage's command; a failure is recorded, never raised."""
        budget = self.deadline.budget(timeout_s)
        if budget < MIN_STAGE_S:
            return self.skip(title, f"overall deadline ({self.deadline.total_s:.0f} s) reached")
        self._count += 1
        stem = f"logs/{self._count:02d}-{slug(title)}"
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"name": title, "status": "running", "command": shown(argv)}
        record.update(timeout_s=round(budget), stdout=f"{stem}.stdout.log")
        record["stderr"] = f"{stem}.stderr.log"
        self.results["stages"].append(record)
        self.note(f"{title}: {record['command']}")
        started = time.time()
        try:
            code, timed_out = run_command(
                argv,
                timeout_s=budget,
                cwd=self.work,
                stdout=self.work / record["stdout"],
                stderr=self.work / record["stderr"],
            )
        except BaseException:  # the check was stopped (Ctrl-C, SIGTERM): the command ended
            record["status"], record["seconds"] = "interrupted", round(time.time() - started, 1)
            raise
        record["seconds"] = round(time.time() - started, 1)
        record["exit_code"] = code
        record["status"] = "timed out" if timed_out else ("ok" if code == 0 else "failed")
        if record["status"] != "ok":
            text = self.read(record["stderr"])
            record["stderr_tail"], record["error_line"] = stderr_tail(text), error_line(text)
        self._report(record)
        return record

    def fail(self, record: dict[str, Any], error: str) -> None:
        """A stage whose command ended well but whose output could not be used."""
        record["status"], record["error"] = "failed", error
        self.note(f"{record['name']}: failed: {error}")
        self.save()

    @contextlib.contextmanager
    def reading(self, record: dict[str, Any]) -> Iterator[None]:
        """Read a stage's results; what goes wrong fails the stage instead of the check."""
        try:
            yield
        except Exception as error:  # the check goes on whatever the output held
            self.fail(record, f"{type(error).__name__}: {error}")

    def read(self, relative: str) -> str:
        return (self.work / relative).read_text(encoding="utf-8", errors="replace")

    def _report(self, record: dict[str, Any]) -> None:
        status, seconds = record["status"], record["seconds"]
        if status == "ok":
            self.note(f"{record['name']}: ok in {seconds:.1f} s")
        else:
            tail = record["stderr_tail"]
            last = record["error_line"] or (tail[-1] if tail else "(no stderr)")
            code = f"exit {record['exit_code']}" if status == "failed" else f"after {seconds:.0f} s"
            self.note(f"{record['name']}: {status} ({code}): {last}")
        self.save()

    def save(self) -> None:
        """Rewrite gpu-check.json and gpu-check.md (after every stage)."""
        self.results["seconds"] = round(self.deadline.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        _write(self.out / "gpu-check.json", json.dumps(self.results, indent=2) + "\n")
        _write(self.out / "gpu-check.md", summary_markdown(self.results))


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


# ---------------------------------------------------------------------------------------
# The stages in order


def probe_device(check: Check, *, allow_cpu: bool) -> dict[str, Any] | None:
    argv = [sys.executable, str(Path(__file__).resolve()), "--probe", "device"]
    if allow_cpu:
        argv.append("--allow-cpu")
    record = check.stage("device", argv, timeout_s=TIMEOUTS["probe"])
    if record["status"] != "ok":
        return None
    with check.reading(record):
        device = json.loads(check.read(record["stdout"]))
        check.results["device"] = device
        check.note(f"device: {device['name']}, {device['total_memory_bytes'] / 2**30:.1f} GiB")
        return dict(device)
    return None


def cli_flags(check: Check) -> dict[str, bool]:
    """Which of the flags the check would use exist (two of them are being added)."""
    flags: dict[str, bool] = {}
    for words, flag in ((["train"], "--attention"), (["profile", "model"], "--attention")):
        title = f"partita {' '.join(words)} --help"
        record = check.stage(title, [*PARTITA, *words, "--help"], timeout_s=TIMEOUTS["help"])
        key = f"partita {' '.join(words)} {flag}"
        flags[key] = record["status"] == "ok" and flag in check.read(record["stdout"])
        if record["status"] == "ok" and not flags[key]:
            check.results["cli_gaps"].append(f"{key}: no such flag")
    check.results["cli"] = flags
    return flags


def hardware(check: Check, *, allow_cpu: bool) -> str | None:
    path = "hardware.json"
    argv = [*PARTITA, "profile", "hardware", "--nproc", "1", "--out", path]
    record = check.stage("hardware profile", argv, timeout_s=TIMEOUTS["hardware"])
    if record["status"] == "ok":
        with check.reading(record):
            check.results["hardware"] = hardware_numbers(json.loads(check.read(path)))
            _note_hardware(check)
            return path
    direct = [sys.executable, str(Path(__file__).resolve()), "--probe", "direct"]
    if allow_cpu:
        direct.append("--allow-cpu")
    record = check.stage("direct measurement", direct, timeout_s=TIMEOUTS["probe"])
    if record["status"] == "ok":
        with check.reading(record):
            check.results["hardware"] = json.loads(check.read(record["stdout"]))
            _note_hardware(check)
    return None


def hardware_numbers(profile: dict[str, Any]) -> dict[str, Any]:
    """The numbers the summary shows, from a hardware profile."""
    rates = {entry["dtype"]: entry["flops_per_s"] for entry in profile.get("compute", [])}
    device = profile.get("device", {})
    return {
        "source": "partita profile hardware --nproc 1",
        "device_name": device.get("name"),
        "matmul_flops_per_s": rates,
        "bf16_matmul_tflops": _scaled(rates.get("bf16"), 1e12),
        "memory_bandwidth_gbs": _scaled(device.get("memory_bandwidth_bytes_per_s"), 1e9),
        "memory_bandwidth_method": "copy of a 64 MiB tensor, bytes read + written per second",
        "matmul_method": "square matmuls (4096 on CUDA), 2 untimed then 10 timed, median",
        "memory_bytes": device.get("memory_bytes"),
    }


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value / scale, 1)


def _note_hardware(check: Check) -> None:
    hw = check.results["hardware"]
    check.note(
        f"bf16 matmul {hw.get('bf16_matmul_tflops')} TFLOP/s, memory bandwidth "
        f"{hw.get('memory_bandwidth_gbs')} GB/s ({hw['source']})"
    )


def describe(check: Check, *, model: str, seq: int) -> str | None:
    path = "model.json"
    argv = [*PARTITA, "describe", model, "--seq", str(seq), "--out", path]
    record = check.stage("model description", argv, timeout_s=TIMEOUTS["describe"])
    if record["status"] != "ok":
        return None
    with check.reading(record):
        check.results["model"].update(model_numbers(json.loads(check.read(path))))
        return path
    return None


def model_numbers(description: dict[str, Any]) -> dict[str, Any]:
    layers = description["layers"]
    return {
        "params": sum(int(layer["params"]) for layer in layers),
        "num_layers": sum(1 for layer in layers if layer["kind"] == "block"),
        "hidden": int(description["hidden_size"]),
        "seq": int(description["seq_len"]),
        "description_flops_per_sample": sum(
            layer["forward_flops_per_sample"] + layer["backward_flops_per_sample"]
            for layer in layers
        ),
    }


def profile_model(
    check: Check, *, model: str, seq: int, cpu: bool, attention: str | None
) -> str | None:
    path = "model_profile.json"
    argv = [*PARTITA, "profile", "model", "--model", model, "--seq", str(seq)]
    argv += ["--batch-sizes", *map(str, PROFILE_BATCH_SIZES), "--tp", "1"]
    argv += ["--dtype", PRECISION, "--out", path]
    if cpu:
        argv += ["--device", "cpu"]
    if attention:
        argv += ["--attention", attention]
    record = check.stage("model profile", argv, timeout_s=TIMEOUTS["model_profile"])
    return path if record["status"] == "ok" else None


def search(
    check: Check, profiles: list[str], *, budget_gib: float, global_batch: int
) -> dict[str, Any] | None:
    path = "plan.json"
    argv = [*PARTITA, "plan", *profiles, "--world-size", "1", "--memory-gb", f"{budget_gib:.2f}"]
    argv += ["--global-batch", str(global_batch), "--precision", PRECISION]
    argv += ["--max-pipeline-degree", "1", "--out", path]
    record = check.stage("plan search", argv, timeout_s=TIMEOUTS["plan"])
    if record["status"] != "ok":
        return None
    with check.reading(record):
        plan = json.loads(check.read(path))
        check.results["plan"] = {"source": "partita plan", **plan_summary(plan)}
        check.note(f"searched plan: {check.results['plan']['text']}")
        return dict(plan)
    return None


def plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    dp_modes = sorted({layer["dp"] for layer in plan["layers"]})
    text = (
        f"{plan['num_micro_batches']} micro-batch(es) of "
        f"{plan['global_batch_size'] // plan['num_micro_batches']}, ckpt {ckpt_label(plan)}, "
        f"{'/'.join(dp_modes)}, {plan.get('precision')}"
    )
    summary: dict[str, Any] = {
        "text": text,
        "num_micro_batches": plan["num_micro_batches"],
        "global_batch_size": plan["global_batch_size"],
        "ckpt": ckpt_label(plan),
        "dp": dp_modes,
    }
    if plan.get("predictions"):
        summary["predictions"] = plan["predictions"]
    return summary


def simulate(check: Check, run: dict[str, Any], *, profiles: list[str]) -> None:
    argv = [*PARTITA, "simulate", "--plan", run["plan_file"], *profiles]
    record = check.stage(f"simulate: {run['name']}", argv, timeout_s=TIMEOUTS["simulate"])
    if record["status"] != "ok":
        run["predicted_error"] = f"stage {record['name']!r} {record['status']}"
        return
    with check.reading(record):
        run["predicted"] = parse_simulation(check.read(record["stdout"]))


def train(check: Check, run: dict[str, Any], *, variant: Variant, model: str, steps: int) -> None:
    folder = f"runs/{slug(variant.name)}"
    argv = [*PARTITA, "train", "--plan", run["plan_file"], "--model", model]
    argv += ["--steps", str(steps), "--nproc", "1", "--run-dir", folder, "--overwrite"]
    argv += ["--no-final-checkpoint"]
    if variant.attention:
        argv += ["--attention", variant.attention]
    record = check.stage(f"train: {variant.name}", argv, timeout_s=TIMEOUTS["train"])
    run["status"] = record["status"]
    if record["status"] == "skipped":
        run["skip_reason"] = record["reason"]
    report_path = check.work / folder / "run_report.json"
    if not report_path.is_file():
        return
    with check.reading(record):
        run["measured"] = measured_numbers(json.loads(report_path.read_text()))
        if record["status"] == "ok" and run["measured"]["status"] != "completed":
            check.fail(record, f"run report status {run['measured']['status']!r}")


def measured_numbers(report: dict[str, Any]) -> dict[str, Any]:
    steps = report.get("steps", [])
    times = [step["time_s"] for step in steps]
    losses = [step["loss"] for step in steps]
    peaks = [rank["peak_bytes"] for rank in report.get("peak_memory", [])]
    return {
        "status": report.get("status"),
        "error": report.get("error"),
        "steps": len(steps),
        "step_s": measured_step_s(times) if times else None,
        "step_times_s": times,
        "items_per_step": steps[-1]["items"] if steps else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "peak_bytes": max(peaks) if peaks else None,
        "memory_method": report.get("memory_method"),
        "attention": report.get("attention") or None,
        "device": report.get("device"),
        "backend": report.get("backend"),
        # Each rank's step split (run report v6), timed by CUDA events on the stream.
        "phases": report.get("phases") or None,
    }


def score(run: dict[str, Any], results: dict[str, Any]) -> None:
    """MFU, tokens/s and prediction errors of a trained run, from what is known."""
    measured, predicted = run.get("measured") or {}, run.get("predicted") or {}
    step_s, model = measured.get("step_s"), results["model"]
    if step_s:
        tokens = measured.get("items_per_step") or model["global_batch"] * model["seq"]
        run["tokens_per_s"] = tokens / step_s
        flops, peak = model.get("flops_per_step"), results["peak"].get("flops_per_s")
        if flops and peak:
            run["mfu"] = mfu(flops, step_s, peak)
    for key, what in (("step_s", "iteration_s"), ("peak_bytes", "peak_bytes")):
        if measured.get(key) and predicted.get(what):
            run.setdefault("errors", {})[key] = (measured[key] - predicted[what]) / predicted[what]


# ---------------------------------------------------------------------------------------
# The whole check


def attention_choice(
    flags: dict[str, bool], device: dict[str, Any]
) -> tuple[str | None, str | None, str | None]:
    """(kernel of the searched run, the other kernel, why the other is skipped or None)."""
    if not flags.get("partita train --attention"):
        return None, None, "partita train has no --attention flag yet"
    if device.get("flash_attn"):
        return "flash", "sdpa", None
    reason = device.get("flash_attn_error") or "flash_attn is not importable"
    return "sdpa", "flash", f"flash_attn is not importable here ({reason})"


def run_check(args: argparse.Namespace, check: Check) -> None:
    device = probe_device(check, allow_cpu=args.allow_cpu) or {}
    flags = cli_flags(check)
    attention, other, attention_skip = attention_choice(flags, device)
    hardware_file = hardware(check, allow_cpu=args.allow_cpu)
    _set_peak(check.results, device)
    description = describe(check, model=args.model, seq=args.seq)
    _set_flops(check.results)
    profile_attention = attention if flags.get("partita profile model --attention") else None
    on_cpu = device.get("kind") == "cpu"  # else the profiler's default: CUDA where available
    model_profile = profile_model(
        check, model=args.model, seq=args.seq, cpu=on_cpu, attention=profile_attention
    )
    profiles = None
    if hardware_file and model_profile and description:
        profiles = ["--hardware", hardware_file, "--model-profile", model_profile]
        profiles += ["--model", description]
    plan, base = _plan(check, args, device=device, profiles=profiles, description=description)
    if plan is None:
        return
    variants = plan_variants(
        plan,
        attention=attention,
        other_attention=other,
        attention_skip=attention_skip,
        base_name=base,
    )
    _run_variants(check, variants, args=args, profiles=profiles, device=device)


def _plan(
    check: Check,
    args: argparse.Namespace,
    *,
    device: dict[str, Any],
    profiles: list[str] | None,
    description: str | None,
) -> tuple[dict[str, Any] | None, str]:
    hardware = check.results.get("hardware") or {}
    total = device.get("total_memory_bytes") or hardware.get("memory_bytes")
    budget = memory_budget_gib(total) if total else None
    check.results["settings"]["memory_budget_gib"] = budget
    if profiles and budget:
        plan = search(check, profiles, budget_gib=budget, global_batch=args.global_batch)
        if plan is not None:
            return plan, "searched"
    else:
        check.skip("plan search", "needs the device's memory and both profiles")
    if description is None:
        check.skip("train", "no plan and no model description to make one")
        return None, ""
    blocks = check.results["model"]["num_layers"]
    plan = fallback_plan(num_blocks=blocks, global_batch=args.global_batch, precision=PRECISION)
    check.results["plan"] = {"source": "fallback (the search failed)", **plan_summary(plan)}
    check.note(f"no searched plan: training the fallback ({check.results['plan']['text']})")
    return plan, "fallback"


def _run_variants(
    check: Check,
    variants: list[Variant],
    *,
    args: argparse.Namespace,
    profiles: list[str] | None,
    device: dict[str, Any],
) -> None:
    (check.work / "plans").mkdir(parents=True, exist_ok=True)
    runs = []
    for variant in variants:
        plan_file = f"plans/{slug(variant.name)}.json"
        (check.work / plan_file).write_text(json.dumps(variant.plan, indent=2) + "\n")
        run = {"name": variant.name, "changes": variant.changes, "plan_file": plan_file}
        run.update(attention_flag=variant.attention, **plan_summary(variant.plan))
        run["status"] = "skipped" if variant.skip_reason else "pending"
        if variant.skip_reason:
            run["skip_reason"] = variant.skip_reason
        runs.append(run)
    check.results["runs"] = runs
    for run, variant in zip(runs, variants, strict=True):
        if profiles and not variant.skip_reason:
            simulate(check, run, profiles=profiles)
    for run, variant in zip(runs, variants, strict=True):
        reason = variant.skip_reason or _too_big(run, device)
        if reason:
            run["status"], run["skip_reason"] = "skipped", reason
            check.skip(f"train: {variant.name}", reason)
            continue
        train(check, run, variant=variant, model=args.model, steps=args.steps)
        score(run, check.results)
        check.save()


def _too_big(run: dict[str, Any], device: dict[str, Any]) -> str | None:
    predicted = (run.get("predicted") or {}).get("peak_bytes")
    total = device.get("total_memory_bytes")
    if predicted and total and predicted > total:
        return (
            f"predicted peak {predicted / 2**30:.1f} GiB exceeds the device's "
            f"{total / 2**30:.1f} GiB"
        )
    return None


def _set_peak(results: dict[str, Any], device: dict[str, Any]) -> None:
    hardware = results.get("hardware") or {}
    name = device.get("name") or hardware.get("device_name") or ""
    on_cpu = device.get("kind") == "cpu"
    peak, source = (None, "") if on_cpu else peak_bf16_flops(name)
    if peak is None:
        rates = hardware.get("matmul_flops_per_s") or {}
        dtype = "bf16" if "bf16" in rates else next(iter(rates), None)
        if dtype:
            peak = rates[dtype]
            source = f"{source + '; ' if source else ''}the measured {dtype} matmul rate instead"
    results["peak"] = {"flops_per_s": peak, "source": source or "unknown"}


def _set_flops(results: dict[str, Any]) -> None:
    model = results["model"]
    if "params" not in model:
        return
    model["flops_per_step"] = model_flops_per_step(
        params=model["params"],
        num_layers=model["num_layers"],
        hidden=model["hidden"],
        seq=model["seq"],
        batch=model["global_batch"],
    )
    model["flops_formula"] = FLOPS_FORMULA


# ---------------------------------------------------------------------------------------
# The summary


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def summary_markdown(results: dict[str, Any]) -> str:
    """The markdown summary of a results dict (complete or not)."""
    parts = [
        _md_header(results),
        _md_hardware(results),
        _md_model(results),
        _md_runs(results),
        _md_stages(results),
        _md_failures(results),
        _md_references(),
    ]
    return "\n".join(part for part in parts if part)


def _md_header(results: dict[str, Any]) -> str:
    device = results.get("device") or {}
    settings = results["settings"]
    lines = [
        f"# GPU check: {settings['model']}, seq {settings['seq']}, {settings['precision']}, "
        f"one {device.get('name', 'GPU (device unknown)')}",
        "",
        f"Started {results['started_at']}; {results.get('seconds', 0):.0f} s of the "
        f"{settings['deadline_s']:.0f} s deadline"
        + ("" if results.get("complete") else " (incomplete: still running or stopped)")
        + ".",
    ]
    if device:
        lines.append(
            f"Device: {device.get('name')}, {_gib(device.get('total_memory_bytes'))}, compute "
            f"capability {device.get('capability')}; torch {device.get('torch')}, CUDA "
            f"{device.get('cuda')}, NCCL {device.get('nccl')}, flash_attn "
            f"{device.get('flash_attn') or 'not importable'}."
        )
    budget = settings.get("memory_budget_gib")
    if budget is not None:
        lines.append(
            f"Memory budget of the search: {budget:.2f} GiB (the device's memory less "
            f"max({settings['memory_margin']:.0%}, 2 GiB))."
        )
    return "\n".join(lines) + "\n"


def _md_hardware(results: dict[str, Any]) -> str:
    hw, peak = results.get("hardware") or {}, results.get("peak") or {}
    return "\n".join(
        [
            "## Hardware",
            "",
            "| | value | how |",
            "|---|---|---|",
            f"| bf16 matmul | {_num(hw.get('bf16_matmul_tflops'), '.1f', ' TFLOP/s')} | "
            f"{hw.get('source', 'not measured')}: {hw.get('matmul_method', '-')} |",
            f"| memory bandwidth | {_num(hw.get('memory_bandwidth_gbs'), '.0f', ' GB/s')} | "
            f"{hw.get('memory_bandwidth_method', '-')} |",
            f"| peak for MFU | {_num(_scaled(peak.get('flops_per_s'), 1e12), '.1f', ' TFLOP/s')} "
            f"| {peak.get('source', '-')} |",
            "",
        ]
    )


def _md_model(results: dict[str, Any]) -> str:
    model, plan = results["model"], results.get("plan") or {}
    lines = ["## Model and plan", ""]
    if "params" in model:
        tokens = model["global_batch"] * model["seq"]
        lines.append(
            f"{results['settings']['model']}: {model['params'] / 1e6:,.1f} M parameters, "
            f"{model['num_layers']} blocks, hidden {model['hidden']}, seq {model['seq']}; "
            f"global batch {model['global_batch']} = {tokens:,} tokens a step."
        )
        lines.append(
            f"Model FLOPs per step: {model['flops_per_step'] / 1e12:,.1f} TFLOP, by "
            f"{model['flops_formula']}. MFU = model FLOPs per step / measured step time / "
            "peak."
        )
    if plan:
        lines.append(f"Plan ({plan['source']}): {plan['text']}.")
    return "\n".join(lines) + "\n"


def _md_runs(results: dict[str, Any]) -> str:
    runs = results.get("runs") or []
    if not runs:
        return ""
    steps = results["settings"]["steps"]
    lines = [
        f"## Runs ({steps} steps each; measured step: median after {WARMUP_STEPS} warm-up "
        "steps; peak: the run report's)",
        "",
        "| run | attention | micro-batches | ckpt | step measured | step predicted | error "
        "| peak measured | peak predicted | error | tokens/s | MFU | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        measured, predicted = run.get("measured") or {}, run.get("predicted") or {}
        errors = run.get("errors") or {}
        step_ms = None if measured.get("step_s") is None else measured["step_s"] * 1e3
        pred_ms = None if predicted.get("iteration_s") is None else predicted["iteration_s"] * 1e3
        lines.append(
            f"| {run['name']} | {measured.get('attention') or run.get('attention_flag') or '-'} "
            f"| {run['num_micro_batches']} | {run['ckpt']} | {_num(step_ms, '.1f', ' ms')} "
            f"| {_num(pred_ms, '.1f', ' ms')} | {_pct(errors.get('step_s'))} "
            f"| {_gib(measured.get('peak_bytes'))} | {_gib(predicted.get('peak_bytes'))} "
            f"| {_pct(errors.get('peak_bytes'))} | {_num(run.get('tokens_per_s'), ',.0f')} "
            f"| {_num(None if run.get('mfu') is None else run['mfu'] * 100, '.1f', '%')} "
            f"| {_run_status(run)} |"
        )
    lines += ["", "Errors are (measured - predicted) / predicted.", _md_target(results), ""]
    return "\n".join(lines)


def _run_status(run: dict[str, Any]) -> str:
    if run.get("skip_reason"):
        return f"skipped: {run['skip_reason']}"
    return str(run.get("status", "-"))


def _md_target(results: dict[str, Any]) -> str:
    scored = [run for run in results.get("runs") or [] if run.get("mfu") is not None]
    target = results["mfu_target"]
    head = f"MFU target for this model on one H100/H200: >= {target:.0%} (a reference, not a test)"
    if not scored:
        return f"{head}: no run was measured."
    best = max(scored, key=lambda run: run["mfu"])
    verdict = (
        "meets it" if best["mfu"] >= target else f"{(target - best['mfu']) * 100:.1f} points below"
    )
    return f"{head}: the best run, {best['name']}, reached {best['mfu']:.1%} ({verdict})."


def _md_stages(results: dict[str, Any]) -> str:
    lines = ["## Stages", "", "| stage | status | seconds | command |", "|---|---|---|---|"]
    for stage in results["stages"]:
        status = stage["status"] + (f" ({stage['reason']})" if stage.get("reason") else "")
        command = f"`{stage['command']}`" if stage.get("command") else "-"
        lines.append(f"| {stage['name']} | {status} | {stage.get('seconds', '-')} | {command} |")
    if results.get("cli_gaps"):
        lines += ["", "CLI gaps met: " + "; ".join(results["cli_gaps"]) + "."]
    return "\n".join(lines) + "\n"


def _md_failures(results: dict[str, Any]) -> str:
    failed = [s for s in results["stages"] if s["status"] in ("failed", "timed out")]
    if not failed:
        return ""
    lines = ["## Failures", ""]
    for stage in failed:
        lines += [f"### {stage['name']}", "", f"- command: `{stage.get('command', '-')}`"]
        lines.append(f"- exit code: {stage.get('exit_code')} ({stage['status']})")
        lines += [f"- error: {stage[key]}" for key in ("error_line", "error") if stage.get(key)]
        if stage.get("stderr_tail"):
            lines += ["", "```", *stage["stderr_tail"], "```"]
        lines.append("")
    return "\n".join(lines)


def _md_references() -> str:
    return (
        "## Reference points\n\n"
        "Megatron-LM reports 47% MFU on H100 at scale; TorchTitan 33-39% for Llama 3 8B on "
        "H100. See docs/gpu.md for how to read this summary.\n"
    )


# ---------------------------------------------------------------------------------------
# Probes run as child processes (this process never touches the GPU)


def _device_info(allow_cpu: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            kind="cuda",
            name=props.name,
            total_memory_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            nccl=_nccl_version(),
            device_count=torch.cuda.device_count(),
        )
    elif allow_cpu:
        info.update(
            kind="cpu",
            name="cpu (--allow-cpu: a check of the script, not of a GPU)",
            total_memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            capability=None,
            nccl=None,
            cuda=None,
        )
    else:
        raise SystemExit("no CUDA device")
    try:
        import flash_attn  # type: ignore[import-not-found]

        info["flash_attn"] = getattr(flash_attn, "__version__", "installed")
    except Exception as error:  # not installed, or built for another torch
        info["flash_attn"], info["flash_attn_error"] = None, f"{type(error).__name__}: {error}"
    return info


def _nccl_version() -> str | None:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _direct_measurement(allow_cpu: bool) -> dict[str, Any]:
    """bf16 matmul rate and copy bandwidth, timed here, when the hardware profile failed."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise SystemExit("no CUDA device")
    device = torch.device("cuda" if cuda else "cpu")
    n = 8192 if cuda else 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_s = _timed(lambda: a @ a, cuda)
    x = torch.empty(2**30 if cuda else 2**22, dtype=torch.uint8, device=device)
    copy_s = _timed(lambda: x.clone(), cuda)
    rate = 2 * n**3 / matmul_s
    return {
        "source": "direct measurement (check.py --probe direct)",
        "matmul_flops_per_s": {"bf16": rate},
        "bf16_matmul_tflops": round(rate / 1e12, 1),
        "matmul_method": f"{n}x{n}x{n} bf16 matmul, 3 untimed then 10 timed, median",
        "memory_bandwidth_gbs": round(2 * x.numel() / copy_s / 1e9, 1),
        "memory_bandwidth_method": f"clone of a {x.numel() // 2**20} MiB tensor, read + write",
    }


def _timed(fn: Callable[[], object], cuda: bool) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(10):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------
# Entry point


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="check.py",
        description="The GPU check (docs/gpu.md); run it through benchmarks/gpu/check.sh.",
    )
    default_out = os.environ.get("OUT") or "gpu-check"
    parser.add_argument("--out", default=default_out, help="default: $OUT if set, else ./gpu-check")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds in all")
    parser.add_argument("--started-at", type=float, help="Unix time the deadline counts from")
    parser.add_argument("--work-dir", help="keep the working files here (default: a temp dir)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--global-batch", type=int, default=GLOBAL_BATCH)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run the stages on CPU too (checks this script with a tiny model; measures "
        "nothing about a GPU)",
    )
    parser.add_argument("--probe", choices=("device", "direct"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if Path(args.model).exists():  # a HF directory: the stages run in the work folder
        args.model = str(Path(args.model).resolve())
    return args


def no_cuda_line() -> str | None:
    """The one line a machine without CUDA gets, or None where there is CUDA."""
    try:
        import torch
    except Exception as error:  # no torch at all: nothing to measure either
        return f"gpu check: torch is not importable here ({type(error).__name__}); nothing measured"
    if torch.cuda.is_available():
        return None
    return f"gpu check: no CUDA device here (torch {torch.__version__}); nothing measured"


def new_results(args: argparse.Namespace, started_at: float) -> dict[str, Any]:
    started = datetime.datetime.fromtimestamp(started_at, tz=datetime.UTC)
    return {
        "format": FORMAT,
        "version": VERSION,
        "started_at": started.isoformat(timespec="seconds"),
        "complete": False,
        "settings": {
            "model": args.model,
            "seq": args.seq,
            "global_batch": args.global_batch,
            "steps": args.steps,
            "precision": PRECISION,
            "deadline_s": args.deadline,
            "memory_margin": MEMORY_MARGIN,
            "profile_batch_sizes": list(PROFILE_BATCH_SIZES),
        },
        "mfu_target": MFU_TARGET,
        "model": {"global_batch": args.global_batch, "seq": args.seq},
        "peak": {},
        "stages": [],
        "runs": [],
        "cli_gaps": [],
    }


def pack(work: Path, out: Path, *, max_bytes: int = 16 * 2**20) -> None:
    """The working files as one archive (checkpoints and files over 16 MiB left out)."""
    with tarfile.open(out / "gpu-check-work.tar.gz", "w:gz") as archive:
        for path in sorted(work.rglob("*")):
            small = path.is_file() and path.stat().st_size <= max_bytes
            if small and "checkpoints" not in path.parts:
                archive.add(path, arcname=str(Path("gpu-check-work") / path.relative_to(work)))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.probe:
        probe = _device_info if args.probe == "device" else _direct_measurement
        print(json.dumps(probe(args.allow_cpu)))
        return 0
    line = no_cuda_line()
    if line is not None and not args.allow_cpu:
        print(line)
        return 0
    started_at = args.started_at or time.time()
    out = Path(args.out).resolve()
    work = (
        Path(args.work_dir).resolve()
        if args.work_dir
        else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    check = Check(
        out=out,
        work=work,
        deadline=Deadline(started_at=started_at, total_s=args.deadline),
        results=new_results(args, started_at),
    )
    check.note(f"writing {out} (working files in {work})")
    code = 0
    signal.signal(signal.SIGTERM, _interrupt)  # stopped from outside: end the stage, keep results
    try:
        run_check(args, check)
        check.results["complete"] = True
    except KeyboardInterrupt:
        check.results["interrupted"] = True
        code = 130
    finally:
        check.save()
        pack(work, out)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    check.note(f"done: {out / 'gpu-check.md'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

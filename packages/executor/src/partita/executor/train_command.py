"""``partita train``: run a plan on torch.distributed, launched with torchrun.

Outside torchrun it checks the plan against the model and the number of processes first
(nothing starts on a bad plan), then starts ``--nproc`` ranks with torchrun on this machine
and waits. Inside a torchrun the user started (multi-node), it runs as one of the ranks.

``--resume RUN_DIR`` continues a run from its latest checkpoint, with the run's own settings
and model, under the run's plan or another one (``--plan``, any world size).

A run folder belongs to one run (``run_folder``): it is locked while the run trains, and a
new run refuses a folder holding another one unless ``--overwrite`` is given. Everything that
can be checked without the ranks is checked before any starts and before anything in the run
folder changes: the settings, the data file, the model, the plan against the model and world
size, the checkpoint against the model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from partita.executor.launch import launch
from partita.formats.cli import Command
from partita.models.attention import ATTENTION_CHOICES

if TYPE_CHECKING:
    from partita.formats import Plan
    from partita.models.config import ModelConfig

# Defaults of a new run; a resumed run takes its own settings instead.
DEFAULTS = {"steps": 20, "data": "synthetic", "lr": 1e-3, "seed": 0, "checkpoint_every": 0}
REPORT = "run_report.json"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", metavar="PLAN", help="plan file (with --resume: the run's)")
    parser.add_argument("--model", metavar="PRESET|HF_DIR", help="(with --resume: the run's)")
    parser.add_argument("--steps", type=int, help=f"steps in all (default {DEFAULTS['steps']})")
    parser.add_argument("--data", metavar="synthetic|TEXT_FILE", help="default: synthetic")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="processes on this machine (default: the plan's world size)",
    )
    parser.add_argument("--run-dir", metavar="DIR", help="default: runs/train-<time>")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --run-dir (its report, step log and checkpoints)",
    )
    parser.add_argument("--lr", type=float, help=f"default {DEFAULTS['lr']}")
    parser.add_argument("--seed", type=int, help=f"default {DEFAULTS['seed']}")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a collective may wait before the job is failed",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="save a checkpoint every N steps (default 0: only after the last step)",
    )
    parser.add_argument(
        "--no-final-checkpoint",
        action="store_true",
        help="do not save a checkpoint after the last step",
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=int,
        default=2,
        metavar="K",
        help="checkpoints kept in the run folder, newest first (default 2)",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="auto",
        help="attention kernel: flash-attn where installed on a GPU, else SDPA (default auto)",
    )
    parser.add_argument(
        "--init",
        choices=("pretrained", "random"),
        help="start from the model folder's safetensors weights, or from a random init "
        "(default: pretrained when --model is a folder holding weights, else random)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its latest checkpoint (under --plan if given)",
    )


@dataclass(frozen=True)
class _Job:
    plan: str
    model: str
    steps: int
    data: str
    lr: float
    seed: int
    checkpoint_every: int
    run_dir: Path
    resume_from: Path | None = None
    init: str = "random"  # "pretrained": start from the model folder's safetensors weights


def _run(args: argparse.Namespace) -> int:
    from partita.executor import worker
    from partita.executor.run_folder import RunLock, check_not_in_use, claim_for_new_run

    _check_settings(args)
    if "LOCAL_RANK" in os.environ:  # already one rank of a torchrun job
        job = _resume_job(args) if args.resume else _new_job(args)
        # The same checks as before a launch, against the job's world size: every rank
        # refuses a bad plan with the same line before any process group starts.
        _, weights = _check_before_launch(
            args, job, world_size=int(os.environ.get("WORLD_SIZE", "1"))
        )
        if os.environ.get("RANK", "0") == "0":
            # Held until this rank's process ends; the other ranks share its folder.
            RunLock(job.run_dir).acquire()
            if not args.resume:
                claim_for_new_run(job.run_dir, overwrite=args.overwrite)
            _say_where_weights_come_from(job, weights)
        code = worker.main(_worker_arguments(args, job), tear_down=False)
        # As the ranks that --nproc launches (the worker's entry point): every rank has passed
        # the closing barrier; end without gloo's teardown, which sometimes aborts a rank
        # after a finished run and fails the job (a rank of the 2-node loopback CI case,
        # SIGABRT, 2026-12-08). The run folder's lock is a flock: the process's end frees it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.resume:
        check_not_in_use(args.resume)
        _check_run_folder(Path(args.resume))
        # Locked before its checkpoints are read: a run still training cannot be resumed.
        with RunLock(args.resume):
            job = _resume_job(args)
            nproc, weights = _check_before_launch(args, job)
            return _launch(args, job, nproc, weights)
    job = _new_job(args)
    nproc, weights = _check_before_launch(args, job)
    # Refused before the lock file is made too, so that a refused run leaves no trace.
    check_not_in_use(job.run_dir)
    claim_for_new_run(job.run_dir, overwrite=args.overwrite, dry_run=True)
    with RunLock(job.run_dir):  # nothing in the folder changes before every check passed
        removed = claim_for_new_run(job.run_dir, overwrite=args.overwrite)
        if removed:
            print(
                f"partita train: --overwrite: removed the earlier run's {', '.join(removed)} "
                f"from {job.run_dir}",
                file=sys.stderr,
            )
        return _launch(args, job, nproc, weights)


def _launch(args: argparse.Namespace, job: _Job, nproc: int, weights: str | None) -> int:
    from partita.executor.run_folder import RUN_LOG

    _say_where_weights_come_from(job, weights)
    print(f"partita train: {nproc} processes, run folder {job.run_dir}", file=sys.stderr)
    return launch(
        "partita.executor.worker",
        nproc,
        _worker_arguments(args, job),
        prog="partita train",
        on_failure=lambda line: _mark_ended(job.run_dir, "failed", line),
        on_interrupt=lambda line: _mark_ended(job.run_dir, "interrupted", line),
        log_path=job.run_dir / RUN_LOG,
    )


def _new_job(args: argparse.Namespace) -> _Job:
    if not args.plan or not args.model:
        raise ValueError("--plan and --model are required (or --resume RUN_DIR)")
    data = args.data or DEFAULTS["data"]
    if data != "synthetic":  # recorded absolute, so --resume works from anywhere
        data = str(Path(data).resolve())
    return _Job(
        plan=args.plan,
        model=args.model,
        steps=DEFAULTS["steps"] if args.steps is None else args.steps,
        data=data,
        lr=DEFAULTS["lr"] if args.lr is None else args.lr,
        seed=DEFAULTS["seed"] if args.seed is None else args.seed,
        checkpoint_every=_every(args),
        run_dir=Path(args.run_dir or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"),
        init=_init_of(args),
    )


def _init_of(args: argparse.Namespace) -> str:
    """Pretrained when the model folder holds weights, unless --init says otherwise."""
    from partita.models.weights import weights_file

    found = weights_file(args.model)
    if args.init == "pretrained" and found is None:
        raise ValueError(
            f"--init pretrained: {args.model} is not a folder holding model.safetensors or "
            "model.safetensors.index.json"
        )
    return args.init or ("pretrained" if found else "random")


def _resume_job(args: argparse.Namespace) -> _Job:
    from partita.executor.checkpoint import read_manifest
    from partita.executor.checkpoint_checks import check_checkpoint_fits, resume_checkpoint
    from partita.formats import RunReport, load

    run_dir = Path(args.resume)
    if args.run_dir:
        raise ValueError("--run-dir: a resumed run continues in its own folder (--resume)")
    if args.overwrite:
        raise ValueError("--overwrite: a resumed run continues its own folder; nothing is replaced")
    _check_run_folder(run_dir)
    report = load(run_dir / REPORT, RunReport)
    if report.status == "running" and "LOCAL_RANK" not in os.environ:
        # This process holds the folder's lock, so the run that wrote "running" is gone.
        print(
            f"partita train: {run_dir / REPORT} says running, but no process holds the run: "
            "it was stopped from outside",
            file=sys.stderr,
        )
    settings = report.settings
    if settings is None:
        raise ValueError(
            f"{run_dir / REPORT}: settings: the run did not record its settings, so it "
            "cannot be resumed"
        )
    kept = {
        "model": report.model,
        "data": settings.data,
        "lr": settings.lr,
        "seed": settings.seed,
        "init": settings.init,
    }
    for name, value in kept.items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise ValueError(f"--{name}: a resumed run keeps its own ({name} {value})")
    steps = settings.steps if args.steps is None else args.steps
    job = _Job(
        plan=args.plan or str(run_dir / "plan.json"),
        model=report.model,
        steps=steps,
        data=settings.data,
        lr=settings.lr,
        seed=settings.seed,
        checkpoint_every=settings.checkpoint_every
        if args.checkpoint_every is None
        else _every(args),
        run_dir=run_dir,
        init=settings.init,
    )
    # Inside a user's torchrun every rank gets here: sizes and metadata, not every byte.
    checkpoint = resume_checkpoint(run_dir, checksums="LOCAL_RANK" not in os.environ)
    if checkpoint is None:
        print(
            f"partita train: no checkpoint in {run_dir / 'checkpoints'} yet: starting from step 0",
            file=sys.stderr,
        )
        return job
    manifest = read_manifest(checkpoint)
    if manifest.model != report.model:
        raise ValueError(
            f"{checkpoint}: the checkpoint is of model {manifest.model!r}, the run of "
            f"{report.model!r}"
        )
    if manifest.step >= steps:
        raise ValueError(
            f"--steps: {checkpoint} is after step {manifest.step} of {steps} already; "
            f"give --steps above {manifest.step} to train on"
        )
    # e.g. the HF folder's config.json changed since the run started
    check_checkpoint_fits(checkpoint, report.model)
    return replace(job, resume_from=checkpoint)


def _check_run_folder(run_dir: Path) -> None:
    if not (run_dir / REPORT).is_file():
        raise ValueError(f"--resume: {run_dir} is not a run folder (no {REPORT})")


# Counts a user gives: at least 1 (0 for --checkpoint-every), below 2^31 like the formats'.
_COUNT_LIMIT = 2**31


def _check_settings(args: argparse.Namespace) -> None:
    """The command-line numbers, before anything else is read (one line each)."""
    counts = {
        "--steps": (args.steps, 1),
        "--nproc": (args.nproc, 1),
        "--seed": (args.seed, 0),
        "--checkpoint-every": (args.checkpoint_every, 0),
        "--keep-checkpoints": (args.keep_checkpoints, 1),
    }
    for flag, (value, low) in counts.items():
        if value is not None and not low <= value < _COUNT_LIMIT:
            raise ValueError(f"{flag} must be between {low} and {_COUNT_LIMIT - 1}, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and 0 < args.lr < 2**1023):
        raise ValueError(f"--lr must be a positive finite number, got {args.lr!r}")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 7 * 24 * 3600):
        raise ValueError(f"--timeout must be between 0 and 604800 seconds, got {args.timeout!r}")


def _every(args: argparse.Namespace) -> int:
    every = DEFAULTS["checkpoint_every"] if args.checkpoint_every is None else args.checkpoint_every
    return int(every)


def _worker_arguments(args: argparse.Namespace, job: _Job) -> list[str]:
    forwarded = ["--plan", job.plan, "--model", job.model, "--steps", str(job.steps)]
    forwarded += ["--data", job.data, "--lr", repr(job.lr), "--seed", str(job.seed)]
    forwarded += ["--run-dir", str(job.run_dir), "--timeout", str(args.timeout)]
    forwarded += ["--checkpoint-every", str(job.checkpoint_every)]
    forwarded += ["--keep-checkpoints", str(args.keep_checkpoints)]
    forwarded += ["--attention", args.attention, "--init", job.init]
    if args.no_final_checkpoint:
        forwarded.append("--no-final-checkpoint")
    if job.resume_from is not None:
        forwarded += ["--resume-from", str(job.resume_from)]
    return forwarded


def _check_before_launch(
    args: argparse.Namespace, job: _Job, *, world_size: int | None = None
) -> tuple[int, str | None]:
    """The number of processes, and what the pretrained weights are (None when the run
    does not start from them)."""
    from partita.executor.trainer import check_supported
    from partita.formats import Plan, load, validate_plan
    from partita.models.api import describe_model, resolve_config

    plan = load(job.plan, Plan)
    nproc = world_size or args.nproc or plan.world_size
    try:
        config = resolve_config(job.model)
        model = describe_model(config, name=job.model)
    except ValueError as error:
        raise ValueError(f"--model {job.model}: {error}") from None
    try:
        validate_plan(plan, world_size=nproc, model=model)
        check_supported(plan, model.family)
    except ValueError as error:
        raise ValueError(f"{job.plan}: {error}") from None
    if job.data != "synthetic":
        _check_data(job, config, plan)
    _check_attention(args.attention)
    if job.init == "pretrained" and job.resume_from is None:
        return nproc, _check_weights(job, config)
    return nproc, None


def _check_weights(job: _Job, config: ModelConfig) -> str:
    """The checkpoint holds every parameter of the model in its shape (from the files'
    headers: nothing is read but them); what it is, in words."""
    from partita.models.init import build_empty
    from partita.models.weights import PretrainedWeights

    weights = PretrainedWeights(job.model, config)
    try:
        params = build_empty(config).named_parameters(remove_duplicate=False)
        weights.check({name: tuple(p.shape) for name, p in params})
        return weights.describe()
    finally:
        weights.close()


def _say_where_weights_come_from(job: _Job, weights: str | None) -> None:
    """A new run's first line: a fine-tuning run must not start from a random init unseen.
    ``weights``: what ``_check_weights`` found, for a run starting from them."""
    from partita.models.weights import weights_file

    if job.resume_from is not None:
        return  # the checkpoint's weights
    if job.init == "pretrained":
        assert weights is not None, "the weights were checked before the launch"
        line = f"weights from {job.model} ({weights})"
    else:
        found = weights_file(job.model)
        held = f" ({job.model}'s {found} not read: --init random)" if found else ""
        line = f"weights drawn from seed {job.seed}{held}"
    print(f"partita train: {line}", file=sys.stderr)


def _check_data(job: _Job, config: ModelConfig, plan: Plan) -> None:
    """The text file the ranks would read, read the same way once here."""
    from partita.executor.trainer import text_batches

    path = Path(job.data)
    if path.is_dir():
        raise ValueError(f"--data: {job.data} is a folder; give a UTF-8 text file")
    if not path.is_file():
        raise ValueError(f"--data: no such file {job.data!r}")
    text_batches(
        job.data,
        config,
        batch_size=plan.global_batch_size,
        seed=job.seed,
    )


def _check_attention(choice: str) -> None:
    """The kernel must be usable on the devices the ranks will get (one line if not)."""
    import torch

    from partita.models.attention import select_attention

    select_attention(choice, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _mark_ended(run_dir: Path, status: str, line: str) -> None:
    """The report of a job that failed or was interrupted says so (its steps are those it
    last recorded)."""
    from partita.formats import FormatError, RunReport, load, save

    path = run_dir / REPORT
    try:
        report = load(path, RunReport)
    except (FormatError, OSError):
        return  # the job ended before writing one: the error line is all there is
    if report.status == "running":
        save(replace(report, status=status, error=line), path)


COMMAND = Command(
    name="train",
    help="train a model under a plan on torch.distributed (gloo on CPU, NCCL on GPU)",
    add_arguments=_add_arguments,
    run=_run,
)

"""Measure each layer type of a model: forward and backward time against micro-batch size for
every tensor-parallel degree and sequence-parallel mode the plan space uses, and its memory
(parameters, gradients, optimizer states, activations per sample with and without
checkpointing), into a ``partita.model_profile`` file the simulator reads.

Degrees above 1 are measured as rank 0's shard in this one process, without the collectives
(origin ``measured_tp1_plus_comm``: the simulator adds the communication from the hardware
profile), or with ``--nproc N`` on N torchrun ranks in real groups (``measured_tp_groups``).
What was measured so far is saved to ``OUT.partial`` after each configuration.

Example: ``partita profile model --model gpt-tiny --seq 32 --batch-sizes 1 2 --out model.json``
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from partita.formats.common import ATTENTION_KERNELS

if TYPE_CHECKING:
    import torch

    from partita.profiler.model_run import Settings

DEFAULT_TP_DEGREES = (1, 2, 4, 8)
EXIT_FAILED = 1
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a preset (partita describe --list) or a HF directory"
    )
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default: model's)")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        metavar="B",
        help="micro-batch sizes to time (default: 1 2 4)",
    )
    parser.add_argument(
        "--tp",
        type=int,
        nargs="+",
        default=list(DEFAULT_TP_DEGREES),
        metavar="T",
        help="tensor-parallel (and vocab-parallel) degrees; those the model's shapes allow are "
        "measured (default: 1 2 4 8)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model profile JSON to write")
    parser.add_argument(
        "--device", default=None, help="cpu or cuda[:N] (default: cuda when available)"
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--attention",
        # From partita.formats, not partita.models.attention: --help stays torch-free.
        choices=("auto", *ATTENTION_KERNELS),
        default="auto",
        help="attention kernel the layers run (default auto: flash-attn where installed on "
        "CUDA, else SDPA); the profile records the one used",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="passes over every configuration, times the median over them (default 1): on a "
        "shared machine, spreads each configuration's measurements over the whole run",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        metavar="BYTES",
        help="stop when a micro-batch would need more (e.g. 8GiB); CUDA stops on OOM anyway",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights' seed (default 0)")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="> 1: measure with real tensor-parallel groups of this many local torchrun ranks "
        "(every --tp degree must be <= it); default 1: shards in this process, no communication",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a rank waits for the others (--nproc)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or summary")


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text.lower())
    if not match:
        raise ValueError(f"--memory-limit: expected bytes like 8GiB or 500M, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def _check_arguments(args: argparse.Namespace) -> None:
    for name, values, minimum in (
        ("--batch-sizes", args.batch_sizes, 1),
        ("--tp", args.tp, 1),
        ("--repeats", [args.repeats], 1),
        ("--rounds", [args.rounds], 1),
        ("--warmup", [args.warmup], 0),
    ):
        bad = [value for value in values if value < minimum]
        if bad:
            raise ValueError(f"{name}: must be >= {minimum}, got {bad[0]}")
    if args.nproc < 1:
        raise ValueError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.memory_limit is not None:
        parse_bytes(args.memory_limit)
    if args.seq is not None and args.seq < 1:
        raise ValueError(f"--seq: must be >= 1, got {args.seq}")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.nproc > 1:
        return _launch(args)
    from partita.models.api import resolve_config
    from partita.profiler.model_run import profile_model
    from partita.profiler.model_summary import summary

    resolve_config(args.model)  # an unknown model fails here, before anything is built
    device = _device(args)
    start = time.perf_counter()
    profile = profile_model(settings_from(args, device=device))
    if not args.quiet:
        print(summary(profile))
        print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _device(args: argparse.Namespace) -> torch.device:
    import torch

    try:
        return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:  # torch's own message lists every device type it knows
        raise ValueError(f"--device: expected cpu or cuda, got {args.device!r}") from None


def settings_from(args: argparse.Namespace, *, device: object) -> Settings:
    import torch

    from partita.models.attention import select_attention
    from partita.profiler.model_run import Settings

    if not isinstance(device, torch.device) or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {args.device!r}")
    select_attention(args.attention, device)  # an impossible choice fails before any build
    return Settings(
        model=args.model,
        seq_len=args.seq,
        micro_batches=tuple(sorted(set(args.batch_sizes))),
        tp_degrees=tuple(sorted(set(args.tp))),
        out=args.out,
        device=device,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        memory_limit=None if args.memory_limit is None else parse_bytes(args.memory_limit),
        seed=args.seed,
        progress=not args.quiet,
        nproc=args.nproc,
        attention=args.attention,
    )


def _launch(args: argparse.Namespace) -> int:
    """The same command on ``--nproc`` torchrun ranks (``model_worker``). ``--nproc`` itself
    is not forwarded (torchrun would take it for ``--nproc-per-node``): ranks read the world
    size."""
    from partita.executor.launch import launch
    from partita.models.api import resolve_config
    from partita.models.attention import select_attention

    resolve_config(args.model)
    # Every rank would refuse it; refuse it once, before any starts.
    select_attention(args.attention, _device(args))
    too_wide = [tp for tp in args.tp if tp > args.nproc]
    if too_wide:
        raise ValueError(f"--tp {too_wide[0]} needs {too_wide[0]} ranks; --nproc is {args.nproc}")
    forwarded = ["--model", args.model, "--out", str(args.out), "--dtype", args.dtype]
    forwarded += ["--attention", args.attention]
    forwarded += ["--batch-sizes", *map(str, args.batch_sizes), "--tp", *map(str, args.tp)]
    for flag, value in (
        ("--seq", args.seq),
        ("--device", args.device),
        ("--memory-limit", args.memory_limit),
        ("--warmup", args.warmup),
        ("--repeats", args.repeats),
        ("--rounds", args.rounds),
        ("--seed", args.seed),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            forwarded += [flag, str(value)]
    if args.quiet:
        forwarded.append("--quiet")
    code = launch("partita.profiler.model_worker", args.nproc, forwarded, prog="partita profile")
    if code != 0:
        return EXIT_FAILED
    _memory_in_one_process(args)
    return 0


def _memory_in_one_process(args: argparse.Namespace) -> None:
    """On CPU, replace the ranks' memory entries by ones measured in this process.

    The CPU method sees only the calling thread's allocations; gloo allocates and frees
    collective buffers on its own threads, so ranks' numbers are off. A shard in this process
    (fake group) allocates what a rank allocates, collective outputs included. CUDA's
    allocator counts every thread: there the ranks' numbers stay.
    """
    import dataclasses
    import tempfile

    import torch

    from partita.formats import ModelProfile, load, save
    from partita.profiler.model_run import profile_model

    if _device(args).type == "cuda":
        return
    with tempfile.TemporaryDirectory() as scratch:
        settings = settings_from(args, device=torch.device("cpu"))
        local = profile_model(
            dataclasses.replace(
                settings,
                out=Path(scratch) / "memory.json",
                warmup=0,
                repeats=1,
                rounds=1,
                progress=False,
            )
        )
    ranks = load(args.out, ModelProfile)
    memory = {lt.layer_type: lt.memory for lt in local.layer_types}
    merged = tuple(
        dataclasses.replace(lt, memory=memory[lt.layer_type]) for lt in ranks.layer_types
    )
    tools = {**ranks.tools, "memory": f"{local.tools['memory']}; in one process (fake groups)"}
    save(dataclasses.replace(ranks, layer_types=merged, tools=tools), args.out)

"""Host effects the cost model does not price yet, measured on 2 gloo ranks of this machine.

The fidelity benchmark (``fidelity.py``) under-predicts pipelines and tp 1 plans at world
size 2. This script measures, in one short job, the effects found behind those errors, so a
cost-model change can be checked against numbers rather than guesses:

``stream``
    Rank 0 computes a block of matmuls and sends 8 bytes to rank 1, ``STREAM_LENGTH`` times;
    rank 1 receives each and computes the same block: a two-stage pipeline's forward. In
    blocks as long as on both ranks at once (the speed the profiler measures layers at), it
    takes ``length + 1`` blocks if the stages overlap fully, ``2 * length`` if they take turns;
    ``stream_efficiency`` is ``(2 * length - blocks) / (length - 1)``: 1 for full overlap, 0
    for turns.
``concurrency``
    One block on rank 0 while rank 1 waits in a receive, against one block on both ranks at
    once (``second_busy_rank_slowdown`` below 1: a rank computes faster while the other one
    is busy too).
``handoff``
    Rounds of rank 0 computing then sending, rank 1 receiving, computing, sending back, against
    an empty round plus two blocks, each timed around the block alone on a rank while the
    other waits: the excess per handoff.
``step_parts``
    A gpt-tiny training step (zero_grad, forward, loss, backward, AdamW step) against its
    forward and backward and its optimizer step timed back to back, both ranks at once.

    python benchmarks/host_effects.py --out FILE.json

Medians over ``REPEATS`` interleaved repeats (the parts of one measurement alternate, so a
drift of the host reaches them alike). Takes about 20 seconds; the host's effects vary from
run to run, so run it several times before trusting one number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

REPEATS = 15
STREAM_LENGTH = 4
MATMUL_SIZE = 256
BLOCKS = (2, 8, 24)  # matmuls per block: about 0.7, 2.7 and 8 ms here
TIMEOUT_S = 300


def _worker(out: Path) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    token = torch.zeros(2)

    def block(count: int) -> None:
        for _ in range(count):
            torch.mm(a, a)

    def seconds(call: Callable[[], object]) -> float:
        dist.barrier()
        start = time.perf_counter()
        call()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slower rank's time
        return float(elapsed)

    def stream(count: int) -> None:
        pending = []
        for _ in range(STREAM_LENGTH):
            if rank == 0:
                block(count)
                pending.append(dist.isend(token, 1))
            else:
                dist.recv(token, 0)
                block(count)
        for work in pending:
            work.wait()

    def alone(count: int) -> float:
        """Seconds of one block on rank 0, timed around the block only, while rank 1 waits
        in a receive (the send that releases it is not part of the time)."""
        dist.barrier()
        elapsed = torch.zeros(1, dtype=torch.float64)
        if rank == 0:
            start = time.perf_counter()
            block(count)
            elapsed += time.perf_counter() - start
            dist.send(token, 1)
        else:
            dist.recv(token, 0)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed)

    def rounds(count: int) -> None:
        if rank == 0:
            block(count)
            dist.send(token, 1)
            dist.recv(token, 1)
        else:
            dist.recv(token, 0)
            block(count)
            dist.send(token, 0)

    samples: dict[str, list[float]] = {}

    def sample(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    block(4)
    for _ in range(REPEATS):
        sample("round_empty", seconds(lambda: rounds(0)))
        for count in BLOCKS:
            sample(f"stream_{count}", seconds(lambda c=count: stream(c)))
            sample(f"alone_{count}", alone(count))
            sample(f"both_{count}", seconds(lambda c=count: block(c)))
            sample(f"round_{count}", seconds(lambda c=count: rounds(c)))
    med = {key: statistics.median(values) for key, values in samples.items()}
    result: dict[str, object] = {"repeats": REPEATS, "stream_length": STREAM_LENGTH}
    by_block = {}
    for count in BLOCKS:
        one, both = med[f"alone_{count}"], med[f"both_{count}"]
        blocks_taken = med[f"stream_{count}"] / both
        by_block[str(count)] = {
            "block_alone_s": one,
            "block_both_ranks_s": both,
            "second_busy_rank_slowdown": both / one,
            "stream_s": med[f"stream_{count}"],
            "stream_blocks": blocks_taken,
            "stream_efficiency": (2 * STREAM_LENGTH - blocks_taken) / (STREAM_LENGTH - 1),
            "handoff_excess_s": (med[f"round_{count}"] - 2 * one - med["round_empty"]) / 2,
        }
    result["by_block_matmuls"] = by_block
    result["round_empty_s"] = med["round_empty"]
    result["step_parts"] = _step_parts(seconds)
    if rank == 0:
        out.write_text(json.dumps(result, indent=2) + "\n")
    # Both ranks tear gloo down together: a rank leaving while the other still writes the
    # file sometimes aborted in gloo's teardown ("terminate called without an active
    # exception").
    dist.barrier()
    dist.destroy_process_group()


def _step_parts(seconds: Callable[[Callable[[], object]], float]) -> dict[str, float]:
    import torch

    from partita.models.api import build_model, synthetic_batch

    model = build_model("gpt-tiny", seed=0)
    batch = synthetic_batch("gpt-tiny", batch_size=2, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def forward_backward() -> None:
        model.loss_fn(model.run_layers(dict(batch)), batch).backward()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    step()  # the optimizer's states exist from here on
    parts: dict[str, list[float]] = {"step": [], "forward_backward": [], "optimizer_step": []}
    for _ in range(REPEATS * 3):
        parts["step"].append(seconds(step))
        parts["forward_backward"].append(seconds(forward_backward))
        parts["optimizer_step"].append(seconds(optimizer.step))
    med = {key: statistics.median(values) for key, values in parts.items()}
    med["step_over_parts"] = med["step"] / (med["forward_backward"] + med["optimizer_step"])
    return {f"{key}_s" if key != "step_over_parts" else key: v for key, v in med.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.out)
        return 0
    from partita.executor.launch import free_port

    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        __file__, "--worker", "--out", str(args.out.resolve()),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(command, env=env, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        print(f"host_effects: error: the 2-rank job took over {TIMEOUT_S} s", file=sys.stderr)
        return 1
    if done.returncode != 0 or not args.out.is_file():
        print(
            f"host_effects: error: the 2-rank job failed (exit {done.returncode})", file=sys.stderr
        )
        return 1
    result = json.loads(args.out.read_text())
    for count, row in result["by_block_matmuls"].items():
        print(
            f"block of {count:>2} matmuls: alone {row['block_alone_s'] * 1e3:.2f} ms, "
            f"both ranks {row['second_busy_rank_slowdown']:.2f}x; stream of {STREAM_LENGTH} "
            f"took {row['stream_blocks']:.2f} blocks (efficiency {row['stream_efficiency']:.2f}); "
            f"handoff excess {row['handoff_excess_s'] * 1e3:.3f} ms"
        )
    parts = result["step_parts"]
    print(
        f"gpt-tiny step {parts['step_s'] * 1e3:.2f} ms = {parts['step_over_parts']:.2f}x its "
        f"forward+backward ({parts['forward_backward_s'] * 1e3:.2f} ms) and optimizer step "
        f"({parts['optimizer_step_s'] * 1e3:.2f} ms) timed alone\n{args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

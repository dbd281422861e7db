"""A per-rank watchdog: a rank that stops hearing progress exits, naming the silent ranks.

Every rank's watchdog thread writes a record to the job's key-value store (torchrun's, which
outlives any rank) each second: the wall time and how many steps the rank has finished. The
thread keeps writing while the main thread waits inside a collective, so a record that stops
changing means the process itself is gone or stopped (SIGKILL, SIGSTOP, a lost node), while a
live rank that is stuck shows as a step count behind the others. When this rank has made no
progress for ``timeout_s`` (a peer died or hung, so a collective never returns), the thread
prints one line naming the lost ranks and ends the process, so the job stops within a bounded
time instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

KEY = "partita/heartbeat/{rank}"
EXIT_LOST_RANK = 3
BEAT_INTERVAL_S = 1.0
# A record this old means the process no longer runs; well above the beat interval so a
# rank starved of CPU on oversubscribed cores is not called lost.
STALE_AFTER_S = 5.0


class Watchdog:
    def __init__(self, *, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        # A client of its own: the main thread may be blocked inside the default store.
        # The lock keeps the thread's writes and a main-thread diagnosis from interleaving.
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=10),
        )
        self._last_progress = time.monotonic()
        self._steps = 0
        self._stop = threading.Event()
        self._store_lock = threading.Lock()
        self._write_record()
        self._thread = threading.Thread(target=self._watch, name="partita-watchdog", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """This rank made progress (a step or a checkpoint)."""
        self._steps += 1
        self._last_progress = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _write_record(self) -> None:
        with self._store_lock:
            self.store.set(KEY.format(rank=self.rank), f"{time.time()!r} {self._steps}")

    def _watch(self) -> None:
        while not self._stop.wait(BEAT_INTERVAL_S):
            # The store may be gone: rank 0, which hosts it, has ended.
            with contextlib.suppress(RuntimeError):
                self._write_record()
            if time.monotonic() - self._last_progress > self.timeout_s:
                print(
                    f"partita train: error: [rank {self.rank}] {self.diagnosis()}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_LOST_RANK)

    def _records(self) -> dict[int, tuple[float, int]]:
        records = {}
        for rank in range(self.world_size):
            key = KEY.format(rank=rank)
            try:
                with self._store_lock:
                    value = self.store.get(key) if self.store.check([key]) else b"0 0"
            except RuntimeError:  # the store itself is gone (rank 0 hosts it)
                continue
            seen, steps = value.decode().split()
            records[rank] = (float(seen), int(steps))
        return records

    def silent_ranks(self) -> list[int]:
        """The other ranks that are gone (their record stopped), else the live ones whose
        step count is behind the others' (stuck)."""
        records = self._records()
        now = time.time()
        gone = [
            r for r, (seen, _) in records.items() if r != self.rank and now - seen > STALE_AFTER_S
        ]
        if gone:
            return gone
        most = max((steps for _, steps in records.values()), default=0)
        return [r for r, (_, steps) in records.items() if r != self.rank and steps < most]

    def wait_for_silent_ranks(self) -> list[int]:
        """The silent ranks, waiting long enough for a rank that died just now to go stale
        (a collective fails at once when its peer's socket closes)."""
        deadline = time.monotonic() + STALE_AFTER_S + 2 * BEAT_INTERVAL_S
        while True:
            silent = self.silent_ranks()
            if silent or time.monotonic() > deadline:
                return silent
            time.sleep(BEAT_INTERVAL_S / 2)

    def diagnosis(self, silent: list[int] | None = None) -> str:
        silent = self.silent_ranks() if silent is None else silent
        who = f"rank(s) {', '.join(map(str, silent))}" if silent else "a rank"
        return f"{who} did not reach step start within {self.timeout_s:.0f} s (hung or lost)"

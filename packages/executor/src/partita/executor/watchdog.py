"""A per-rank watchdog: a rank that stops hearing progress exits, naming the silent ranks.

Every rank records a heartbeat in the job's key-value store (torchrun's, which outlives any
rank) after each step. A thread checks this rank's own progress; when it has made none for
``timeout_s`` (a peer died or hung, so a collective never returns), it reads everyone's
heartbeat, prints one line naming the ranks whose heartbeats are stale, and ends the process,
so the job stops within a bounded time instead of waiting forever.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

KEY = "partita/heartbeat/{rank}"
EXIT_LOST_RANK = 3


class Watchdog:
    def __init__(self, *, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        # A client of its own: the main thread may be blocked inside the default store.
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=10),
        )
        self._last = time.monotonic()
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._watch, name="partita-watchdog", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self._last = time.monotonic()
        self.store.set(KEY.format(rank=self.rank), repr(time.time()))

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self._last > self.timeout_s:
                print(
                    f"partita train: error: [rank {self.rank}] {self.diagnosis()}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_LOST_RANK)

    def silent_ranks(self) -> list[int]:
        """The other ranks whose last heartbeat is older than the timeout."""
        now = time.time()
        silent = []
        for rank in range(self.world_size):
            key = KEY.format(rank=rank)
            try:
                seen = float(self.store.get(key)) if self.store.check([key]) else 0.0
            except RuntimeError:  # the store itself is gone (rank 0 hosts it)
                continue
            if rank != self.rank and now - seen > self.timeout_s:
                silent.append(rank)
        return silent

    def diagnosis(self) -> str:
        silent = self.silent_ranks()
        who = f"rank(s) {', '.join(map(str, silent))}" if silent else "a rank"
        return f"{who} did not reach step start within {self.timeout_s:.0f} s (hung or lost)"

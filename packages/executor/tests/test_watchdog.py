"""The watchdog tells a gone rank (its record stopped) from a stuck one (its steps behind)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from partita.executor import watchdog as watchdog_module
from partita.executor.watchdog import Watchdog


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_watchdogs(monkeypatch: pytest.MonkeyPatch):
    port = _free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(watchdog_module, "STALE_AFTER_S", 1.5)
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    dogs = [Watchdog(rank=r, world_size=2, timeout_s=600) for r in range(2)]
    yield dogs
    for dog in dogs:
        dog.stop()
    del store


def test_live_ranks_in_step_are_not_silent(two_watchdogs: list[Watchdog]) -> None:
    first, second = two_watchdogs
    first.beat()
    second.beat()
    time.sleep(2.5)  # longer than the stale limit: the threads keep the records fresh
    assert first.silent_ranks() == [] and second.silent_ranks() == []


def test_a_rank_behind_the_others_is_named(two_watchdogs: list[Watchdog]) -> None:
    first, second = two_watchdogs
    first.beat()
    time.sleep(1.5)  # the next record carries the step
    assert first.silent_ranks() == [1]
    assert second.silent_ranks() == []  # the one ahead is not the culprit
    assert "rank(s) 1 did not reach step start" in first.diagnosis()


def test_a_rank_whose_record_stopped_is_named(two_watchdogs: list[Watchdog]) -> None:
    first, second = two_watchdogs
    second.stop()  # as a SIGSTOPped or killed process: no more records
    assert first.wait_for_silent_ranks() == [1]

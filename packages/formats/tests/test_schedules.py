from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partita.formats.common import SCHEDULES
from partita.formats.schedules import (
    Action,
    DeadlockError,
    Schedule,
    build_schedule,
    gpipe,
    interleaved_one_f_one_b,
    max_in_flight,
    num_chunks,
    one_f_one_b,
    replay,
    splits_backward,
    zero_bubble_h1,
)


def _text(schedule: Schedule) -> list[str]:
    return [" ".join(str(a) for a in stage) for stage in schedule]


def _shapes() -> list[tuple[str, int, int, int]]:
    """Every schedule up to 16 stages x 64 micro-batches x 4 chunks (on a grid that keeps
    the edges: one stage, one micro-batch, fewer micro-batches than stages)."""
    shapes = []
    for stages, micro_batches in itertools.product((1, 2, 3, 4, 7, 8, 16), (1, 2, 3, 8, 17, 64)):
        shapes += [(name, stages, micro_batches, 1) for name in ("gpipe", "1f1b", "zb-h1")]
        if stages > 1:
            for chunks in (2, 3, 4):
                for m in {stages, 2 * stages, stages * max(1, micro_batches // stages)}:
                    if m <= 64:
                        shapes.append(("interleaved-1f1b", stages, m, chunks))
    return shapes


SHAPES = _shapes()


def test_gpipe_runs_all_forwards_then_all_backwards() -> None:
    assert _text(gpipe(2, 3)) == ["F0 F1 F2 B0 B1 B2"] * 2


def test_1f1b_matches_the_hand_written_table() -> None:
    assert _text(one_f_one_b(3, 4)) == [
        "F0 F1 F2 B0 F3 B1 B2 B3",
        "F0 F1 B0 F2 B1 F3 B2 B3",
        "F0 B0 F1 B1 F2 B2 F3 B3",
    ]


def test_interleaved_matches_megatrons_order() -> None:
    # Rank 0 runs 2 (p - 1) + (v - 1) p = 4 warm-up forwards: micro-batches 0 and 1 on
    # chunk 0, then on chunk 1; backwards start from the last chunk.
    assert _text(interleaved_one_f_one_b(2, 4, 2)) == [
        "F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3",
        "F0 F1 F0.1 B0.1 F1.1 B1.1 F2 B0 F3 B1 F2.1 B2.1 F3.1 B3.1 B2 B3",
    ]


def test_zb_h1_keeps_1f1b_order_and_fills_waits_with_weight_passes() -> None:
    schedule = zero_bubble_h1(4, 8)
    assert _text(schedule)[0] == (
        "F0 F1 F2 F3 B0 W0 F4 B1 W1 F5 B2 W2 F6 B3 W3 F7 B4 W4 B5 W5 B6 W6 B7 W7"
    )
    without_w = tuple(tuple(a for a in stage if a.kind != "W") for stage in schedule)
    assert without_w == one_f_one_b(4, 8)
    assert splits_backward(schedule) and not splits_backward(one_f_one_b(4, 8))


@pytest.mark.parametrize(("name", "stages", "micro_batches", "chunks"), SHAPES)
def test_every_schedule_replays_without_deadlock(
    name: str, stages: int, micro_batches: int, chunks: int
) -> None:
    schedule = build_schedule(name, stages, micro_batches, chunks)
    assert len(schedule) == stages and num_chunks(schedule) == chunks
    kinds = 3 if name == "zb-h1" else 2
    assert all(len(actions) == kinds * micro_batches * chunks for actions in schedule)
    result = replay(schedule)  # raises DeadlockError (or a missing action) otherwise
    assert result.makespan > 0
    # Messages between two ranks are received in the order they are sent (what NCCL, which
    # matches point-to-point messages by order, needs).
    sent, received = _messages(schedule)
    assert sent == received


@pytest.mark.parametrize(("name", "stages", "micro_batches", "chunks"), SHAPES)
def test_in_flight_activations_match_the_published_counts(
    name: str, stages: int, micro_batches: int, chunks: int
) -> None:
    schedule = build_schedule(name, stages, micro_batches, chunks)
    p, m, v = stages, micro_batches, chunks
    for rank, actions in enumerate(schedule):
        in_flight = max_in_flight(actions)
        if name == "gpipe":
            assert in_flight == m
        elif name == "1f1b":
            assert in_flight == min(p - rank, m)  # PipeDream-flush (Narayanan et al. 2021)
        elif name == "zb-h1":
            # Held until W: every stage holds 1F1B's first-stage count (Qi et al. 2023) ...
            assert in_flight == min(p, m)
            # ... and counted until B, 1F1B's own count.
            assert max_in_flight(actions, split=False) == min(p - rank, m)
        else:  # Megatron-LM: warm-up forwards, plus one in the steady state
            assert in_flight == min(m * v, 2 * (p - rank - 1) + (v - 1) * p + 1)


@pytest.mark.parametrize(("stages", "micro_batches"), [(2, 4), (4, 8), (4, 32), (8, 16), (16, 64)])
def test_bubbles_match_the_closed_forms(stages: int, micro_batches: int) -> None:
    p, m = stages, micro_batches
    forward, backward = 1.0, 2.0  # B = 2 F, as in the papers
    one_f = replay(one_f_one_b(p, m), {"F": forward, "B": backward})
    assert one_f.bubble_fraction(0) == pytest.approx((p - 1) / (m + p - 1))
    for v in (2, 4):
        if m % p == 0:
            chunked = replay(
                interleaved_one_f_one_b(p, m, v), {"F": forward / v, "B": backward / v}
            )
            assert chunked.bubble_fraction(0) == pytest.approx((p - 1) / (v * m + p - 1))
    # F = B = W: ZB-H1's idle time per stage is (p - 1)(F + B - W), a third of 1F1B's
    # (p - 1)(F + B + W).
    zb = replay(zero_bubble_h1(p, m), {"F": 1.0, "B": 1.0, "W": 1.0})
    idle = [zb.makespan - busy for busy in zb.busy]
    assert max(idle) == pytest.approx((p - 1) * 1.0)
    assert max(idle) == pytest.approx((one_f.makespan - one_f.busy[0]) / 3)


def test_a_deadlocking_schedule_is_reported_naming_ranks_and_waits() -> None:
    fine = one_f_one_b(2, 2)
    # Rank 1 runs its backward of 0 before the forward it needs.
    broken = (fine[0], (Action("B", 0), Action("F", 0), Action("F", 1), Action("B", 1)))
    with pytest.raises(DeadlockError) as error:
        replay(broken)
    message = str(error.value)
    assert "rank 1 at B0 waits for F0 of virtual stage 1" in message
    assert "rank 0 at B0 waits for B0 of virtual stage 1" in message
    with pytest.raises(ValueError, match="rank 0 misses B1"):
        replay((fine[0][:-1], fine[1]))


@given(st.sampled_from(["gpipe", "1f1b", "zb-h1"]), st.integers(1, 8), st.integers(1, 16))
def test_every_micro_batch_runs_forward_then_backward_once(
    name: str, stages: int, micro_batches: int
) -> None:
    for actions in build_schedule(name, stages, micro_batches):
        assert sorted(str(a) for a in actions if a.kind == "F") == sorted(
            f"F{m}" for m in range(micro_batches)
        )
        seen: set[tuple[str, int]] = set()
        for action in actions:
            needs = {"F": None, "B": "F", "W": "B"}[action.kind]
            if needs:
                assert (needs, action.micro_batch) in seen
            seen.add((action.kind, action.micro_batch))
        assert sum(a.kind == "B" for a in actions) == micro_batches


def test_unknown_schedule_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zb'"):
        build_schedule("zb", 2, 2)
    with pytest.raises(ValueError, match="at least one stage and one micro-batch"):
        gpipe(0, 4)
    with pytest.raises(ValueError, match="the 1f1b schedule runs one chunk per rank, got 2"):
        build_schedule("1f1b", 2, 4, 2)
    with pytest.raises(ValueError, match=r"micro-batches \(6\) to be a multiple .* \(4\)"):
        build_schedule("interleaved-1f1b", 4, 6, 2)
    with pytest.raises(ValueError, match="at least 2 chunks"):
        build_schedule("interleaved-1f1b", 4, 8, 1)
    assert set(SCHEDULES) == {"gpipe", "1f1b", "interleaved-1f1b", "zb-h1"}


def _messages(
    schedule: Schedule,
) -> tuple[dict[tuple[int, int], list[str]], dict[tuple[int, int], list[str]]]:
    """Per (sender, receiver), the transfers in the order the sender sends them and in the
    order the receiver waits for them."""
    p = len(schedule)
    last = p * num_chunks(schedule) - 1
    sent: dict[tuple[int, int], list[str]] = {}
    received: dict[tuple[int, int], list[str]] = {}
    for rank, actions in enumerate(schedule):
        for action in actions:
            stage, m = action.chunk * p + rank, action.micro_batch
            if action.kind == "F":
                if stage > 0:
                    received.setdefault(((stage - 1) % p, rank), []).append(f"F{m}@{stage}")
                if stage < last:
                    sent.setdefault((rank, (stage + 1) % p), []).append(f"F{m}@{stage + 1}")
            elif action.kind == "B":
                if stage < last:
                    received.setdefault(((stage + 1) % p, rank), []).append(f"B{m}@{stage}")
                if stage > 0:
                    sent.setdefault((rank, (stage - 1) % p), []).append(f"B{m}@{stage - 1}")
    return sent, received

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partita.formats.schedules import Action, build_schedule, gpipe, max_in_flight, one_f_one_b


def _text(schedule: tuple[tuple[Action, ...], ...]) -> list[str]:
    return [" ".join(str(a) for a in stage) for stage in schedule]


def test_gpipe_runs_all_forwards_then_all_backwards() -> None:
    assert _text(gpipe(2, 3)) == ["F0 F1 F2 B0 B1 B2"] * 2


def test_1f1b_matches_the_hand_written_table() -> None:
    assert _text(one_f_one_b(3, 4)) == [
        "F0 F1 F2 B0 F3 B1 B2 B3",
        "F0 F1 B0 F2 B1 F3 B2 B3",
        "F0 B0 F1 B1 F2 B2 F3 B3",
    ]


def test_in_flight_micro_batches() -> None:
    assert [max_in_flight(s) for s in one_f_one_b(4, 8)] == [4, 3, 2, 1]
    assert [max_in_flight(s) for s in gpipe(4, 8)] == [8, 8, 8, 8]
    assert [max_in_flight(s) for s in one_f_one_b(4, 2)] == [2, 2, 2, 1]


@given(st.sampled_from(["gpipe", "1f1b"]), st.integers(1, 8), st.integers(1, 16))
def test_every_micro_batch_runs_forward_then_backward_once(
    name: str, stages: int, micro_batches: int
) -> None:
    for actions in build_schedule(name, stages, micro_batches):
        assert sorted(str(a) for a in actions if a.kind == "F") == sorted(
            f"F{m}" for m in range(micro_batches)
        )
        seen_forward: set[int] = set()
        for action in actions:
            if action.kind == "F":
                seen_forward.add(action.micro_batch)
            else:
                assert action.micro_batch in seen_forward
        assert sum(a.kind == "B" for a in actions) == micro_batches


def test_unknown_schedule_and_empty_pipeline_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pipeline schedule 'zb'"):
        build_schedule("zb", 2, 2)
    with pytest.raises(ValueError, match="at least one stage and one micro-batch"):
        gpipe(0, 4)

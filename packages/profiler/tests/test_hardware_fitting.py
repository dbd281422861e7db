"""The latency/bandwidth fit and the repeat statistics of ``partita.profiler.fitting``."""

from __future__ import annotations

import math
import random

import pytest

from partita.profiler.fitting import fit_line, quantile, summarize, trimmed_mean

LADDER = [1024 * 4**k for k in range(8)]  # 1 KiB .. 16 MiB, as the default plan


def _line(latency: float, bandwidth: float) -> list[float]:
    return [latency + size / bandwidth for size in LADDER]


@pytest.mark.parametrize(
    ("latency", "bandwidth"), [(20e-6, 2e9), (5e-3, 5e8), (2e-6, 4.5e11), (0.0, 1e9)]
)
def test_an_exact_line_is_recovered(latency: float, bandwidth: float) -> None:
    fit = fit_line(LADDER, _line(latency, bandwidth))
    assert fit.latency_s == pytest.approx(latency, rel=1e-9, abs=1e-15)
    assert fit.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=1e-9)
    assert fit.used == tuple(range(len(LADDER)))


def test_two_points_are_enough() -> None:
    fit = fit_line([1000, 3000], [2e-3, 4e-3])
    assert (fit.latency_s, fit.bandwidth_bytes_per_s) == pytest.approx((1e-3, 1e6))


def test_a_negative_intercept_is_clipped_to_a_line_through_the_origin() -> None:
    sizes = [1e6, 2e6, 4e6]
    times = [0.5e-3, 1.5e-3, 3.5e-3]  # exact line with latency -0.5 ms
    fit = fit_line(sizes, times)
    assert fit.latency_s == 0.0
    # The relative least-squares slope through the origin lies among the points' time/size.
    assert 0.5e-9 < 1 / fit.bandwidth_bytes_per_s < 0.875e-9


def test_multiplicative_noise_leaves_the_fit_close() -> None:
    rng = random.Random(0)
    latency, bandwidth = 50e-6, 1.5e9
    errors_latency, errors_bandwidth = [], []
    for _ in range(200):
        times = [t * math.exp(rng.gauss(0, 0.05)) for t in _line(latency, bandwidth)]
        fit = fit_line(LADDER, times)
        errors_latency.append(abs(fit.latency_s / latency - 1))
        errors_bandwidth.append(abs(fit.bandwidth_bytes_per_s / bandwidth - 1))
    # 5 % noise per point: both parameters typically within a few percent.
    assert sorted(errors_bandwidth)[100] < 0.03 and max(errors_bandwidth) < 0.12
    assert sorted(errors_latency)[100] < 0.05 and max(errors_latency) < 0.25


def test_one_wild_point_is_rejected() -> None:
    latency, bandwidth = 30e-6, 2e9
    times = _line(latency, bandwidth)
    times[3] *= 20  # a descheduled rank at 64 KiB
    fit = fit_line(LADDER, times)
    assert 3 not in fit.used
    assert fit.latency_s == pytest.approx(latency, rel=1e-6)
    assert fit.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=1e-6)


def test_the_largest_size_is_never_dropped() -> None:
    # Not a line (per byte, 16 MiB is slower than 2 MiB), as on a busy CPU. Dropping the 16 MiB
    # point would fit the small sizes well and predict 3.9 ms for 16 MiB.
    sizes = [4096, 32768, 262144, 2097152, 16777216]
    times = [0.362e-3, 0.392e-3, 0.491e-3, 0.81e-3, 9.507e-3]
    fit = fit_line(sizes, times)
    assert 4 in fit.used
    assert abs(fit.time_s(sizes[-1]) / times[-1] - 1) < 0.5


def test_rejection_never_drops_more_than_a_quarter() -> None:
    times = _line(30e-6, 2e9)
    for i in (1, 3, 5):
        times[i] *= 10
    fit = fit_line(LADDER, times)
    assert len(fit.used) >= len(LADDER) - len(LADDER) // 4


@pytest.mark.parametrize(
    ("sizes", "times", "message"),
    [
        ([1024], [1e-3], "two distinct sizes"),
        ([1024, 1024], [1e-3, 2e-3], "two distinct sizes"),
        ([1024, 2048], [1e-3], "2 sizes but 1 times"),
        ([0, 2048], [1e-3, 2e-3], "sizes must be finite and > 0"),
        ([1024, 2048], [1e-3, -2e-3], "times must be finite and > 0"),
        ([1024, 2048], [1e-3, math.nan], "times must be finite and > 0"),
        ([1024, 2048, 4096], [3e-3, 2e-3, 1e-3], "do not grow with size"),
    ],
)
def test_bad_input_is_a_value_error(sizes: list[float], times: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_line(sizes, times)


def test_trimmed_mean_keeps_a_slow_mode_and_drops_a_lone_stall() -> None:
    # Bimodal repeats as gloo's on shared cores: 7 fast (1 ms), 2 slow (3 ms), one stall
    # (50 ms). The median (1 ms) drops the slow mode a step pays; the plain mean lets the
    # stall decide; the mean without the top and bottom tenth keeps the slow mode only.
    repeats = [1.0] * 7 + [3.0, 3.0, 50.0]
    assert summarize(repeats).median == 1.0
    assert trimmed_mean(repeats) == pytest.approx((6 * 1.0 + 2 * 3.0) / 8)
    assert summarize(repeats).mean == trimmed_mean(repeats)
    assert trimmed_mean([5.0, 1.0, 3.0]) == 3.0  # too few to trim: the plain mean
    with pytest.raises(ValueError, match="no values"):
        trimmed_mean([])


def test_summary_is_median_and_iqr_over_median() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert summary.median == 3.0
    assert summary.spread == pytest.approx((4.0 - 2.0) / 3.0)
    assert quantile([1.0, 2.0], 0.25) == 1.25  # linear interpolation, as numpy's default
    assert summarize([0.0, 0.0, 0.0]).spread == 0.0
    with pytest.raises(ValueError, match="no repeats"):
        summarize([])
    with pytest.raises(ValueError, match="finite and >= 0"):
        summarize([1.0, math.inf])

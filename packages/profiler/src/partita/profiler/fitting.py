"""Summaries of repeated timings and the ``time = latency + bytes / bandwidth`` fit (no torch).

Statistics
    A measured time is the **trimmed mean** of its repeats (``trimmed_mean``: the mean of
    what is left after dropping the highest and lowest ``TRIM`` of them): a training step
    takes the sum of its parts' times, and a sum follows the parts' means, not their medians.
    On shared cores gloo's collectives are bimodal (4 KiB all-reduces after a matmul: a
    median of 0.35-1.0 ms, a tenth of them above 3 ms, a mean of 0.8-1.5 ms): a median drops
    the slow mode, which a step pays every time it comes. Trimming keeps a single repeat
    stalled far longer from deciding the point. Its spread is the interquartile range over
    the median (``iqr_over_median``, quartiles by linear interpolation, as numpy's default).

Fit
    :func:`fit_line` fits ``time_s = latency_s + bytes / bandwidth`` to the medians by least
    squares on **relative** residuals (weights ``1 / time^2``): with a geometric ladder of
    sizes the times span orders of magnitude, and plain least squares would let the largest
    size decide everything and leave the latency to chance. Robustness: after a first fit,
    points whose relative residual exceeds both ``OUTLIER_RELATIVE`` and ``OUTLIER_FACTOR``
    times the median relative residual are dropped (never more than a quarter of the points,
    always keeping at least three, never the largest size, which carries the bandwidth: on a
    busy machine the small sizes are the ones scheduler delays inflate), and the line is
    fitted again. ``latency_s`` is clipped at 0: when the intercept comes out negative the
    line is refitted through the origin. A slope that is not positive (times that do not grow
    with size) is an error: the sizes were too small for the noise, and no bandwidth can be
    derived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

OUTLIER_RELATIVE = 0.25
OUTLIER_FACTOR = 4.0
TRIM = 0.1  # the share of repeats dropped at each end by ``trimmed_mean``


@dataclass(frozen=True)
class Summary:
    """Trimmed mean, median and IQR/median of one set of repeats."""

    mean: float  # trimmed
    median: float
    spread: float


@dataclass(frozen=True)
class LineFit:
    latency_s: float
    bandwidth_bytes_per_s: float
    used: tuple[int, ...]  # indices of the points kept by the outlier rejection

    def time_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def trimmed_mean(values: Sequence[float], trim: float = TRIM) -> float:
    """The mean of ``values`` without the ``floor(trim * n)`` highest and lowest."""
    if not values:
        raise ValueError("trimmed mean of no values")
    ordered = sorted(values)
    cut = math.floor(trim * len(ordered))
    kept = ordered[cut : len(ordered) - cut]
    return math.fsum(kept) / len(kept)


def summarize(times: Sequence[float]) -> Summary:
    """Trimmed mean, median and IQR over the median of ``times`` (seconds, FLOP/s...)."""
    values = [float(t) for t in times]
    if not values:
        raise ValueError("no repeats to summarize")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"repeats must be finite and >= 0, got {values}")
    median = quantile(values, 0.5)
    iqr = quantile(values, 0.75) - quantile(values, 0.25)
    return Summary(
        mean=trimmed_mean(values), median=median, spread=iqr / median if median > 0 else 0.0
    )


def fit_line(sizes: Sequence[float], times: Sequence[float]) -> LineFit:
    """Latency (>= 0) and bandwidth (> 0) of ``time = latency + size / bandwidth``.

    ``sizes`` in bytes (> 0), ``times`` in seconds (> 0), at least two distinct sizes.
    """
    xs, ys = _checked(sizes, times)
    used = list(range(len(xs)))
    latency, slope = _weighted_fit(xs, ys, used)
    residuals = [abs(latency + slope * xs[i] - ys[i]) / ys[i] for i in used]
    typical = sorted(residuals)[len(residuals) // 2]
    limit = max(OUTLIER_RELATIVE, OUTLIER_FACTOR * typical)
    largest = max(used, key=lambda i: xs[i])  # carries the bandwidth: never dropped
    worst_first = sorted(
        (i for i in used if i != largest), key=lambda i: residuals[i], reverse=True
    )
    droppable = min(len(xs) // 4, len(xs) - 3)
    dropped = {i for i in worst_first[: max(droppable, 0)] if residuals[i] > limit}
    if dropped:
        used = [i for i in used if i not in dropped]
        if len({xs[i] for i in used}) >= 2:
            latency, slope = _weighted_fit(xs, ys, used)
        else:
            used = list(range(len(xs)))
    if slope <= 0:
        raise ValueError(
            "times do not grow with size, so no bandwidth can be fitted "
            f"(sizes {[int(x) for x in xs]}, times {ys}); measure larger sizes"
        )
    return LineFit(latency_s=latency, bandwidth_bytes_per_s=1.0 / slope, used=tuple(used))


def _checked(sizes: Sequence[float], times: Sequence[float]) -> tuple[list[float], list[float]]:
    xs, ys = [float(s) for s in sizes], [float(t) for t in times]
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} sizes but {len(ys)} times")
    if any(not math.isfinite(x) or x <= 0 for x in xs):
        raise ValueError(f"sizes must be finite and > 0, got {xs}")
    if any(not math.isfinite(y) or y <= 0 for y in ys):
        raise ValueError(f"times must be finite and > 0, got {ys}")
    if len(set(xs)) < 2:
        raise ValueError(f"a line needs at least two distinct sizes, got {sorted(set(xs))}")
    return xs, ys


def _weighted_fit(xs: list[float], ys: list[float], used: list[int]) -> tuple[float, float]:
    """(latency >= 0, slope) minimising sum(((a + b x - y) / y)^2) over ``used``."""
    weights = [1.0 / ys[i] ** 2 for i in used]
    sw = sum(weights)
    sx = sum(w * xs[i] for w, i in zip(weights, used, strict=True))
    sy = sum(w * ys[i] for w, i in zip(weights, used, strict=True))
    sxx = sum(w * xs[i] ** 2 for w, i in zip(weights, used, strict=True))
    sxy = sum(w * xs[i] * ys[i] for w, i in zip(weights, used, strict=True))
    determinant = sw * sxx - sx * sx
    if determinant > 0:
        slope = (sw * sxy - sx * sy) / determinant
        latency = (sy - slope * sx) / sw
        if latency >= 0:
            return latency, slope
    return 0.0, sxy / sxx  # clipped: the best line through the origin

"""Distribution summaries: mean, p50, p90, p95, p99, max.

Two methods, named in every report:
  exact  -- every sample kept; percentile p is the nearest-rank value: the smallest sample such
            that at least p% of samples are <= it (sorted[ceil(p/100 * n) - 1]); no interpolation.
  hdr    -- soak runs: an HdrHistogram (3 significant digits, 1 us .. 1 h) in fixed memory;
            percentiles are within 0.1% of the nearest-rank value. Histograms merge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PERCENTILES = (50, 90, 95, 99)
EXACT = "exact nearest-rank"
HDR = "HdrHistogram, 3 significant digits"


@dataclass(frozen=True)
class Summary:
    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None
    min: float | None = None

    def get(self, stat: str) -> float | None:
        return getattr(self, stat)

    def to_dict(self) -> dict:
        return asdict(self)


EMPTY = Summary(0, None, None, None, None, None, None, None)


def nearest_rank(sorted_values: list[float], p: float) -> float:
    n = len(sorted_values)
    return sorted_values[max(0, min(n - 1, math.ceil(p / 100 * n) - 1))]


def summarize(values) -> Summary:
    v = sorted(x for x in values if x is not None)
    if not v:
        return EMPTY
    p = {q: nearest_rank(v, q) for q in PERCENTILES}
    return Summary(len(v), math.fsum(v) / len(v), p[50], p[90], p[95], p[99], v[-1], v[0])


class HdrSeries:
    """Seconds in, microseconds inside an HdrHistogram; constant memory however long the run."""

    def __init__(self, max_s: float = 3600.0):
        from hdrh.histogram import HdrHistogram

        self.h = HdrHistogram(1, int(max_s * 1e6), 3)
        self.max_us = int(max_s * 1e6)
        self.sum = 0.0

    def add(self, seconds: float | None) -> None:
        if seconds is None:
            return
        us = min(max(1, int(seconds * 1e6)), self.max_us)
        self.h.record_value(us)
        self.sum += seconds

    def extend(self, values) -> None:
        for x in values:
            self.add(x)

    def merge(self, other: "HdrSeries") -> None:
        self.h.add(other.h)
        self.sum += other.sum

    def summary(self) -> Summary:
        n = self.h.get_total_count()
        if n == 0:
            return EMPTY
        q = {p: self.h.get_value_at_percentile(p) / 1e6 for p in PERCENTILES}
        return Summary(n, self.sum / n, q[50], q[90], q[95], q[99],
                       self.h.get_max_value() / 1e6, self.h.get_min_value() / 1e6)

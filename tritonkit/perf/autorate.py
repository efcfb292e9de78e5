"""`--rate auto`: the highest constant rate that meets the SLO, without guessing a range.

1. A short closed-loop probe for the throughput ceiling: users 4, 16, 64, 256 (each a stable sweep
   step) until throughput grows less than 10% from one to the next. No open-loop rate above the
   ceiling can be served, so it bounds the search.
2. Open-loop steps that bisect: first at the ceiling (met: done), then between the highest rate
   that met the SLO and the lowest that missed it, until they are within 5% of each other.
The highest open-loop rate that met the SLO is the run's "max RPS at SLO" (summary.best_step).
A client-limited step counts as missed: its numbers are the client's, not the server's.
"""

from __future__ import annotations

from tritonkit.errors import UsageError
from tritonkit.perf.schedules import Load

PROBE_USERS = (4, 16, 64, 256)
PROBE_GAIN = 0.10
PRECISION = 0.05
MAX_STEPS = 14


def check(bounds: list) -> None:
    if not bounds:
        raise UsageError("--rate auto needs an SLO to search for", "pass --slo, e.g. 'e2e:p90<=1s' (or a preset with one)")


class AutoRate:
    """Decides each next load from the steps measured so far; None when the search is done."""

    def __init__(self, probe_users=PROBE_USERS, precision: float = PRECISION, kind: str = "rate"):
        self.probe = list(probe_users)
        self.precision, self.kind = precision, kind
        self.ceiling = 0.0
        self.lo, self.hi = 0.0, 0.0
        self.bisecting = False

    def next(self, steps: list) -> Load | None:
        if len(steps) >= MAX_STEPS:
            return None
        last = steps[-1] if steps else None
        if not self.bisecting:
            if last is not None:
                grew = last.rps > self.ceiling * (1 + PROBE_GAIN)
                self.ceiling = max(self.ceiling, last.rps)
                if not grew or not self.probe:
                    if self.ceiling <= 0:
                        return None  # nothing was served: nothing to search
                    self.bisecting, self.hi = True, self.ceiling * (1 + self.precision)
                    return self._load(self.ceiling)
            return Load("concurrency", self.probe.pop(0))
        if last.slo_met is True and not last.client_limited:
            self.lo = max(self.lo, last.value)
        else:
            self.hi = min(self.hi, last.value)
        if self.hi - self.lo <= self.precision * self.hi:
            return None
        return self._load((self.lo + self.hi) / 2 if self.lo > 0 else self.hi / 2)

    def _load(self, rate: float) -> Load:
        return Load(self.kind, float(f"{rate:.4g}"))

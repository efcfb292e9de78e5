"""When a sweep step has been measured long enough (perf_analyzer's rule, made explicit).

The measured part of a step is cut into windows of `window_s`. For each window: completed
requests per second and the mean end-to-end latency of the requests completed in it. The step is
stable once the last `n` windows agree within `tolerance`: for both numbers, (max - min) / mean
<= tolerance (default: 3 windows within 10%). A step that never settles ends at its time cap and
is marked unstable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    completed: int
    throughput: float  # completed requests / s
    mean_e2e: float | None

    def to_dict(self, t0: float) -> dict:
        d = asdict(self)
        d["start"], d["end"] = round(self.start - t0, 6), round(self.end - t0, 6)
        return d


def window(records, start: float, end: float) -> Window:
    """Stats of the successful requests that completed in [start, end)."""
    done = [r for r in records if r.ok and start <= r.done < end]
    e2e = [r.e2e for r in done]
    return Window(start, end, len(done), len(done) / (end - start), sum(e2e) / len(e2e) if e2e else None)


def _agree(values: list[float], tolerance: float) -> bool:
    mean = sum(values) / len(values)
    return mean > 0 and (max(values) - min(values)) / mean <= tolerance


def stable(windows: list[Window], n: int = 3, tolerance: float = 0.10) -> bool:
    if len(windows) < n:
        return False
    last = windows[-n:]
    if any(w.completed == 0 or w.mean_e2e is None for w in last):
        return False
    return _agree([w.throughput for w in last], tolerance) and _agree([w.mean_e2e for w in last], tolerance)

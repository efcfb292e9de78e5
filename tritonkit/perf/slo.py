"""Latency service-level objectives: parse, check a step, check one request (goodput).

Syntax: comma-separated bounds `metric:stat<=value[unit]`, e.g. `e2e:p90<=1s,ttft:p99<=500ms`.
metric: ttft, itl, tpot, e2e. stat: mean, p50, p90, p95, p99, max. unit: s (default) or ms.
A step meets the SLO when every bound holds on its distribution. A request is *good* when its own
values are within every bound (for itl: its largest gap), and goodput counts good requests per s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonkit.errors import UsageError

METRICS = ("ttft", "itl", "tpot", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99", "max")
_RE = re.compile(r"^\s*(\w+)\s*:\s*(\w+)\s*<=?\s*([0-9.]+)\s*(ms|s)?\s*$")


@dataclass(frozen=True)
class Bound:
    metric: str
    stat: str
    limit_s: float

    def __str__(self) -> str:
        return f"{self.metric} {self.stat} <= {_fmt(self.limit_s)}"

    def holds(self, summaries: dict) -> bool:
        value = summaries[self.metric].get(self.stat)
        return value is not None and value <= self.limit_s

    def request_ok(self, record) -> bool:
        if self.metric == "itl":
            gaps = record.itl
            value = max(gaps) if gaps else 0.0
        else:
            value = getattr(record, self.metric)
        return value is not None and value <= self.limit_s


def _fmt(s: float) -> str:
    return f"{s * 1000:g} ms" if s < 1 else f"{s:g} s"


def parse(text: str | None) -> list[Bound]:
    if not text:
        return []
    bounds = []
    for part in text.split(","):
        m = _RE.match(part)
        if not m:
            raise UsageError(f"cannot read SLO {part.strip()!r}", "write e.g. e2e:p90<=1s,ttft:p99<=500ms")
        metric, stat, value, unit = m.group(1).lower(), m.group(2).lower(), float(m.group(3)), m.group(4)
        if metric not in METRICS:
            raise UsageError(f"unknown SLO metric {metric!r}", f"use one of: {', '.join(METRICS)}")
        if stat not in STATS:
            raise UsageError(f"unknown SLO statistic {stat!r}", f"use one of: {', '.join(STATS)}")
        if value <= 0:
            raise UsageError(f"SLO bound must be positive: {part.strip()!r}")
        bounds.append(Bound(metric, stat, value / 1000 if unit == "ms" else value))
    return bounds


def describe(bounds: list[Bound]) -> str:
    return ", ".join(str(b) for b in bounds) if bounds else "none"


def step_meets(bounds: list[Bound], summaries: dict) -> bool | None:
    return None if not bounds else all(b.holds(summaries) for b in bounds)


def request_good(bounds: list[Bound], record) -> bool:
    return record.ok and all(b.request_ok(record) for b in bounds)

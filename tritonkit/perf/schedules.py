"""Load shapes: they decide *when* requests start, nothing else.

An open-loop shape yields intended send offsets (seconds from the start of a step); the runner
sends at those times whatever the server does. A closed-loop shape is a number of users, each
sending its next request when its last one finished. A sweep is a list of shapes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

from tritonkit.errors import UsageError

KINDS = ("rate", "poisson", "concurrency")


@dataclass(frozen=True)
class Load:
    kind: str  # "rate" (constant), "poisson" (exponential gaps) or "concurrency" (closed loop)
    value: float  # requests/s for open loop; users for closed loop

    @property
    def open_loop(self) -> bool:
        return self.kind != "concurrency"

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            return f"{int(self.value)} users"
        return f"{self.value:g} req/s" + (" (Poisson)" if self.kind == "poisson" else "")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown load kind {self.kind!r}", f"use one of: {', '.join(KINDS)}")
        if not (self.value > 0 and math.isfinite(self.value)):
            what = "concurrency" if self.kind == "concurrency" else "rate"
            raise UsageError(f"{what} must be a positive number, got {self.value:g}")
        if self.kind == "concurrency" and self.value != int(self.value):
            raise UsageError(f"concurrency must be a whole number of users, got {self.value:g}")


def offsets(load: Load, duration_s: float | None = None, count: int | None = None,
            seed: int | None = 0) -> Iterator[float]:
    """Intended send offsets for an open-loop load, until `duration_s` or `count` (whichever first).

    Constant rate: i / rate, so a run of d seconds sends ceil(rate * d) requests.
    Poisson: cumulative exponential gaps of mean 1 / rate (seeded, so runs are repeatable).
    """
    if not load.open_loop:
        raise ValueError("a closed-loop load has no schedule")
    if duration_s is None and count is None:
        raise ValueError("give a duration or a count")
    rng = random.Random(seed)
    i, t = 0, 0.0
    while (count is None or i < count) and (duration_s is None or t < duration_s):
        yield t
        i += 1
        t = i / load.value if load.kind == "rate" else t + rng.expovariate(load.value)


def parse_values(text: str) -> list[float]:
    """'1,2,4' or a range 'start:stop:step' (inclusive of stop) or 'start:stop' (step 1)."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1.0
            if step <= 0 or stop < start:
                raise UsageError(f"bad range {text!r}", "use start:stop:step with step > 0 and stop >= start")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 9) for i in range(n)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"cannot read {text!r} as a list or range of numbers",
                         "write e.g. 1,2,4 or 2:10:2") from None
    if not values:
        raise UsageError(f"{text!r} holds no values")
    return values


def sweep(kind: str, text: str) -> list[Load]:
    return [Load(kind, v) for v in parse_values(text)]

"""How late a generator's event loop wakes up: the direct measure of an event-loop stall.

A task sleeps PERIOD_S again and again; each wake-up's overshoot is time in which nothing else in
that loop could run (a blocking call, a GC pause, a slow callback, or no CPU for the process). A
transport that stamps a response's arrival on the loop (grpc.aio, SSE) would hide such a stall in
the latencies; a closed-loop user sent late shows it as send lag. This shows it either way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

PERIOD_S = 0.01  # 100 wake-ups a second: a few microseconds each
LATE_S = 0.005  # a wake-up later than this counts as late (the verdict's send-lag limit too)


@dataclass
class LoopLag:
    """One step's wake-ups of one loop, or of several merged (counts add, the worst is kept)."""

    wakes: int = 0
    late: int = 0  # wake-ups more than LATE_S late
    max_s: float = 0.0
    stalled_s: float = 0.0  # total lateness beyond LATE_S: time the loop was not there

    def merge(self, other: "LoopLag") -> "LoopLag":
        return LoopLag(self.wakes + other.wakes, self.late + other.late, max(self.max_s, other.max_s),
                       self.stalled_s + other.stalled_s)

    def to_dict(self) -> dict:
        return {"wakes": self.wakes, "late": self.late, "max_s": round(self.max_s, 6),
                "stalled_s": round(self.stalled_s, 6)}


class LoopWatch:
    """Started inside a running loop; stop() ends the watch and returns what it saw."""

    def __init__(self):
        self.lag = LoopLag()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        lag, clock = self.lag, time.perf_counter
        while True:
            t = clock()
            await asyncio.sleep(PERIOD_S)
            late = clock() - t - PERIOD_S
            lag.wakes += 1
            if late > lag.max_s:
                lag.max_s = late
            if late > LATE_S:
                lag.late += 1
                lag.stalled_s += late - LATE_S

    def stop(self) -> LoopLag:
        self._task.cancel()
        return self.lag

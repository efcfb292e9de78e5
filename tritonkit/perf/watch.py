"""Everything perf watches about a run besides latency: failures by kind (faults), the server's
readiness (readiness), and the incremental results file (journal). One object per run, fed by
the runner's per-request hook; its findings go into the summary document."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tritonkit.perf import readiness
from tritonkit.perf.faults import FaultLog
from tritonkit.perf.journal import Journal


class RunWatch:
    def __init__(self, out_dir: Path, on_error: str, probe_urls: list[str], halt, header: dict,
                 probe_every_s: float = 0.5):
        self.t0 = time.perf_counter()
        self.faults = FaultLog(on_error, halt)
        self.journal = Journal(out_dir, on_error=lambda err: halt("failed", err.message))
        self.journal.write({"type": "run", "started_at": time.time(), **header})
        self.poller = readiness.ReadinessPoller(
            probe_urls, every_s=probe_every_s,
            on_change=lambda c: self.journal.write({"type": "readiness", **readiness.change_dict(c, self.t0)}))
        self._task: asyncio.Task | None = None

    def record(self, step: str, rec) -> None:
        """The runner's hook: one finished request."""
        self.faults.observe(rec)
        self.journal.write({"type": "request", "step": step, **rec.to_dict(self.t0)})

    def start(self) -> None:
        if self.poller.urls:
            self._task = asyncio.create_task(self.poller.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def findings(self, t0: float, counts: dict) -> dict:
        """For the summary document (times from the run's t0); counts: the runner's sent/done/ok/failed."""
        end = time.perf_counter()
        found = {"faults": self.faults.to_dict(t0), "readiness": self.poller.to_dict(t0, end),
                 "results_file": str(self.journal.path), "results_lines": self.journal.lines}
        self.journal.write({"type": "end", "counts": dict(counts), **found})
        self.journal.close()
        if self.journal.error is not None:
            found["results_error"] = {"message": self.journal.error.message, "hint": self.journal.error.hint}
        return found

"""Was the server ready during the run? A poller asks every ~0.5 s and keeps the intervals when not.

Triton: the server's /v2/health/ready and the model's /v2/models/<model>/ready must both answer
200; vLLM's OpenAI server: /health (503 once its engine is dead). Only changes are kept (constant
memory on a soak); the report shows each not-ready interval, its length and what the probe saw.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Callable
from urllib.parse import urlparse

from tritonkit.runtime.health import http_status


def probe_urls(protocol: str, url: str | None, model: str, http_address: str | None = None) -> list[str]:
    """The URLs that must all answer 200 while the server can serve `model`.
    http_address: Triton's HTTP host:port where known (a tritonkit-started server's record)."""
    if protocol == "openai":
        base = (url or "http://127.0.0.1:8000").rstrip("/").removesuffix("/v1")
        return [(base if "://" in base else f"http://{base}") + "/health"]
    if http_address is None:
        parsed = urlparse("//" + (url or "").split("://")[-1])
        host, port = parsed.hostname or "127.0.0.1", parsed.port
        if protocol == "http":
            http_address = f"{host}:{port or 8000}"
        else:  # Triton's default layout: HTTP port = gRPC port - 1
            http_address = f"{host}:{(port - 1) if port else 8000}"
    return [f"http://{http_address}/v2/health/ready", f"http://{http_address}/v2/models/{model}/ready"]


@dataclass
class Change:
    t: float  # perf_counter of the first sample in the new state
    ready: bool
    detail: str  # what the probe saw, e.g. "/v2/models/tiny/ready: HTTP 400"


class ReadinessPoller:
    def __init__(self, urls: list[str], every_s: float = 0.5, timeout_s: float = 1.0,
                 on_change: Callable[[Change], None] | None = None,
                 status: Callable[[str, float], int | None] = lambda url, timeout: http_status(url, timeout)):
        self.urls, self.every_s, self.timeout_s = urls, every_s, timeout_s
        self.on_change = on_change or (lambda change: None)
        self.status = status
        self.changes: list[Change] = []
        self.samples = 0
        self.not_ready_samples = 0

    def probe(self) -> tuple[bool, str]:
        for url in self.urls:
            code = self.status(url, self.timeout_s)
            if code != 200:
                path = urlparse(url).path
                return False, f"{path}: " + ("no answer" if code is None else f"HTTP {code}")
        return True, "ready"

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            t = time.perf_counter()
            ready, detail = await asyncio.to_thread(self.probe)
            self.record(t, ready, detail)
            await asyncio.sleep(max(0.0, self.every_s - (time.perf_counter() - t)))

    def record(self, t: float, ready: bool, detail: str) -> None:
        self.samples += 1
        self.not_ready_samples += not ready
        last = self.changes[-1] if self.changes else None
        if last is None or last.ready != ready or (not ready and last.detail != detail):
            change = Change(t, ready, detail)
            self.changes.append(change)
            self.on_change(change)

    def intervals(self, t0: float, end: float) -> list[dict]:
        """The not-ready intervals, seconds from t0; one still open at `end` is marked ongoing."""
        out: list[dict] = []
        for i, c in enumerate(self.changes):
            if c.ready:
                continue
            nxt = self.changes[i + 1].t if i + 1 < len(self.changes) else None
            if out and out[-1]["end_s"] == round(c.t - t0, 3):  # same outage, new symptom
                out[-1]["detail"] += f"; then {c.detail}"
                out[-1]["end_s"] = round((nxt or end) - t0, 3)
                out[-1]["ongoing"] = nxt is None
            else:
                out.append({"start_s": round(c.t - t0, 3), "end_s": round((nxt or end) - t0, 3),
                            "detail": c.detail, "ongoing": nxt is None})
            out[-1]["duration_s"] = round(out[-1]["end_s"] - out[-1]["start_s"], 3)
        return out

    def to_dict(self, t0: float, end: float) -> dict:
        spans = self.intervals(t0, end)
        return {"probes": self.urls, "every_s": self.every_s, "samples": self.samples,
                "not_ready_samples": self.not_ready_samples, "not_ready": spans,
                "not_ready_s": round(sum(s["duration_s"] for s in spans), 3)}


def change_dict(change: Change, t0: float) -> dict:
    d = asdict(change)
    d["t"] = round(change.t - t0, 3)
    return d


def describe(readiness: dict | None) -> list[str]:
    """Report lines: each interval when the server was not ready."""
    if not readiness:
        return []
    if not readiness["samples"]:
        return ["readiness: not sampled"]
    spans = readiness["not_ready"]
    if not spans:
        return [f"server ready throughout ({readiness['samples']} probes every {readiness['every_s']:g} s)"]
    lines = [f"server NOT READY for {readiness['not_ready_s']:.1f} s in {len(spans)} interval(s) "
             f"({readiness['samples']} probes every {readiness['every_s']:g} s)"]
    for s in spans:
        until = "the end of the run (still not ready)" if s["ongoing"] else f"{s['end_s']:.1f} s"
        lines.append(f"not ready from {s['start_s']:.1f} s to {until} ({s['duration_s']:.1f} s): {s['detail']}")
    return lines

"""What a Triton server did during one run of a load generator, for perf/bench_vs_perf_analyzer.py.

- Per-thread CPU of its whole process tree (utime + stime from /proc) before and after the run,
  and sampled every 0.5 s while it lasts: the busiest threads of the server (tritonserver's gRPC
  and backend threads, the Python backend stub and its loop thread, the vLLM engine process and
  its engine core). A thread near 100 % of one core is the server's bottleneck, and the same load
  from either generator should show the same threads.
- Triton's own queue and execute time per request (nv_inference_* metrics), and the requests inside
  the vLLM backend (tritonkit's vllm:num_requests_running, sampled): users a generator keeps in flight
  but not there are in Triton's frontend or the generator itself.
- The shape of the load: how clumped the sends and finishes are, and the requests kept in flight.
- How vLLM batched it: engine steps per second and tokens per step (vllm:iteration_tokens_total),
  and the share of steps over 512 tokens, which run without a CUDA graph at vLLM's defaults.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from pathlib import Path

from soak import server_pids  # the server's group and every descendant of it (soak puts tritonkit on the path)
from tritonkit.perf import server_metrics

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _stat_fields(text: str) -> list[str]:
    return text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def server_pid(grpc_port: int) -> int | None:
    """The tritonserver listening on this gRPC port (its command line names the port)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        raw = _read(f"/proc/{pid}/cmdline")
        if raw and "tritonserver" in raw and f"--grpc-port={grpc_port}\0" in raw:
            return int(pid)
    return None


def snapshot(root: int | None) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> ("process/thread" names, CPU seconds so far) for every thread under root."""
    if root is None:
        return {}
    seen = {}
    for pid in sorted(server_pids(root)):
        proc = (_read(f"/proc/{pid}/comm") or "?").strip()
        for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
            stat = _read(f"/proc/{pid}/task/{tid}/stat")
            if stat:
                fields = _stat_fields(stat)
                name = (_read(f"/proc/{pid}/task/{tid}/comm") or "?").strip()
                seen[(pid, int(tid))] = (f"{proc}/{name}", (int(fields[11]) + int(fields[12])) / TICKS_PER_S)
    return seen


def busiest(before: dict, after: dict, seconds: float, requests: float, n: int = 6) -> str:
    """The tree's CPU and its n busiest threads over the run: % of one core, ms per request."""
    used = sorted(((after[k][1] - before.get(k, ("", 0.0))[1], after[k][0]) for k in after), reverse=True)
    top = ", ".join(f"{name} {100 * u / seconds:.0f}% {1000 * u / requests:.2f} ms" for u, name in used[:n] if u > 0)
    return f"server CPU {100 * sum(u for u, _ in used) / seconds:.0f}% of a core; busiest threads (% of a core, ms per request): {top}"


class Sampler:
    """Snapshots every interval_s on a thread of its own, while a run lasts: a thread's average
    over a whole run hides a bottleneck that is saturated only while the load is on."""

    def __init__(self, root: int | None, interval_s: float = 0.5, metrics_url: str | None = None):
        self.root, self.interval_s, self.samples = root, interval_s, []
        self.metrics_url, self.in_backend = metrics_url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), snapshot(self.root)))
            if self.metrics_url:
                m = server_metrics.scrape(self.metrics_url) or {}
                self.in_backend.append(sum(v for k, v in m.items() if k.startswith("vllm:num_requests_running")))
            self._stop.wait(self.interval_s)

    def backend_load(self) -> str:
        """Requests inside the backend while the load was on: the middle 60 % of the samples."""
        n = len(self.in_backend)
        mid = sorted(self.in_backend[int(0.2 * n):int(0.8 * n)])
        if len(mid) < 3:
            return "-"
        return f"{statistics.fmean(mid):.0f} (p10-p90 {mid[len(mid) // 10]:.0f}-{mid[9 * len(mid) // 10]:.0f})"

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, n: int = 5) -> str:
        """Each thread's 90th-percentile % of one core over the intervals; the n highest."""
        by_thread: dict[tuple[int, int], list[float]] = {}
        names = {}
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:]):
            for key, (name, cpu) in b.items():
                if key in a:
                    by_thread.setdefault(key, []).append(100 * (cpu - a[key][1]) / (t1 - t0))
                    names[key] = name + ("(main)" if key[0] == key[1] else "")
        p90 = sorted(((sorted(v)[int(0.9 * (len(v) - 1))], names[k]) for k, v in by_thread.items()), reverse=True)
        return ", ".join(f"{name} {pct:.0f}%" for pct, name in p90[:n])


def step_buckets(metrics_url: str | None) -> dict[str, float]:
    """vllm:iteration_tokens_total's cumulative buckets (le -> steps) and its _sum, summed over models."""
    got: dict[str, float] = {}
    for key, value in (server_metrics.scrape(metrics_url, buckets=True) or {}).items():
        name, _, labels = key.partition("{")
        if name == "vllm:iteration_tokens_total_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            got[le.group(1)] = got.get(le.group(1), 0.0) + value
        elif name == "vllm:iteration_tokens_total_sum":
            got["sum"] = got.get("sum", 0.0) + value
    return got


def steps(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """Engine steps over a run: per second, mean tokens, and the share over 512 tokens."""
    count = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if count <= 0:
        return "-"
    small = after.get("512", 0.0) - before.get("512", 0.0)
    tokens = after.get("sum", 0.0) - before.get("sum", 0.0)
    return (f"{count / seconds:.0f}/s, {tokens / count:.0f} tokens each, "
            f"{100 * (count - small) / count:.0f}% over 512 tokens")


def settle(metrics_url: str | None, timeout_s: float = 30.0) -> float:
    """Wait until the server holds no request (vLLM's running gauge at 0), so that no run starts
    with its predecessor's tail; seconds waited."""
    t0 = time.perf_counter()
    while metrics_url and time.perf_counter() - t0 < timeout_s:
        m = server_metrics.scrape(metrics_url) or {}
        if not any(v for k, v in m.items() if k.startswith("vllm:num_requests_running")):
            break
        time.sleep(0.2)
    return time.perf_counter() - t0


def probed(run, url: str, metrics_url: str | None):
    """run() and, where the server runs on this machine (--url on localhost), where its CPU went
    meanwhile: per thread, in ms per request Triton finished, and Triton's own queue and execute
    times per request (nv_inference_*)."""
    waited = settle(metrics_url)
    pid = server_pid(int(url.rsplit(":", 1)[1]))
    before, m0, t0 = snapshot(pid), server_metrics.scrape(metrics_url), time.perf_counter()
    steps0 = step_buckets(metrics_url)
    with Sampler(pid, metrics_url=metrics_url) as sampler:
        result = run()
    seconds = time.perf_counter() - t0
    if pid is None or m0 is None:
        return {**result, "server": ""}
    after = snapshot(pid)
    delta = server_metrics.diff(m0, server_metrics.scrape_settled(metrics_url))["delta"]
    engine_steps = steps(steps0, step_buckets(metrics_url), seconds)
    total = lambda family: server_metrics.family_total(delta, family)  # noqa: E731
    done = total("nv_inference_request_success") or 1
    return {**result, "server": (
        f"\n      server: {done:.0f} req, Triton queue {total('nv_inference_queue_duration_us') / done / 1000:.2f} ms/req, "
        f"execute {total('nv_inference_compute_infer_duration_us') / done / 1000:.2f} ms/req, "
        f"{done / (total('nv_inference_exec_count') or 1):.2f} req/execute, "
        f"request duration {total('nv_inference_request_duration_us') / done / 1000:.1f} ms/req; "
        f"requests inside the vLLM backend {sampler.backend_load()}; "
        f"\n      {busiest(before, after, seconds, done)}"
        f"\n      p90 over 0.5 s intervals: {sampler.peaks()}\n      sends and finishes per 10 ms, variance/mean: "
        f"{result.get('burst', '-')}; waited {waited:.1f} s for an idle server before it"
        f"\n      vLLM engine steps: {engine_steps}")}


def dispersion(times_s: list[float], bin_s: float = 0.01) -> str:
    """Variance / mean of the events per 10 ms: about 1 for independent (Poisson) events, far above
    for waves (users of a closed loop sending together after a vLLM step finished their requests)."""
    if len(times_s) < 100:
        return "-"
    t0 = min(times_s)
    bins = [0] * (int((max(times_s) - t0) / bin_s) + 1)
    for t in times_s:
        bins[int((t - t0) / bin_s)] += 1
    return f"{statistics.pvariance(bins) / statistics.fmean(bins):.1f}"


def in_flight(spans: list[tuple[float, float]]) -> str:
    """Mean requests in flight (sent, not yet finished) over the middle 60 % of the run: the users
    a closed loop really keeps at the server (fewer than configured where a user waits between its
    requests)."""
    if len(spans) < 100:
        return "-"
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    points = [start + (end - start) * (0.2 + 0.6 * i / 199) for i in range(200)]
    return f"{statistics.fmean(sum(1 for s, e in spans if s <= t < e) for t in points):.1f}"


def load_shape(spans: list[tuple[float, float]]) -> str:
    """A run's (sent, finished) times as: how clumped the sends and finishes are, and the requests
    it kept in flight."""
    return (f"sends {dispersion([s for s, _ in spans])}, finishes {dispersion([e for _, e in spans])}; "
            f"in flight {in_flight(spans)}")

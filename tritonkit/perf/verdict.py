"""Was the load generator, not the server, the limit of a step? And if so, why -- with numbers.

Evidence gathered per step (all cheap, from /proc on Linux):
  - the generator's CPU time (every worker process, all threads), as a share of one core per worker;
  - the generator's run-queue wait (/proc/<pid>/task/*/schedstat): time its threads were ready to
    run but had no CPU -- direct evidence of CPU starvation;
  - the whole machine's CPU busy share (/proc/stat), to tell "the server took the cores" apart;
  - send lag (intended -> actual send; closed loop: intended = the user's previous answer + think
    time) and how late each worker's event loop woke up (loopwatch), the share of an open-loop
    schedule started, and for closed loop the users inside vLLM by Little's law on vLLM's own
    latency (its metrics) against the users configured: reported, never judged. vLLM's latency
    starts when its engine takes the request and ends at the last output, so it leaves out the
    server's front end: behind Triton, Triton's frontend and backend path; in vLLM's own server,
    the HTTP handling and SSE writes of its one API process. Users "outside vLLM" may
    be there as well as in the client (on an H100 at 128 users, 29 of them sat outside vLLM's
    engine while the client kept its schedule, its loop never late and 5 % of a core busy).
A few late requests (fewer than MIN_LATE) are isolated hiccups: reported in the note, not judged.
The cause named: the generator's own CPU (a worker's loop is saturated), CPU starvation (it waited
for a CPU; "machine saturated" when every core was busy), or an event-loop stall (late while
neither busy nor waiting: blocking calls, GC pauses, a slow callback).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tritonkit.perf.loopwatch import LATE_S, LoopLag
from tritonkit.perf.stats import HDR

LAG_LIMIT_S = 0.005  # p99 send lag above this: the client, not the server, set the pace
BUSY_LOOP = 0.85  # a worker using this share of one core is at its ceiling
STARVED = 0.10  # run-queue wait above this share of the period (per worker): starved of CPU
MACHINE_FULL = 0.90
LITTLE_SHORTFALL = 0.80  # users inside the server below this share of those configured
MIN_LATE = 3  # late sends or late loop wake-ups needed (beyond the 1 % that p99 allows) to judge
LOOP_STALLED = 0.05  # an event loop away (beyond 5 ms at a time) this share of the step: judged


def _schedstat_wait(pid: int | str = "self") -> float:
    """Seconds the threads of a process spent waiting for a CPU (0 where /proc does not tell)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return 0.0
    return total / 1e9


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


@dataclass
class Sample:
    """Counters at one moment, in this process (a worker's own)."""

    cpu_s: float
    wait_s: float

    @classmethod
    def now(cls) -> "Sample":
        return cls(time.process_time(), _schedstat_wait())


@dataclass
class ClientUsage:
    """The generator's use of the machine over one step (summed over workers)."""

    workers: int
    cpu_s: float
    wait_s: float
    max_worker_cpu_s: float
    max_worker_wait_s: float
    machine_busy: float | None  # share of all cores busy (server, generator, anything else)
    cores: int
    loop: LoopLag | None = None  # the workers' event-loop wake-ups, merged

    def to_dict(self) -> dict:
        return {"workers": self.workers, "cpu_s": round(self.cpu_s, 4), "cpu_wait_s": round(self.wait_s, 4),
                "max_worker_cpu_s": round(self.max_worker_cpu_s, 4),
                "max_worker_cpu_wait_s": round(self.max_worker_wait_s, 4),
                "machine_busy": None if self.machine_busy is None else round(self.machine_busy, 3),
                "cores": self.cores, "event_loop": None if self.loop is None else self.loop.to_dict()}


class MachineClock:
    def __init__(self):
        self.busy0, self.total0 = _machine_busy()

    def busy_share(self) -> float | None:
        busy, total = _machine_busy()
        return (busy - self.busy0) / (total - self.total0) if total > self.total0 else None


def server_latency_s(server_metrics: dict) -> tuple[float | None, bool]:
    """vLLM's own mean request latency over the step (its e2e histogram), and whether it ran behind
    Triton (nv_inference_* present). Either way it leaves out the server's front end (see the module
    docstring). Triton's nv_inference_request_duration is no help: for a decoupled model it can end
    when execute() returns, long before the last response."""
    if not server_metrics:
        return None, False
    behind_triton = any(k.startswith("nv_inference_") for k in server_metrics.get("delta", {}))
    for key, value in server_metrics.get("histogram_means", {}).items():
        if key.startswith("vllm:e2e_request_latency_seconds"):
            return value, behind_triton
    return None, behind_triton


def _late_sends(result) -> int | None:
    """Requests sent more than LAG_LIMIT_S late (None where only a histogram was kept: soak)."""
    if getattr(result, "percentile_method", None) == HDR or not getattr(result, "samples", None):
        return None
    return sum(1 for r in result.samples if r.send_lag is not None and r.send_lag > LAG_LIMIT_S)


def judge(result, load, usage: ClientUsage | None) -> None:
    """Set result.client_limited and result.client_note (with the cause and its numbers)."""
    period = result.end - result.start
    lag = result.summaries["send_lag"].p99
    lag_ms = (lag or 0.0) * 1000
    evidence, remarks, limited = [], [], False
    if lag is not None and lag > LAG_LIMIT_S:
        late = _late_sends(result)
        if late is None or late >= MIN_LATE:
            limited = True
            evidence.append(f"p99 send lag {lag_ms:.1f} ms" + ("" if late is None else f" ({late} sent late)"))
        else:
            remarks.append(f"{late} request(s) sent over {LAG_LIMIT_S * 1000:.0f} ms late (isolated, not judged)")
    loop = usage.loop if usage else None
    if loop and loop.late >= MIN_LATE:
        if period > 0 and loop.stalled_s >= LOOP_STALLED * period:
            limited = True
            evidence.append(_loop_text(loop))
        else:
            remarks.append(_loop_text(loop) + " (brief, not judged)")
    if load.open_loop:
        if result.send_rate < 0.95 * load.value and result.sent >= 20:
            limited = True
            evidence.append(f"{result.send_rate:.1f} of {load.value:g} req/s started")
    else:
        server_lat, behind_triton = server_latency_s(result.server_metrics)
        if server_lat is not None and result.rps > 0:
            inside = result.rps * server_lat  # Little's law on vLLM's own latency
            outside = (result.summaries["e2e"].mean or 0.0) - server_lat  # per request, outside it
            if inside < LITTLE_SHORTFALL * load.value and outside > LAG_LIMIT_S and result.ok >= 20:
                front = "Triton's path" if behind_triton else "the server's front end"
                remarks.append(f"{inside:.0f} of {int(load.value)} users inside vLLM (Little's law: {result.rps:.1f} "
                               f"req/s x its own latency {server_lat * 1000:.1f} ms); the others are in {front} "
                               f"or the client")
    use = _usage_text(usage, period)
    more = "".join(f"; {r}" for r in remarks)
    if not limited:
        result.client_note = f"schedule kept (p99 send lag {lag_ms:.2f} ms; {use}){more}"
        return
    result.client_limited = True
    result.client_note = (f"CLIENT-LIMITED: {', '.join(evidence)}; {use}. Cause: {_cause(usage, period)}. "
                          f"Latencies include the client's delay; run more --workers or the client elsewhere "
                          f"to see the server's own limit{more}.")


def _loop_text(loop: LoopLag) -> str:
    return (f"event loop woke over {LATE_S * 1000:.0f} ms late {loop.late} of {loop.wakes} times "
            f"(worst {loop.max_s * 1000:.1f} ms, {loop.stalled_s:.2f} s stalled in all)")


def _usage_text(usage: ClientUsage | None, period: float) -> str:
    if usage is None or period <= 0:
        return "client CPU unknown"
    text = (f"client CPU {usage.cpu_s / period:.0%} of one core over {usage.workers} worker(s) "
            f"(busiest {usage.max_worker_cpu_s / period:.0%}); its threads waited {usage.wait_s:.2f} s for a CPU "
            f"in {period:.1f} s")
    if usage.machine_busy is not None:
        text += f", machine {usage.machine_busy:.0%} busy on {usage.cores} cores"
    return text


def _cause(usage: ClientUsage | None, period: float) -> str:
    if usage is None or period <= 0:
        return "unknown (no CPU figures on this platform)"
    busiest = usage.max_worker_cpu_s / period
    waited = usage.max_worker_wait_s / period
    machine = usage.machine_busy
    if busiest >= BUSY_LOOP:
        return (f"the generator's own CPU: a worker used {busiest:.0%} of its core (one event loop is at "
                f"its ceiling; add --workers)")
    if waited >= STARVED:
        if machine is not None and machine >= MACHINE_FULL:
            return (f"CPU starvation: the machine is saturated ({machine:.0%} of {usage.cores} cores busy, "
                    f"e.g. by the server) and a worker's threads waited {waited:.2f} s per second for a CPU")
        return (f"CPU starvation: a worker's threads waited {waited:.2f} s per second for a CPU while the machine was "
                f"{'?' if machine is None else f'{machine:.0%}'} busy (pinned to too few cores, or a CPU quota)")
    return (f"an event-loop stall: the generator was late while using {busiest:.0%} of a core and waiting "
            f"{waited:.2f} s per second for a CPU (blocking calls, GC pauses or slow callbacks in the loop)")

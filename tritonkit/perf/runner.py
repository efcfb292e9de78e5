"""Drive a server: one step per load, requests in asyncio tasks, results as StepResults.

The runner knows loads (from schedules), a workload and a StreamClient, nothing about protocols.
It stops early and keeps what it measured when the server dies or stops answering (a watchdog
probes it every second), when the user presses Ctrl-C, or when a sweep misses its SLO or its
throughput stops growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from tritonkit.client import RequestError, StreamClient, Unreachable, error_kind
from tritonkit.perf import server_metrics, stability, verdict
from tritonkit.perf.aggregate import Aggregator, StepResult
from tritonkit.perf.autorate import AutoRate
from tritonkit.perf.loopwatch import LoopLag, LoopWatch
from tritonkit.perf.records import RequestRecord
from tritonkit.perf.schedules import Load, offsets
from tritonkit.perf.workload import Workload

CLIENT_LAG_LIMIT_S = verdict.LAG_LIMIT_S


@dataclass
class RunSpec:
    loads: list[Load]
    duration_s: float | None = None  # measured period of a single run (after warm-up)
    requests: int | None = None  # or a request count (single run)
    warmup_s: float = 0.0
    sweep: bool = False  # steps end when stable (or at max_step_s) instead of after duration_s
    window_s: float = 5.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_step_s: float = 60.0
    timeout_s: float = 120.0  # per request
    slo: list = field(default_factory=list)
    stop_at_slo: bool = True
    stop_on_plateau: bool = True
    plateau_gain: float = 0.05
    soak: bool = False  # constant memory: histograms, not every sample
    lora: str | None = None
    metrics_url: str | None = None
    seed: int = 0
    probe_every_s: float = 1.0
    probe_timeout_s: float = 2.0
    auto_rate: bool = False  # --rate auto: loads chosen as the run goes (tritonkit.perf.autorate)
    workers: int = 1  # generator processes (tritonkit.perf.workers); 1: this process, as always
    think_s: float = 0.0  # closed loop: pause between a user's answer and its next request


@dataclass(frozen=True)
class Share:
    """Which part of each step this generator sends: worker `index` of `of`. Open loop: schedule
    entries index, index + of, ... (so the merged schedule is exactly the requested one); closed
    loop: users index, index + of, ... and request numbers index + of * j."""

    index: int = 0
    of: int = 1

    def users(self, total: int) -> int:
        return len(range(self.index, total, self.of))

    def budget(self, total: int) -> int:
        return total // self.of + (self.index < total % self.of)


@dataclass
class RunResult:
    steps: list[StepResult]
    status: str  # "ok", "failed" (server died / stopped answering) or "interrupted" (Ctrl-C)
    message: str = ""
    t0: float = 0.0
    started_at: float = 0.0  # wall clock (time.time) at t0
    stop_reason: str = ""  # why a sweep ended early


class Stop(Exception):
    pass


@contextlib.contextmanager
def quiet_gc():
    """What exists now is never garbage: keep the collector off it, and collect young objects less
    often (records are acyclic; full collections over a growing list of them stalled the loop).
    Entered before a step's clock starts (the one collection here takes time); nests harmlessly."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(50_000, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


class Runner:
    def __init__(self, client: StreamClient, workload: Workload, spec: RunSpec,
                 on_progress: Callable[[dict], None] | None = None,
                 on_record: Callable[[str, RequestRecord], None] | None = None,
                 share: Share = Share(), pool=None):
        self.client, self.workload, self.spec = client, workload, spec
        self.share = share
        self.pool = pool  # a workers.WorkerPool: the workers send, this process measures
        self.on_progress = on_progress or (lambda info: None)
        self.on_record = on_record or (lambda step, rec: None)  # every finished request (perf.watch)
        # False (--on-error continue): a server that answers but is not ready (an engine restarting)
        # does not stop the run; its requests fail and are counted, perf.readiness times the outage.
        self.halt_when_unready = True
        self.stop = asyncio.Event()
        self.status, self.message = "ok", ""
        self.next_index = 0
        self.inflight: set[asyncio.Task] = set()
        self.counts = {"sent": 0, "done": 0, "ok": 0, "failed": 0}

    # -- the whole run --------------------------------------------------------------------------

    async def run(self) -> RunResult:
        await self.client.check()  # unreachable / unknown model: a clear error before anything runs
        loop = asyncio.get_running_loop()
        t0, wall = time.perf_counter(), time.time()
        result = RunResult([], "ok", t0=t0, started_at=wall)
        try:
            loop.add_signal_handler(signal.SIGINT, self.halt, "interrupted", "interrupted by Ctrl-C")
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
        watchdog = asyncio.create_task(self._watchdog())
        try:
            best_rps = 0.0
            search = AutoRate() if self.spec.auto_rate else None
            n = 0  # the next step's number
            while True:
                if search is not None:  # --rate auto: each next load from the steps so far
                    load = search.next(result.steps)
                    if load is None:
                        break
                    self.spec.loads.append(load)
                elif n >= len(self.spec.loads):
                    break
                step = await self._step(self.spec.loads[n], n, t0)
                result.steps.append(step)
                n += 1
                if self.stop.is_set():
                    break
                if self.spec.sweep and search is None and n < len(self.spec.loads):
                    if self.spec.stop_at_slo and step.slo_met is False:
                        result.stop_reason = f"step {step.label} missed the SLO"
                        break
                    if self.spec.stop_on_plateau and n > 1 and step.rps < best_rps * (1 + self.spec.plateau_gain):
                        result.stop_reason = (f"throughput stopped growing at {step.label} "
                                              f"({step.rps:.2f} req/s vs best {best_rps:.2f})")
                        break
                best_rps = max(best_rps, step.rps)
        finally:
            watchdog.cancel()
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass
        result.status, result.message = self.status, self.message
        return result

    def halt(self, status: str, message: str) -> None:
        if not self.stop.is_set():
            self.status, self.message = status, message
            self.stop.set()

    async def _watchdog(self) -> None:
        """Probe the server every second; two failed probes in a row (or one refused) stop the run."""
        misses = 0
        while not self.stop.is_set():
            await asyncio.sleep(self.spec.probe_every_s)
            try:
                await asyncio.wait_for(self.client.check(), self.spec.probe_timeout_s)
                misses = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure to answer counts
                if not self.halt_when_unready and not isinstance(err, Unreachable):
                    continue
                misses += 1
                if isinstance(err, Unreachable) or misses >= 2:
                    what = "is unreachable" if isinstance(err, Unreachable) else "stopped answering"
                    self.halt("failed", f"the server {what} mid-run: {err or type(err).__name__}")

    # -- one step -------------------------------------------------------------------------------

    async def _step(self, load: Load, n: int, t0: float) -> StepResult:
        spec = self.spec
        before = await asyncio.to_thread(server_metrics.scrape, spec.metrics_url, self.client.model)
        with quiet_gc():
            return await self._measured_step(load, n, t0, before)

    async def _measured_step(self, load: Load, n: int, t0: float, before) -> StepResult:
        spec = self.spec
        machine = verdict.MachineClock()
        own0 = verdict.Sample.now()
        start = time.perf_counter() + (0.05 if self.pool else 0.0)  # workers: time to receive the step
        measure_from = start + spec.warmup_s
        if spec.sweep:
            hard_end = measure_from + spec.max_step_s
        elif spec.duration_s is not None:
            hard_end = measure_from + spec.duration_s
        else:
            hard_end = float("inf")
        self.step_end = hard_end
        agg = Aggregator(spec.slo, exact=not spec.soak)
        kept: list[RequestRecord] = []
        windows: list[stability.Window] = []

        def finished(rec: RequestRecord) -> None:
            self.counts["done"] += 1
            self.counts["ok" if rec.ok else "failed"] += 1
            self.on_record(load.label, rec)
            if spec.soak:
                if rec.intended >= measure_from:
                    agg.add(rec)
            else:
                kept.append(rec)

        ticker = asyncio.create_task(self._tick(load, n, start, measure_from, kept, windows))
        watch = LoopWatch() if self.pool is None else None  # workers watch their own loops
        try:
            if self.pool is not None:
                worker_use = await self.pool.step(self, load, n, start, finished)
            else:
                worker_use = None
                await self.generate(load, n, start, finished)
        finally:
            ticker.cancel()
            own_lag = watch.stop() if watch else None
        end = min(self.step_end, time.perf_counter())
        own = verdict.Sample.now()
        stable = None
        measured_from = measure_from
        if spec.sweep:
            stable = stability.stable(windows, spec.stable_windows, spec.tolerance)
            if stable:
                measured_from = windows[-spec.stable_windows].start
        if not spec.soak:
            for rec in kept:
                if measured_from <= rec.intended < end:
                    agg.add(rec)
        after = await asyncio.to_thread(server_metrics.scrape_settled, spec.metrics_url, self.client.model)
        result = agg.result(load.label, load.kind, load.value, measured_from, end)
        result.stable, result.windows = stable, [w.to_dict(t0) for w in windows]
        parts = worker_use or [(own.cpu_s - own0.cpu_s, own.wait_s - own0.wait_s, own_lag)]
        usage = verdict.ClientUsage(
            workers=len(parts), cpu_s=sum(p[0] for p in parts), wait_s=sum(p[1] for p in parts),
            max_worker_cpu_s=max(p[0] for p in parts), max_worker_wait_s=max(p[1] for p in parts),
            machine_busy=machine.busy_share(), cores=os.cpu_count() or 1,  # /proc/stat covers every CPU
            loop=functools.reduce(LoopLag.merge, (p[2] for p in parts)))
        if worker_use:  # the parent measures, the workers send: both are the client
            usage.cpu_s += own.cpu_s - own0.cpu_s
        result.client_cpu_s = usage.cpu_s
        result.client_usage = usage.to_dict()
        result.server_metrics = server_metrics.diff(before, after)
        verdict.judge(result, load, usage)
        return result

    async def generate(self, load: Load, n: int, start: float, finished) -> None:
        """Send this generator's share of step n (from perf_counter `start`), then let it finish."""
        if load.open_loop:
            await self._open_loop(load, n, start, finished)
        else:
            await self._closed_loop(load, start, finished)
        await self._drain()

    async def _open_loop(self, load: Load, n: int, start: float, finished) -> None:
        horizon = None if self.step_end == float("inf") else self.step_end - start
        count = self.spec.requests if not self.spec.sweep else None
        k, of = self.share.index, self.share.of
        for i, off in enumerate(offsets(load, horizon, count, seed=self.spec.seed + n)):
            if i % of != k:
                continue  # another worker's entry of the one schedule
            if self.stop.is_set():
                return
            intended = start + off
            if intended >= self.step_end:
                return
            delay = intended - time.perf_counter()
            while delay > 0:  # plain sleeps (cheap), at most 0.5 s each so a stop is seen quickly
                await asyncio.sleep(min(delay, 0.5))
                if self.stop.is_set() or intended >= self.step_end:
                    return
                delay = intended - time.perf_counter()
            self._spawn(i, intended, finished)

    async def _closed_loop(self, load: Load, start: float, finished) -> None:
        requests = self.spec.requests if self.spec.requests and not self.spec.sweep else None
        budget = [self.share.budget(requests)] if requests else None
        think = self.spec.think_s
        numbers = iter(range(self.share.index, 2**62, self.share.of))

        async def user(slot: int) -> None:
            # Intended send time: the user's previous answer (+ think time), so a client that
            # comes back late to send shows it as send lag instead of hiding it.
            intended = start
            while not self.stop.is_set() and intended < self.step_end:
                if budget is not None:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                rec = await self._request(next(numbers), intended, finished, slot)
                end = rec.ended or rec.done  # the exchange's end: the server's tail is not the client's lag
                intended = (end if end is not None else time.perf_counter()) + think

        users = [asyncio.create_task(user(u)) for u in range(self.share.users(int(load.value)))]
        stopper = asyncio.create_task(self.stop.wait())
        try:
            pending = set(users)
            while pending and not self.stop.is_set():
                _, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopper)
        finally:
            stopper.cancel()
            for u in users:
                u.cancel()
            await asyncio.gather(*users, return_exceptions=True)

    def _spawn(self, i: int, intended: float, finished) -> None:
        task = asyncio.create_task(self._request(i, intended, finished))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _drain(self) -> None:
        """Let requests already sent finish (each has its own timeout) unless the run is stopping."""
        stopper = asyncio.create_task(self.stop.wait())
        try:
            while self.inflight and not self.stop.is_set():
                await asyncio.wait(self.inflight | {stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        tasks = list(self.inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(self, i: int, intended: float, finished, slot: int | None = None) -> RequestRecord:
        prompt, n_prompt, sampling = self.workload.request(i)
        rec = RequestRecord(i, intended, max_tokens=sampling["max_tokens"], prompt_tokens=n_prompt)
        self.counts["sent"] += 1
        rec.sent = time.perf_counter()
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                await self.client.request(prompt, sampling, self.spec.lora, str(i), rec.observe, slot)
            if rec.done is None:
                rec.done = rec.chunks[-1] if rec.chunks else time.perf_counter()
        except TimeoutError:
            rec.fail("timeout", f"no complete answer within {self.spec.timeout_s:g} s", time.perf_counter())
        except asyncio.CancelledError:
            rec.fail("unfinished", "still running when the run stopped", time.perf_counter())
        except RequestError as err:
            rec.fail(error_kind(err), err.message, time.perf_counter())
        except Unreachable as err:
            rec.fail(error_kind(err), err.message, time.perf_counter())
            self.halt("failed", f"the server became unreachable mid-run: {err.message}")
        except Exception as err:  # noqa: BLE001 - recorded, never dropped
            rec.fail(error_kind(err), str(err), time.perf_counter())
        finished(rec)
        return rec

    async def _tick(self, load: Load, n: int, start: float, measure_from: float,
                    kept: list, windows: list) -> None:
        """Progress for the display; for sweeps, the stability windows that may end the step."""
        next_window = measure_from + self.spec.window_s
        while True:
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            if self.spec.sweep and now >= next_window:
                windows.append(stability.window(kept, next_window - self.spec.window_s, next_window))
                next_window += self.spec.window_s
                if stability.stable(windows, self.spec.stable_windows, self.spec.tolerance):
                    self.step_end = now
            total = (self.step_end - start) if self.step_end != float("inf") else None
            inflight = self.counts["sent"] - self.counts["done"]
            self.on_progress({"step": n, "steps": len(self.spec.loads), "label": load.label,
                              "elapsed_s": now - start, "planned_s": total, "inflight": inflight,
                              **self.counts})

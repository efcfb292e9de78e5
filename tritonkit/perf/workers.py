"""Worker processes for the load generator: `tritonkit perf --workers N`.

One Python process, one event loop, is a ceiling (a few thousand streamed requests/s at best,
less when the loop stalls); a fleet of GPU servers needs more. With N > 1 workers the run is
split, never reshaped:
  - open loop: worker k sends schedule entries k, k + N, k + 2N, ... of the one schedule (same
    seed, same offsets), so the merged intended send times are exactly the requested schedule,
    and request i carries the same prompt as it would from one process;
  - closed loop: users are dealt round robin (worker k runs users k, k + N, ...).
Each worker has its own event loop (uvloop where installed) and its own connections. Workers
stream raw request records back every 0.1 s; the parent (runner.Runner with a pool) keeps the
watchdog, the stability windows, the SLO, the live progress and the verdict over the merged
stream. Times are time.perf_counter(), CLOCK_MONOTONIC on Linux: one clock for every process.
With one worker nothing here is used: the run happens in the calling process, as before.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import signal
import sys

from tritonkit.errors import UsageError
from tritonkit.perf.loopwatch import LoopLag
from tritonkit.perf.schedules import Load

OPEN_LOOP_PER_WORKER = 400.0  # req/s one worker sends comfortably (auto)
# Closed-loop users per worker (auto). On an H100 at 128 users, 64 a worker left ~28 users
# waiting inside the client (0.70x perf_analyzer's req/s at 27% of a core per worker): each
# worker's gRPC reader threads and event loop queue for one GIL, so fewer users a process.
USERS_PER_WORKER = 16
# A thread that wants the GIL waits up to this long for the one holding it (CPython: 5 ms); with
# a reader thread per stream and the event loop in one process, every response paid it.
GIL_SWITCH_S = 0.0005
FLUSH_S = 0.1


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def count(text: str | int | None, loads: list[Load]) -> int:
    """--workers: a number, or 'auto' (None): enough workers for the heaviest step, at most half the
    cores (the rest for the server and the parent), and one for light loads -- exactly as before."""
    if text not in (None, "auto"):
        try:
            n = int(text)
        except (TypeError, ValueError):
            raise UsageError(f"--workers must be a whole number or 'auto', got {text!r}") from None
        if n < 1:
            raise UsageError(f"--workers must be at least 1, got {n}")
        return n
    need = 1
    for load in loads:
        per = OPEN_LOOP_PER_WORKER if load.open_loop else USERS_PER_WORKER
        need = max(need, math.ceil(load.value / per))
    return max(1, min(need, cores() // 2))


def uvloop_policy() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


# -- the worker process -------------------------------------------------------------------------

def _worker_main(index: int, of: int, protocol: str, url: str, model: str, workload, spec,
                 commands, results, step_end, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    sys.setswitchinterval(GIL_SWITCH_S)
    uvloop_policy()
    try:
        asyncio.run(_serve(index, of, protocol, url, model, workload, spec, commands, results, step_end, stop))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the run cleanly
        results.put(("error", index, f"{type(err).__name__}: {err}"))


async def _serve(index, of, protocol, url, model, workload, spec, commands, results, step_end, stop) -> None:
    from tritonkit.client import open_client
    from tritonkit.perf import runner as runner_mod
    from tritonkit.perf import verdict
    from tritonkit.perf.loopwatch import LoopWatch
    from tritonkit.perf.runner import Runner, Share

    client = open_client(protocol, url, model)
    runner = Runner(client, workload, spec, share=Share(index, of))
    results.put(("ready", index))
    try:
        while True:
            cmd = await asyncio.to_thread(commands.get)
            if cmd[0] == "exit":
                return
            _, load, n, start = cmd
            quiet = runner_mod.quiet_gc()  # collect now, before the step's clock starts
            quiet.__enter__()
            batch: list = []
            sent = [0]

            def flush() -> None:
                if batch or runner.counts["sent"] != sent[0]:
                    results.put(("records", index, list(batch), runner.counts["sent"] - sent[0]))
                    batch.clear()
                    sent[0] = runner.counts["sent"]

            async def follow() -> None:  # the parent's step end and stop, and records out
                while True:
                    runner.step_end = step_end.value
                    if stop.value:
                        runner.halt("stopped", "stopped by the parent")
                    flush()
                    await asyncio.sleep(FLUSH_S)

            runner.step_end = step_end.value
            before = verdict.Sample.now()
            watch = LoopWatch()
            follower = asyncio.create_task(follow())
            try:
                await runner.generate(load, n, start, batch.append)
            finally:
                follower.cancel()
            loop_lag = watch.stop()
            flush()
            quiet.__exit__(None, None, None)
            after = verdict.Sample.now()
            if runner.status == "failed":
                results.put(("halt", index, runner.status, runner.message))
            results.put(("end", index, after.cpu_s - before.cpu_s, after.wait_s - before.wait_s, loop_lag))
    finally:
        await client.close()


# -- the parent's side --------------------------------------------------------------------------

class WorkerPool:
    """N worker processes for one run; `step()` runs one step on all of them."""

    def __init__(self, protocol: str, url: str | None, model: str, workload, spec, n: int):
        ctx = mp.get_context("spawn")  # no fork: gRPC's threads and the parent's loop stay behind
        self.n = n
        self.step_end = ctx.Value("d", math.inf, lock=False)
        self.stop = ctx.Value("b", 0, lock=False)
        self.results = ctx.Queue()
        self.commands = [ctx.SimpleQueue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker_main, daemon=True, name=f"tritonkit-perf-worker-{k}",
                                  args=(k, n, protocol, url, model, workload, spec, self.commands[k],
                                        self.results, self.step_end, self.stop))
                      for k in range(n)]

    async def __aenter__(self) -> "WorkerPool":
        for p in self.procs:
            p.start()
        ready = 0
        while ready < self.n:
            msg = await self._get(60.0)
            if msg is None:
                raise RuntimeError("load generator workers did not start within 60 s")
            if msg[0] == "error":
                raise RuntimeError(f"a load generator worker failed to start: {msg[2]}")
            ready += msg[0] == "ready"
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.value = 1
        for q in self.commands:
            q.put(("exit",))
        for p in self.procs:
            await asyncio.to_thread(p.join, 10)
            if p.is_alive():
                p.terminate()

    async def _get(self, timeout_s: float):
        try:
            return self.results.get_nowait()
        except queue.Empty:
            pass
        try:
            return await asyncio.to_thread(self.results.get, True, timeout_s)
        except queue.Empty:
            return None

    async def step(self, runner, load: Load, n: int, start: float, finished) -> list[tuple]:
        """Run step n on every worker; feed each record to `finished` as it comes; the workers' (CPU
        seconds, seconds waiting for a CPU, LoopLag of their event loop)."""
        self.step_end.value = runner.step_end
        for q in self.commands:
            q.put(("step", load, n, start))
        use: dict[int, tuple] = {}
        while len(use) < self.n:
            self.step_end.value = runner.step_end  # stability may end a sweep step early
            if runner.stop.is_set():
                self.stop.value = 1
            msg = await self._get(FLUSH_S)
            while msg is not None:
                kind, k = msg[0], msg[1]
                if kind == "records":
                    runner.counts["sent"] += msg[3]
                    for rec in msg[2]:
                        finished(rec)
                elif kind == "end":
                    use[k] = (msg[2], msg[3], msg[4])
                elif kind == "halt":
                    runner.halt(msg[2], msg[3])
                elif kind == "error":
                    runner.halt("failed", f"load generator worker {k} failed: {msg[2]}")
                    use[k] = (0.0, 0.0, LoopLag())
                try:
                    msg = self.results.get_nowait()
                except queue.Empty:
                    msg = None
            if any(not p.is_alive() for p in self.procs) and len(use) < self.n:
                dead = [k for k, p in enumerate(self.procs) if not p.is_alive() and k not in use]
                if dead:
                    runner.halt("failed", f"load generator worker {dead[0]} died")
                    for k in dead:
                        use[k] = (0.0, 0.0, LoopLag())
        return [use[k] for k in sorted(use)]

"""How fast is the load generator itself? Measured against the ground-truth model on real Triton.

Prints:
  - for each open-loop rate tried: p99 send lag, the share of the schedule kept, client CPU;
  - the highest rate with p99 send lag < 2 ms (and all requests started on time);
  - client CPU seconds per 1,000 streamed requests (process CPU time: asyncio loop + gRPC threads).

The ground-truth model answers with K chunks (default 4) after 5 ms, 5 ms apart, so each
request is a real stream through Triton's gRPC frontend and Python backend. Triton runs on the
same machine and competes for its cores: on a 2-core box the numbers are a lower bound.

    .venv/bin/python perf/bench_generator.py [--rates 200,400,800,1000,1200] [--seconds 5] [--protocol grpc]
        [--split-cores]   # the server on CPU 0, the generator on the others: the generator's own limit
        [--server-cpus N] # with --split-cores: the server gets the first N CPUs (a 16-core fleet run)
        [--workers N]     # tritonkit perf --workers N (client CPU then sums every worker and the parent)
        [--instances N]   # ground-truth model instances in Triton (a fleet-sized server on many cores)
        [--protocol openai [--server-processes N]]  # the OpenAI SSE path against perf/sse_ground_truth.py
        [--streams aio,threads]  # gRPC transports to sweep in turn, each TRANSPORT[/STREAMS[/CHANNELS]]
                                 # (see bench_vs_perf_analyzer.py); default: tritonkit's default
        [--pa PERF_ANALYZER --pa-rates 1000]  # the C++ peer at those rates on the same server (gRPC):
                                 # its TTFT/E2E p50 (the server's own floor) and its client CPU per 1,000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritonkit.client import open_client
from tritonkit.perf.runner import Runner, RunSpec
from tritonkit.perf.schedules import Load, parse_values
from tritonkit.perf.workload import Workload
from tritonkit.runtime.local import LocalServer, group_members
from tritonkit.runtime.spec import ServerSpec, free_port

REPO = Path(__file__).resolve().parent / "ground_truth_repo"


def mode_env(mode: str) -> dict[str, str]:
    """TRANSPORT[/STREAMS[/CHANNELS]] -> tritonkit's gRPC transport settings (environment)."""
    parts = mode.split("/")
    env = {"TRITONKIT_GRPC_STREAMS": parts[0]}
    if len(parts) > 1:
        env["TRITONKIT_GRPC_STREAM_COUNT"] = parts[1]
    if len(parts) > 2:
        env["TRITONKIT_GRPC_CHANNELS"] = parts[2]
    return env


async def one_rate(protocol: str, url: str, rate: float, seconds: float, chunks: int, workers: int = 1) -> dict:
    client = open_client(protocol, url, "ground_truth")
    workload = Workload([(f"prompt {i} " + "word " * 20, None) for i in range(100)], None,
                        [chunks] * 100, {"gt_first_delay_ms": 5, "gt_gap_ms": 5})
    spec = RunSpec([Load("rate", rate)], duration_s=seconds, timeout_s=30, probe_every_s=5, probe_timeout_s=5)
    try:
        await client.check()
        # Warm the channel so connection setup is not counted.
        async for _ in client.stream("warm", {"max_tokens": 1}):
            pass
        times0, t0 = os.times(), time.perf_counter()
        if workers > 1:
            from tritonkit.perf.workers import WorkerPool

            spec.workers = workers
            async with WorkerPool(protocol, url, "ground_truth", workload, spec, workers) as pool:
                result = await Runner(client, workload, spec, pool=pool).run()
        else:
            result = await Runner(client, workload, spec).run()
        times1, wall = os.times(), time.perf_counter() - t0
        user, system = times1.user - times0.user, times1.system - times0.system
        cpu = user + system
    finally:
        await client.close()
    step = result.steps[0]
    if workers > 1:
        cpu = step.client_cpu_s  # every worker and the parent, over the step
        user = system = None  # (not split per worker)
    lag = step.summaries["send_lag"]
    return {"rate": rate, "sent": step.sent, "ok": step.ok, "failed": step.failed, "errors": step.errors,
            "send_rate": step.send_rate, "lag_p50_ms": (lag.p50 or 0) * 1000, "lag_p99_ms": (lag.p99 or 0) * 1000,
            "cpu_s": cpu, "wall_s": wall, "user_s": user, "system_s": system, "cpu_per_1000": cpu / max(1, step.sent) * 1000,
            "e2e_p50_ms": (step.summaries["e2e"].p50 or 0) * 1000, "rps": step.rps,
            "ttft_p50_ms": (step.summaries["ttft"].p50 or 0) * 1000}


def pa_rate(pa: str, url: str, rate: float, seconds: float, chunks: int, tmp: Path) -> dict:
    """perf_analyzer 2.41 at a constant request rate, gRPC streaming, the same requests as one_rate."""
    import statistics

    from bench_vs_perf_analyzer import _child_cpu, _pa_libs, pa_env, pa_input, pa_requests, pa_throughput

    _pa_libs(pa)
    sampling = {"max_tokens": chunks, "gt_first_delay_ms": 5, "gt_gap_ms": 5}
    data = pa_input(tmp / "pa-rate-input.json", [(f"prompt {i} " + "word " * 20, sampling) for i in range(100)])
    export = tmp / f"pa-rate-{rate:g}.json"
    cmd = [pa, "-m", "ground_truth", "-u", url.removeprefix("grpc://"), "-i", "grpc", "--streaming",
           "--request-rate-range", f"{rate:g}", "--measurement-interval", str(int(seconds * 1000)),
           "--input-data", str(data), "--profile-export-file", str(export), "--max-trials", "3",
           "--stability-percentage", "100"]
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 6 + 60, env=pa_env())
    cpu, wall = _child_cpu() - cpu0, time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"perf_analyzer exit {proc.returncode}: {(proc.stdout + proc.stderr)[-300:]}"}
    done = pa_requests(export)
    ttft = statistics.median((r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in done)
    e2e = statistics.median((r["response_timestamps"][-1] - r["timestamp"]) / 1e6 for r in done)
    rps = pa_throughput(proc.stdout) or 0.0
    sent = rps * wall  # its requests over the whole call (every trial), for CPU per 1,000
    return {"rps": rps, "ttft_p50_ms": ttft, "e2e_p50_ms": e2e, "cpu_per_1000": cpu / max(1.0, sent) * 1000,
            "cpu_share": cpu / wall}


def pin_group(pgid: int, cpus: set[int]) -> None:
    """Pin every thread of every process in a process group to `cpus`."""
    for pid in group_members(pgid):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            continue  # gone meanwhile


@contextmanager
def sse_server(processes: int, cpus: set[int] | None):
    """perf/sse_ground_truth.py on a free port (first chunk after 5 ms, then 5 ms apart)."""
    from tritonkit.runtime.spec import free_port

    port = free_port()
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    proc = subprocess.Popen([*pin, sys.executable, str(Path(__file__).resolve().parent / "sse_ground_truth.py"),
                             "--port", str(port), "--first-ms", "5", "--gap-ms", "5", "--processes", str(processes)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def repo_with_instances(n: int, dest: Path) -> Path:
    if n <= 1:
        return REPO
    shutil.copytree(REPO, dest)
    cfg = dest / "ground_truth" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("count: 1 }", f"count: {n} }}"))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="200,400,600,800,1000,1200")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http", "openai"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--instances", type=int, default=1, help="ground-truth model instances (Triton)")
    ap.add_argument("--server-processes", type=int, default=1, help="SSE ground-truth server processes (openai)")
    ap.add_argument("--streams", default="", help="gRPC transports to sweep in turn (TRANSPORT[/STREAMS[/CHANNELS]])")
    ap.add_argument("--split-cores", action="store_true",
                    help="pin the server (Triton and its backend stubs, or the SSE server) to the first "
                         "--server-cpus CPUs and this load generator to the others, so the generator is "
                         "measured on cores of its own")
    ap.add_argument("--server-cpus", type=int, default=1, help="with --split-cores: CPUs for the server")
    ap.add_argument("--pa", default=None, help="perf_analyzer 2.41 binary: run it too at --pa-rates (gRPC only)")
    ap.add_argument("--pa-rates", default="1000")
    args = ap.parse_args()
    if args.pa and not (os.path.isfile(args.pa) and os.access(args.pa, os.X_OK)):
        raise SystemExit(f"error: perf_analyzer not found or not executable: {args.pa}")
    cpus = sorted(os.sched_getaffinity(0))
    if args.split_cores:
        if len(cpus) <= args.server_cpus or args.server_cpus < 1:
            raise SystemExit(f"--split-cores needs more than --server-cpus ({args.server_cpus}) CPUs")
        os.sched_setaffinity(0, cpus[args.server_cpus:])  # before any thread exists: gRPC's threads inherit it
    server_cpus, client_cpus = set(cpus[:args.server_cpus]), cpus[args.server_cpus:] if args.split_cores else cpus
    rows = []
    modes = [m for m in args.streams.split(",") if m] or [""]
    mode_rows: dict[str, list] = {m: [] for m in modes}

    def sweep(url: str) -> None:
        for rate in parse_values(args.rates):
            for mode in modes:  # alternating, so a noisy moment hits every transport alike
                run_mode(url, rate, mode)
        if args.pa and args.protocol == "grpc":
            with tempfile.TemporaryDirectory() as tmp:
                for rate in parse_values(args.pa_rates):
                    got = pa_rate(args.pa, url, rate, args.seconds, args.chunks, Path(tmp))
                    print(f"perf_analyzer rate {rate:7.0f}/s: " + (got.get("error") or (
                        f"achieved {got['rps']:7.1f}/s  TTFT p50 {got['ttft_p50_ms']:6.2f} ms  e2e p50 "
                        f"{got['e2e_p50_ms']:6.2f} ms  client CPU {got['cpu_share']:4.0%} = "
                        f"{got['cpu_per_1000']:.3f} s per 1000 req (every trial)")), flush=True)

    def run_mode(url: str, rate: float, mode: str) -> None:
        for key in ("TRITONKIT_GRPC_STREAMS", "TRITONKIT_GRPC_STREAM_COUNT", "TRITONKIT_GRPC_CHANNELS"):
            os.environ.pop(key, None)
        os.environ.update(mode_env(mode) if mode else {})  # read by the client; inherited by workers
        row = asyncio.run(one_rate(args.protocol, url, rate, args.seconds, args.chunks, args.workers))
        rows.append(row)
        mode_rows[mode].append(row)
        split = "" if row["user_s"] is None else f" ({row['system_s'] / max(row['cpu_s'], 1e-9):.0%} in the kernel)"
        print(f"{mode + ' ' if mode else ''}rate {rate:7.0f}/s: sent {row['sent']:6d} ok {row['ok']:6d} "
              f"failed {row['failed']:4d} started {row['send_rate']:7.1f}/s  lag p50 {row['lag_p50_ms']:6.2f} ms "
              f"p99 {row['lag_p99_ms']:7.2f} ms  TTFT p50 {row['ttft_p50_ms']:6.2f} ms  e2e p50 {row['e2e_p50_ms']:6.2f} ms  "
              f"client CPU {row['cpu_s'] / row['wall_s']:4.0%} = {row['cpu_per_1000']:.3f} s per 1000 req{split} "
              f"{row['errors'] or ''}", flush=True)

    if args.protocol == "openai":
        with sse_server(args.server_processes, server_cpus if args.split_cores else None) as url:
            sweep(url)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            spec = ServerSpec(repository=repo_with_instances(args.instances, Path(tmp) / "repo"),
                              name=f"bench{os.getpid()}", http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port())
            with LocalServer(spec) as server:
                if args.split_cores:
                    pin_group(server.pid, server_cpus)  # before the stubs start: they inherit it
                server.wait_ready(["ground_truth"], 120)
                if args.split_cores:
                    pin_group(server.pid, server_cpus)  # and every thread and stub that started meanwhile
                sweep(spec.grpc_url if args.protocol == "grpc" else spec.http_url)
    print()
    where = (f"the server pinned to CPUs {sorted(server_cpus)}, the generator to CPUs {client_cpus}" if args.split_cores
             else "Triton on the same cores")
    print(f"machine: {os.cpu_count()} cores; protocol {args.protocol}; {args.workers} worker(s); {args.chunks} chunks per request; "
          f"{args.seconds:g} s per rate; {where}")
    for mode, got in mode_rows.items():
        label = f"[{mode}] " if mode else ""
        good = [r for r in got if r["lag_p99_ms"] < 2 and r["send_rate"] >= 0.95 * r["rate"] and r["failed"] == 0]
        best = max(good, key=lambda r: r["rate"], default=None)
        if best:
            print(f"{label}highest open-loop rate with p99 send lag < 2 ms: {best['rate']:g} req/s "
                  f"(p99 lag {best['lag_p99_ms']:.2f} ms)")
        else:
            print(f"{label}no rate kept p99 send lag under 2 ms")
        ref = best or got[0]
        print(f"{label}client CPU per 1,000 streamed requests: {ref['cpu_per_1000']:.3f} s (at {ref['rate']:g} req/s)")


if __name__ == "__main__":
    main()

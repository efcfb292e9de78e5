"""tritonkit perf vs perf_analyzer 2.41 (C++), same Triton server, same model, equal concurrency.

The server is real Triton serving a copy of the ground-truth model that streams K one-token
chunks at once (no delays), so the numbers are the client's and Triton's frontend, not a model's.
Triton is pinned to CPU 0, each generator in turn to CPU 1 (taskset). For each concurrency:
tritonkit's CLI (`tritonkit perf --concurrency N --json`) and perf_analyzer (`--streaming
--concurrency-range N`, its profile export for per-request times), alternating, `--repeat` times.
Printed: req/s and e2e p50 of both, their ratios (tritonkit / perf_analyzer) and client CPU.

tritonkit's gRPC transports (--streams, comma-separated, each TRANSPORT[/STREAMS[/CHANNELS]]):
aio (grpc.aio, no threads of ours), threads (the default: sync gRPC, two threads a stream; "shared"
is its old name), per-request (one stream per request); STREAMS per worker process (closed-loop users
get one each up to that many) and CHANNELS (TCP connections) per worker, e.g. aio/16/4.

perf_analyzer is the binary inside the tritonclient 2.41.0 wheel:
    pip download --no-deps tritonclient==2.41.0 -d /tmp/pa && cd /tmp/pa && unzip -q tritonclient-*.whl
    apt-get install -y libb64-0d     # and a libcudart.so.12 on LD_LIBRARY_PATH (the pytriton wheel has one)
    .venv/bin/python perf/bench_vs_perf_analyzer.py --pa /tmp/pa/tritonclient-2.41.0.data/data/bin/perf_analyzer

Other flags: --concurrency 4,16 --seconds 10 --chunks 8 --repeat 2 --workers auto (passed to tritonkit,
skipped when its CLI has no --workers) --instances 1 (model instances).

Against a server already running (the GPU run, perf/device_generator.sh): --url HOST:GRPC_PORT --model M
--repository REPO --preset classification: both generators get the same prompts (tritonkit's workload
for that preset, written out as perf_analyzer's --input-data), nothing is pinned, and --starved USERS adds
a deliberately starved tritonkit run (--workers 1 on one core) that must be flagged client-limited.
With --metrics-url (Triton's /metrics), each run of either generator also gets vLLM's own mean e2e
latency over it and, by Little's law, the users inside vLLM: whether time outside vLLM is the
client's (only tritonkit's runs lose it) or the frontend's (perf_analyzer's too). Where the server
runs on this machine, each run also prints where the server's CPU went (per thread, in ms per request
and the 90th percentile over 0.5 s intervals: perf/server_probe.py), Triton's own queue and execute
time per request, how clumped each generator's sends and finishes are (variance / mean per 10 ms),
and the requests it really kept in flight. Every run starts on an idle server, and odd repeats run
tritonkit first, so a server whose capacity drifts favours neither generator.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritonkit.perf import server_metrics  # noqa: E402
from tritonkit.runtime.install import find_triton  # noqa: E402
from tritonkit.runtime.local import LocalServer  # noqa: E402
from tritonkit.runtime.spec import ServerSpec, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_generator import mode_env, pin_group  # noqa: E402
from server_probe import load_shape, probed  # noqa: E402

WARMUP_S = 2  # tritonkit perf --warmup: seconds of load before it measures
PROMPT = "the quick brown fox jumps over the lazy dog " * 3


def fast_repo(dest: Path, instances: int) -> Path:
    """A copy of the ground-truth repository whose model answers at once (0 ms delays)."""
    shutil.copytree(HERE / "ground_truth_repo", dest)
    cfg = dest / "ground_truth" / "config.pbtxt"
    text = cfg.read_text().replace('string_value: "50"', 'string_value: "0"').replace('string_value: "20"', 'string_value: "0"')
    text = text.replace("count: 1 }", f"count: {instances} }}")
    cfg.write_text(text)
    return dest


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pa_env() -> dict[str, str]:
    """perf_analyzer's environment: its libraries (PA_LIB, see _pa_libs) on LD_LIBRARY_PATH."""
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in (os.environ.get("PA_LIB", ""),
                                                                  os.environ.get("LD_LIBRARY_PATH", "")) if p)}


def pa_throughput(stdout: str) -> float | None:
    """The req/s of perf_analyzer's first 'Throughput:' line (its measured experiment)."""
    return next((float(line.split("Throughput:")[1].split()[0]) for line in stdout.splitlines()
                 if "Throughput:" in line), None)


def pa_requests(export: Path) -> list[dict]:
    """The requests of perf_analyzer's last experiment that got a response (its profile export)."""
    reqs = json.loads(export.read_text())["experiments"][-1]["requests"]
    return [r for r in reqs if r.get("response_timestamps")]


def vllm_profile(diff: dict) -> str:
    """What vLLM saw of a run, from its own metrics: tokens in and out per request (do both
    generators send the same work?) and its mean queue time and TTFT (where inside vLLM the time goes)."""
    delta, means = diff.get("delta", {}), diff.get("histogram_means", {})

    def total(family: str) -> float:
        return server_metrics.family_total(delta, family)

    def mean(family: str) -> float | None:
        got = [v for k, v in means.items() if k.split("{", 1)[0] == family]
        return got[0] if got else None

    # The vLLM backends for Triton export neither vllm:request_success_total nor the queue time:
    # count finished requests by the e2e histogram; the queue shows where vLLM's own server runs.
    done = total("vllm:e2e_request_latency_seconds_count")
    if not done:
        return ""
    queue, ttft = mean("vllm:request_queue_time_seconds"), mean("vllm:time_to_first_token_seconds")
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
    # A prefix-cache hit skips that part of the prefill: a generator whose prompts hit more gets a faster server.
    queried = total("vllm:prefix_cache_queries_total")
    hits = f", prefix cache hits {100 * total('vllm:prefix_cache_hits_total') / queried:.0f}% of prompt tokens" if queried else ""
    return (f" [vLLM: {done:.0f} req, {total('vllm:prompt_tokens_total') / done:.1f} in / "
            f"{total('vllm:generation_tokens_total') / done:.1f} out per req, TTFT {ms(ttft)} ms"
            + ("" if queue is None else f", queue {ms(queue)} ms") + hits + "]")


def _run_noting_load(cmd: list[str], env: dict, timeout: float, on_load) -> subprocess.CompletedProcess:
    """Run tritonkit perf, calling on_load() once, when its first progress line ("[perf] step ...",
    printed as the load begins) reaches stderr: the starved run's busy neighbours start then, not
    while Python starts and the tokenizer loads (at a thirteenth of a core that took minutes)."""
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
        err_lines: list[str] = []

        def read_err() -> None:
            loading = False
            for line in proc.stderr:
                if not loading and line.startswith("[perf]"):
                    loading = True
                    on_load()
                err_lines.append(line)

        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
        stdout.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout.read(), "".join(err_lines))


def run_tritonkit(url: str, users: int, seconds: float, workload_args: list[str], cpu: int | None,
                  workers: str | None, out: Path, streams: str = "aio", on_load=None) -> dict:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd = [*pin, sys.executable, "-m", "tritonkit", "perf", "--url", url, "--concurrency", str(users),
           "--duration", str(seconds), "--warmup", str(WARMUP_S), "--json", "--out", str(out), *workload_args]
    streams, _, own_workers = streams.partition("@")  # MODE@N: this mode with --workers N
    if own_workers or workers:
        cmd += ["--workers", own_workers or workers]
    cpu0 = _child_cpu()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), **mode_env(streams)}
    proc = _run_noting_load(cmd, env, seconds * 4 + 120, on_load or (lambda: None))
    if proc.returncode != 0:
        raise SystemExit(f"tritonkit perf failed: {proc.stderr[-2000:]}")
    step = json.loads(proc.stdout)["steps"][0]
    with open(out / "requests.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["step"] == step["label"] and r["done_s"]]
    first = min(float(r["sent_s"]) for r in rows)
    per_second = collections.Counter(int(float(r["done_s"]) - first) for r in rows)
    burst = load_shape([(float(r["sent_s"]), float(r["done_s"])) for r in rows])
    from tritonkit.perf import verdict

    return {"rps": step["requests_per_s"], "p50": step["latency_s"]["e2e"]["p50"], "ok": step["ok"], "burst": burst,
            "per_second": " ".join(str(per_second[i]) for i in range(max(per_second) + 1)),
            "server_s": verdict.server_latency_s(step.get("server_metrics") or {})[0],
            "vllm": vllm_profile(step.get("server_metrics") or {}),
            "p90": step["latency_s"]["e2e"]["p90"], "cpu_s": _child_cpu() - cpu0,
            "cpu_in_step_s": step.get("client_cpu_s"), "limited": step.get("client_limited"),
            "note": step.get("client_note", "")}


def pa_input(path: Path, rows: list[tuple[str, dict]]) -> Path:
    """perf_analyzer's --input-data: the same inputs tritonkit's gRPC client sends."""
    path.write_text(json.dumps({"data": [{
        "text_input": [prompt], "sampling_parameters": [json.dumps(sampling)],
        "stream": [True], "exclude_input_in_output": [True], "return_num_input_tokens": [True],
        "return_num_output_tokens": [True], "return_finish_reason": [True]} for prompt, sampling in rows]}))
    return path


def preset_rows(repository: str, model: str, preset: str) -> list[tuple[str, dict]]:
    """The prompts and sampling tritonkit sends for this preset (its own workload, tokenizer-exact):
    every distinct prompt it cycles through (2,000 for a preset), no fewer: with fewer, vLLM's prefix
    cache could favour one generator (this took the first 500 until 2026-11-27; on an H100 with all
    2,000 the gap to perf_analyzer stayed: perf/results/generator-h100-h2-all-prompts.log)."""
    from tritonkit.perf import session

    plan = session.resolve(session.Options(repository=repository, model=model, preset=preset, concurrency="1"),
                           say=lambda m: None)
    rows = []
    for i in range(len(plan.workload.prompts)):
        prompt, _, sampling = plan.workload.request(i)
        rows.append((prompt, sampling))
    return rows


def run_pa(pa: str, url: str, model: str, users: int, seconds: float, data: Path, cpu: int | None,
           tmp: Path, metrics_url: str | None = None) -> dict:
    export = tmp / f"pa-{users}.json"
    export.unlink(missing_ok=True)
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd = [*pin, pa, "-m", model, "-u", url, "-i", "grpc", "--streaming",
           "--concurrency-range", str(users), "--measurement-interval", str(int(seconds * 1000 / 3)),
           "--input-data", str(data), "--profile-export-file", str(export), "--max-trials", "6", "--stability-percentage", "100"]
    from tritonkit.perf import verdict

    cpu0 = _child_cpu()
    before = server_metrics.scrape(metrics_url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120, env=pa_env())
    diff = server_metrics.diff(before, server_metrics.scrape_settled(metrics_url))  # over all its trials
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    done = pa_requests(export)
    e2e = sorted((r["response_timestamps"][-1] - r["timestamp"]) / 1e9 for r in done)
    burst = load_shape([(r["timestamp"] / 1e9, r["response_timestamps"][-1] / 1e9) for r in done])
    return {"rps": pa_throughput(proc.stdout), "p50": statistics.median(e2e), "p90": e2e[int(0.9 * (len(e2e) - 1))],
            "burst": burst,
            "ok": len(e2e), "cpu_s": _child_cpu() - cpu0, "server_s": verdict.server_latency_s(diff)[0],
            "vllm": vllm_profile(diff)}


def _inside(r: dict) -> str:
    """Users inside vLLM by Little's law (req/s x vLLM's own mean e2e), where vLLM's metrics came."""
    return "" if not r.get("server_s") else (f" ({r['rps'] * r['server_s']:.0f} inside vLLM, its e2e "
                                             f"{r['server_s'] * 1000:.0f} ms){r.get('vllm', '')}")


def compare(args, pa: str, url: str, model: str, data: Path, workload_args: list[str], pa_cpu, tk_cpu,
            tmp: Path) -> list:
    """Per users: perf_analyzer and tritonkit (each --streams mode) alternating, --repeat times."""
    rows = []
    modes = args.streams.split(",")
    for users in [int(v) for v in args.concurrency.split(",")]:
        tk: dict[str, list] = {m: [] for m in modes}
        pas = []
        for rep in range(args.repeat):
            def pa_run():
                pas.append(probed(lambda: run_pa(pa, url, model, users, args.seconds, data, pa_cpu, tmp,
                                                 args.metrics_url), url, args.metrics_url))
                if pas[-1]["server"]:
                    print(f"{users:4d} users run {rep + 1}: perf_analyzer{pas[-1]['server']}", flush=True)
                return pas[-1]

            # Odd runs start with tritonkit: a server whose state drifts must not always favour one.
            p = pa_run() if rep % 2 == 0 else None
            for mode in modes:
                tk[mode].append(probed(lambda: run_tritonkit(url, users, args.seconds, workload_args, tk_cpu, args.workers,
                                                             tmp / f"tk-{users}-{rep}-{mode}", mode),
                                       url, args.metrics_url))
                t = tk[mode][-1]
                if t["server"]:
                    print(f"{users:4d} users run {rep + 1}: tritonkit ({mode}){t['server']}\n      finished per second: "
                          f"{t['per_second']}", flush=True)
                p = p or pa_run()
                print(f"{users:4d} users run {rep + 1}: tritonkit ({mode}) {t['rps']:7.1f} req/s p50 "
                      f"{t['p50'] * 1000:7.2f} ms{_inside(t)} | perf_analyzer {p['rps']:7.1f} req/s p50 "
                      f"{p['p50'] * 1000:7.2f} ms{_inside(p)} | ratio {t['rps'] / p['rps']:.2f}x rps, "
                      f"{t['p50'] / p['p50']:.2f}x p50 | client CPU {t['cpu_s']:.1f} s vs {p['cpu_s']:.1f} s | {t['note']}",
                      flush=True)
        for mode in modes:
            rows.append((users if len(modes) == 1 else f"{users} ({mode})", tk[mode], pas))
    return rows


def table(rows: list, where: str) -> None:
    print()
    print("| users | tritonkit req/s | perf_analyzer req/s | ratio | tritonkit p50 ms | perf_analyzer p50 ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for users, tk, pa in rows:
        t_rps, p_rps = statistics.median(r["rps"] for r in tk), statistics.median(r["rps"] for r in pa)
        t_p50, p_p50 = statistics.median(r["p50"] for r in tk), statistics.median(r["p50"] for r in pa)
        print(f"| {users} | {t_rps:.1f} | {p_rps:.1f} | {t_rps / p_rps:.2f}x | {t_p50 * 1000:.2f} | "
              f"{p_p50 * 1000:.2f} | {t_p50 / p_p50:.2f}x |")
    print(where)


def starved(args, workload_args: list[str], tmp: Path) -> None:
    """A deliberately starved tritonkit run: one worker pinned to one CPU that it shares with
    --starved-hogs busy loops (a noisy neighbour) from the moment its load begins until its warm-up
    and measured seconds are over, in each --streams mode. Each must be flagged client-limited and
    name CPU starvation."""
    last = sorted(os.sched_getaffinity(0))[-1]
    hogs: list[subprocess.Popen] = []
    timers: list[threading.Timer] = []

    def start_hogs() -> None:
        hogs.extend(subprocess.Popen(["taskset", "-c", str(last), sys.executable, "-c", "while True: pass"])
                    for _ in range(args.starved_hogs))
        timers.append(threading.Timer(WARMUP_S + args.seconds + 1, stop_hogs))  # then let it write its results
        timers[-1].start()

    def stop_hogs() -> None:
        while True:
            try:
                hog = hogs.pop()
            except IndexError:
                return
            hog.kill()
            hog.wait()

    for mode in dict.fromkeys(m.partition("@")[0] for m in args.streams.split(",")):  # always one worker
        try:
            t = run_tritonkit(args.url, args.starved, args.seconds, workload_args, last, "1",
                              tmp / f"starved-{mode}", mode, on_load=start_hogs)
        except subprocess.TimeoutExpired as err:  # starved so hard it never finished: say so, run the next
            print(f"\nstarved run ({mode}, {args.starved} users beside {args.starved_hogs} busy loops): did not "
                  f"finish within {err.timeout:.0f} s", flush=True)
            continue
        finally:
            for timer in timers:
                timer.cancel()
            stop_hogs()
        print(f"\nstarved run ({mode}, --workers 1 pinned to CPU {last} beside {args.starved_hogs} busy loops "
              f"from its first request, {args.starved} users): {t['rps']:.1f} req/s, p50 {t['p50'] * 1000:.1f} ms; "
              f"flagged client-limited: {t['limited']}\n  {t['note']}", flush=True)


def _pa_libs(pa: str | None = None) -> None:
    """PA_LIB (unless set): libcudart.so.12 from the Triton runtime, and libb64.so.0d where it lies
    beside the perf_analyzer binary (perf/device_generator.sh prepare puts it there)."""
    install = find_triton()
    if install and "PA_LIB" not in os.environ:
        libs = Path(tempfile.mkdtemp(prefix="pa-lib-"))
        for lib in install.lib_dir.glob("libcudart*.so.12*"):
            (libs / "libcudart.so.12").symlink_to(lib)
            break
        b64 = Path(pa).resolve().parent / "libb64.so.0d" if pa else None
        if b64 and b64.is_file():
            (libs / b64.name).symlink_to(b64)
        os.environ["PA_LIB"] = str(libs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pa", default=os.environ.get("PERF_ANALYZER", "/tmp/pa/tritonclient-2.41.0.data/data/bin/perf_analyzer"))
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", default=None, help="tritonkit --workers (default: its own default)")
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--url", default=None, help="a running Triton's gRPC address (else a ground-truth server is started)")
    ap.add_argument("--model", default="ground_truth")
    ap.add_argument("--repository", default=None)
    ap.add_argument("--preset", default="classification")
    ap.add_argument("--streams", default="aio", help="tritonkit's gRPC transports to run, comma-separated, each "
                    "TRANSPORT[/STREAMS[/CHANNELS]] (aio, threads, per-request; see the docstring)")
    ap.add_argument("--metrics-url", default=None, help="Triton's metrics URL: vLLM's own latency per run")
    ap.add_argument("--starved", type=int, default=0, help="users of a starved run (--workers 1, one core)")
    ap.add_argument("--starved-hogs", type=int, default=3, help="busy loops sharing the starved run's core")
    args = ap.parse_args()
    if not (os.path.isfile(args.pa) and os.access(args.pa, os.X_OK)):
        raise SystemExit(f"error: perf_analyzer not found or not executable: {args.pa}")
    _pa_libs(args.pa)
    with tempfile.TemporaryDirectory(prefix="tk-vs-pa-") as tmpdir:
        tmp = Path(tmpdir)
        if args.url:
            data = pa_input(tmp / "pa-input.json", preset_rows(args.repository, args.model, args.preset))
            workload_args = ["-m", args.model, "-r", args.repository, "--preset", args.preset]
            if args.concurrency:
                rows = compare(args, args.pa, args.url, args.model, data, workload_args, None, None, tmp)
                table(rows, f"(median of {args.repeat} runs each; {args.seconds:g} s per run; same server, prompts "
                            f"and sampling; closed loop, gRPC streaming)")
            if args.starved:
                starved(args, workload_args, tmp)
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("needs 2 CPUs: one for Triton, one for the generators")
        server_cpu, client_cpu = cpus[0], cpus[1]
        repo = fast_repo(tmp / "repo", args.instances)
        spec = ServerSpec(repository=repo, name=f"vspa{os.getpid()}", http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
        data = pa_input(tmp / "pa-input.json", [(PROMPT, {"max_tokens": args.chunks, "ignore_eos": True})])
        workload_args = ["-m", "ground_truth", "--output-tokens", str(args.chunks), "--metrics-url", "none"]
        with LocalServer(spec) as server:
            pin_group(server.pid, {server_cpu})
            server.wait_ready(["ground_truth"], 120)
            pin_group(server.pid, {server_cpu})
            rows = compare(args, args.pa, spec.grpc_url, "ground_truth", data, workload_args, client_cpu, client_cpu, tmp)
    table(rows, f"(median of {args.repeat} runs each; Triton on CPU {server_cpu}, generators on CPU {client_cpu}; "
                f"{args.chunks} chunks per request at once; {args.seconds:g} s per run)")


if __name__ == "__main__":
    main()

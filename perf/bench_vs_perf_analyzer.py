"""tritonkit perf vs perf_analyzer 2.41 (C++), same Triton server, same model, equal concurrency.

The server is real Triton serving a copy of the ground-truth model that streams K one-token
chunks at once (no delays), so the numbers are the client's and Triton's frontend, not a model's.
Triton is pinned to CPU 0, each generator in turn to CPU 1 (taskset). For each concurrency:
tritonkit's CLI (`tritonkit perf --concurrency N --json`) and perf_analyzer (`--streaming
--concurrency-range N`, its profile export for per-request times), alternating, `--repeat` times.
Printed: req/s and e2e p50 of both, their ratios (tritonkit / perf_analyzer) and client CPU.

perf_analyzer is the binary inside the tritonclient 2.41.0 wheel:
    pip download --no-deps tritonclient==2.41.0 -d /tmp/pa && cd /tmp/pa && unzip -q tritonclient-*.whl
    apt-get install -y libb64-0d     # and a libcudart.so.12 on LD_LIBRARY_PATH (the pytriton wheel has one)
    .venv/bin/python perf/bench_vs_perf_analyzer.py --pa /tmp/pa/tritonclient-2.41.0.data/data/bin/perf_analyzer

Other flags: --concurrency 4,16 --seconds 10 --chunks 8 --repeat 2 --workers auto (passed to tritonkit,
skipped when its CLI has no --workers) --instances 1 (model instances).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritonkit.runtime.install import find_triton  # noqa: E402
from tritonkit.runtime.local import LocalServer  # noqa: E402
from tritonkit.runtime.spec import ServerSpec, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_generator import pin_group  # noqa: E402

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


def run_tritonkit(url: str, users: int, seconds: float, chunks: int, cpu: int, workers: str | None,
                  out: Path) -> dict:
    cmd = ["taskset", "-c", str(cpu), sys.executable, "-m", "tritonkit", "perf", "-m", "ground_truth",
           "--url", url, "--concurrency", str(users), "--duration", str(seconds), "--warmup", "1",
           "--output-tokens", str(chunks), "--metrics-url", "none", "--json", "--out", str(out)]
    if workers:
        cmd += ["--workers", workers]
    cpu0 = _child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if proc.returncode != 0:
        raise SystemExit(f"tritonkit perf failed: {proc.stderr[-2000:]}")
    step = json.loads(proc.stdout)["steps"][0]
    return {"rps": step["requests_per_s"], "p50": step["latency_s"]["e2e"]["p50"], "ok": step["ok"],
            "cpu_s": _child_cpu() - cpu0, "cpu_in_step_s": step.get("client_cpu_s"),
            "note": step.get("client_note", "")}


def run_pa(pa: str, url: str, users: int, seconds: float, chunks: int, cpu: int, tmp: Path) -> dict:
    data = tmp / "pa-input.json"
    data.write_text(json.dumps({"data": [{
        "text_input": [PROMPT], "sampling_parameters": [json.dumps({"max_tokens": chunks, "ignore_eos": True})],
        "stream": [True], "exclude_input_in_output": [True], "return_num_input_tokens": [True],
        "return_num_output_tokens": [True], "return_finish_reason": [True]}]}))
    export = tmp / f"pa-{users}.json"
    export.unlink(missing_ok=True)
    cmd = ["taskset", "-c", str(cpu), pa, "-m", "ground_truth", "-u", url, "-i", "grpc", "--streaming",
           "--concurrency-range", str(users), "--measurement-interval", str(int(seconds * 1000 / 3)),
           "--input-data", str(data), "--profile-export-file", str(export), "--max-trials", "6", "--stability-percentage", "100"]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(p for p in (os.environ.get("PA_LIB", ""),
                                                                   os.environ.get("LD_LIBRARY_PATH", "")) if p)}
    cpu0 = _child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"perf_analyzer failed ({proc.returncode}): {proc.stdout[-1500:]} {proc.stderr[-1500:]}")
    rps = None
    for line in proc.stdout.splitlines():
        if "Throughput:" in line and rps is None:
            rps = float(line.split("Throughput:")[1].split()[0])
    doc = json.loads(export.read_text())
    reqs = doc["experiments"][-1]["requests"]
    e2e = [(r["response_timestamps"][-1] - r["timestamp"]) / 1e9 for r in reqs if r.get("response_timestamps")]
    return {"rps": rps, "p50": statistics.median(e2e), "ok": len(e2e), "cpu_s": _child_cpu() - cpu0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pa", default=os.environ.get("PERF_ANALYZER", "/tmp/pa/tritonclient-2.41.0.data/data/bin/perf_analyzer"))
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", default=None, help="tritonkit --workers (default: its own default)")
    ap.add_argument("--instances", type=int, default=1)
    args = ap.parse_args()
    install = find_triton()
    if install and "PA_LIB" not in os.environ:  # perf_analyzer wants libcudart.so.12: the runtime has one
        libs = Path(tempfile.mkdtemp(prefix="pa-lib-"))
        for lib in install.lib_dir.glob("libcudart*.so.12*"):
            (libs / "libcudart.so.12").symlink_to(lib)
            break
        os.environ["PA_LIB"] = str(libs)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs 2 CPUs: one for Triton, one for the generators")
    server_cpu, client_cpu = cpus[0], cpus[1]
    with tempfile.TemporaryDirectory(prefix="tk-vs-pa-") as tmpdir:
        tmp = Path(tmpdir)
        repo = fast_repo(tmp / "repo", args.instances)
        spec = ServerSpec(repository=repo, name=f"vspa{os.getpid()}", http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
        rows = []
        with LocalServer(spec) as server:
            pin_group(server.pid, {server_cpu})
            server.wait_ready(["ground_truth"], 120)
            pin_group(server.pid, {server_cpu})
            for users in [int(v) for v in args.concurrency.split(",")]:
                tk, pa = [], []
                for rep in range(args.repeat):
                    pa.append(run_pa(args.pa, spec.grpc_url, users, args.seconds, args.chunks, client_cpu, tmp))
                    tk.append(run_tritonkit(spec.grpc_url, users, args.seconds, args.chunks, client_cpu,
                                            args.workers, tmp / f"tk-{users}-{rep}"))
                    t, p = tk[-1], pa[-1]
                    print(f"{users:4d} users run {rep + 1}: tritonkit {t['rps']:7.1f} req/s p50 {t['p50'] * 1000:6.2f} ms | "
                          f"perf_analyzer {p['rps']:7.1f} req/s p50 {p['p50'] * 1000:6.2f} ms | "
                          f"ratio {t['rps'] / p['rps']:.2f}x rps, {t['p50'] / p['p50']:.2f}x p50 | "
                          f"tritonkit CPU in step {t['cpu_in_step_s'] or 0:.2f} s | {t['note']}", flush=True)
                rows.append((users, tk, pa))
    print()
    print(f"| users | tritonkit req/s | perf_analyzer req/s | ratio | tritonkit p50 ms | perf_analyzer p50 ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for users, tk, pa in rows:
        t_rps, p_rps = statistics.median(r["rps"] for r in tk), statistics.median(r["rps"] for r in pa)
        t_p50, p_p50 = statistics.median(r["p50"] for r in tk), statistics.median(r["p50"] for r in pa)
        print(f"| {users} | {t_rps:.1f} | {p_rps:.1f} | {t_rps / p_rps:.2f}x | {t_p50 * 1000:.2f} | "
              f"{p_p50 * 1000:.2f} | {t_p50 / p_p50:.2f}x |")
    print(f"(median of {args.repeat} runs each; Triton on CPU {server_cpu}, generators on CPU {client_cpu}; "
          f"{args.chunks} chunks per request at once; {args.seconds:g} s per run)")


if __name__ == "__main__":
    main()

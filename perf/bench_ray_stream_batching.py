"""Does Ray Serve's per-chunk streaming cost set its throughput ceiling? Same model, same load.

tritonkit deploys Ray Serve LLM with `stream_batching_interval_ms: 0` (every token is its own
chunk, so TTFT and ITL are comparable with Triton's and vLLM's). Ray's default batches chunks
every 50 ms. Each chunk crosses two actor hops (LLMServer -> ingress -> HTTP proxy), so a
per-chunk cost would cap requests/s well below the engine's own ceiling -- a suspect for Ray's
low GPU ceiling (perf/results/compare-h100-ray.md). This runs, on the tiny CPU model:
  - standalone vLLM (its own OpenAI server): the engine's ceiling, the peer;
  - Ray Serve with each stream-batching interval given;
all closed loop at the same users, and prints req/s, TTFT/e2e p50 and the chunks per request.
The generator runs at a higher CPU priority (nice -10 in a session of its own: with the kernel's
autogroups, nice counts only within a session, and Ray's processes run in sessions of their own):
on a small machine the servers fill every core, and a starved client would measure itself (its
verdict says so).

    .venv/bin/python perf/bench_ray_stream_batching.py [--intervals 0,50] [--users 16] [--seconds 20]
        [--output-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _priority(nice: int) -> None:
    """In the child: a session (so an autogroup) of its own, at `nice` both as a process and as a group."""
    os.setsid()
    try:
        os.nice(nice)
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # not allowed here: the generator runs at the default priority


def perf(url: str, users: int, seconds: float, out_tokens: int, out: Path, nice: int) -> dict:
    cmd = [sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url", url, "--model", "tiny",
           "--concurrency", str(users), "--duration", f"{seconds:g}", "--warmup", "3", "--input-tokens", "32",
           "--output-tokens", str(out_tokens), "--json", "--out", str(out)]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 6 + 300,
                         preexec_fn=lambda: _priority(nice))
    if got.returncode != 0:
        raise SystemExit(f"perf failed: {got.stderr[-2000:]}")
    step = json.loads(got.stdout)["steps"][0]
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line.strip()]
    chunks = [len(r["chunks_s"]) for r in rows if r.get("type") == "request" and r.get("chunks_s") is not None]
    lat = step["latency_s"]
    tails = sorted(r["ended_s"] - r["done_s"] for r in rows
                   if r.get("type") == "request" and r.get("ended_s") is not None and r.get("done_s") is not None)
    return {"tail_p50": tails[len(tails) // 2] if tails else None, "rps": step["requests_per_s"], "ttft_p50": lat["ttft"]["p50"], "e2e_p50": lat["e2e"]["p50"],
            "chunks": sum(chunks) / len(chunks) if chunks else None, "ok": step["ok"],
            "limited": step["client_limited"], "note": step["client_note"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intervals", default="0,50", help="Ray stream_batching_interval_ms values, comma-separated")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--client-nice", type=int, default=-10, help="nice value of the generator (0: as the servers)")
    args = ap.parse_args()

    from tritonkit import serving
    from tritonkit.runtime import ray_config
    from tritonkit.runtime.base import RuntimeOptions
    from tritonkit.runtime.spec import ServerSpec, free_port
    from tritonkit.tinymodel import build_tiny_llama

    tmp = Path(tempfile.mkdtemp(prefix="tk-ray-batching-"))
    os.environ.setdefault("TRITONKIT_HOME", str(tmp / "home"))
    os.environ["HOME"] = str(tmp / "user")  # Ray writes its auth token under ~/.ray
    base = build_tiny_llama(tmp / "tiny")
    repo = tmp / "repo"
    got = subprocess.run([sys.executable, "-m", "tritonkit", "build", str(base), "--gpu", "cpu", "--name", "tiny",
                          "-o", str(repo)], capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(got.stderr)
    original = ray_config.serve_config
    rows = []

    def run(label: str, runtime: str) -> None:
        spec = ServerSpec(repository=repo, name=f"bench-{runtime}-{os.getpid()}", http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
        server, record = serving.start(spec, runtime, 900, RuntimeOptions(say=lambda m: None))
        try:
            row = perf(spec.http_url, args.users, args.seconds, args.output_tokens, tmp / f"perf-{len(rows)}",
                       args.client_nice)
        finally:
            server.stop()
        rows.append((label, row, record.ready_s))
        print(f"{label:28s} {row['rps']:7.2f} req/s  TTFT p50 {row['ttft_p50'] * 1000:7.1f} ms  "
              f"e2e p50 {row['e2e_p50'] * 1000:7.1f} ms  chunks/request {row['chunks'] or 0:5.1f}  "
              f"ready {record.ready_s:5.1f} s  body end after [DONE] p50 {(row['tail_p50'] or 0) * 1000:5.1f} ms",
              flush=True)
        print(f"{'':28s} client: {row['note']}", flush=True)

    if not args.skip_vllm:
        run("vLLM (its OpenAI server)", "vllm")
    for interval in [float(x) for x in args.intervals.split(",") if x]:
        def patched(builds, options, engine_args=None, _ms=interval):
            options.stream_batching_interval_ms = _ms
            return original(builds, options, engine_args)

        ray_config.serve_config = patched
        try:
            run(f"Ray Serve, batching {interval:g} ms", "ray")
        finally:
            ray_config.serve_config = original
    print(f"\n{args.users} users closed loop, {args.output_tokens} output tokens, {args.seconds:g} s measured; "
          f"{os.cpu_count()} cores; tiny random-weight model on the CPU; generator at nice {args.client_nice}")


if __name__ == "__main__":
    main()

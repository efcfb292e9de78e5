"""GPU reality check: the seed's classification workload on a real GPU, tritonkit-Triton vs standalone vLLM.

On any machine with an NVIDIA GPU and vLLM installed (CUDA build), this script:

1. detects the GPU (nvidia-smi, else torch) and picks the matching tritonkit profile (H100 -> h100);
2. `tritonkit build llama2-7b --gpu <profile> --random-weights` (the exact architecture, random
   weights: with the output length fixed, latency and throughput are the real model's);
3. `tritonkit serve --runtime local` on that repository (real Triton + tritonkit's vllm backend);
4. runs the seed's classification preset (perf/presets/classification.json: ~100 input tokens,
   6 output tokens, ignore_eos) over gRPC as an open-loop rate sweep and a closed-loop concurrency
   sweep (each sweep stops at the first step that misses p90 e2e <= 1 s, or when throughput stops
   growing);
5. stops Triton, starts standalone vLLM's own OpenAI server with the same engine arguments
   (model.json -> `python -m vllm.entrypoints.openai.api_server ...`) and runs the same load
   through tritonkit's OpenAI protocol;
6. prints one table (max RPS at p90 e2e < 1 s, p90 e2e at the seed's 10/20/40 RPS, TTFT p50/p90,
   output tokens/s, $/1K tokens at the profile's price, tritonkit-Triton / standalone vLLM) and
   writes gpu_reality.json and gpu_reality.md to --out.

Steps are kept short (--window 3 s windows, at most --max-step 12 s a step, 2 s warm-up) because
GPU time is scarce; the seed ran 10 minutes a rate. Latency is timed from each request's intended
send time; a step the generator could not keep up with is flagged client-limited.

    python perf/gpu_reality.py --out results/gpu-reality            # everything, GPU auto-detected
    python perf/gpu_reality.py --phase triton|vllm|report ...      # one part (same --work)
    python perf/gpu_reality.py --model tiny-llama --gpu cpu ...    # the same flow on a CPU (a test)

How it was run on the lent H100 (nvidia-h100-x1, 2026-11-25; no network there, so the wheels were
carried in <= 60 MiB pieces). Here, once:

    perf/device_bundle.sh            # .whl/p1 .whl/p2 .whl/p3: trimmed vLLM 0.25.0 + deps + nvidia-pytriton

then three `run` calls back to back (the machine is given back after 30 s idle), each carrying one
piece (carry [".whl/p1"], [".whl/p2"], [".whl/p3"]):

    bash perf/device_run.sh p1   # stash; report the image; write the random llama2-7b (30 s, on the GPU)
    bash perf/device_run.sh p2   # install vLLM + deps (pip --no-index --no-deps); build; vLLM phase
    bash perf/device_run.sh p3   # tritonkit runtime --from-wheel; Triton phase; the table

(On the day, p2's vLLM engine failed on the missing flashinfer; the vLLM phase was rerun on the
same machine with VLLM_USE_FLASHINFER_SAMPLER=0 -- now exported by device_run.sh -- as
`python3 perf/gpu_reality.py --out $OUT --work /root/gpu-reality --phase vllm --rates
10,20,40,80,160,320 --concurrency 1,8,32,128 --window 3 --max-step 12 --warmup 2 --start-timeout 300`,
then p3 ran as above.) The result: perf/results/gpu-reality-h100.md (table) and .json (every step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = {  # ../shared/reference/seed-benchmarks.csv, llama_7b, class task (10-minute Vegeta runs)
    "triton_vllm_a10": {"server": "Triton + vLLM", "gpu": "A10G", "rps": 10.0, "p90_s": 0.742,
                        "cost_per_1k": 0.0004337607},
    "vllm_a100": {"server": "vLLM", "gpu": "A100 40GB", "rps": 20.0, "p90_s": 0.283, "cost_per_1k": 0.0005373932},
}
SEED_RATES = (10.0, 20.0, 40.0)
SLO_S = 1.0
SERVER_NAME = "gpu-reality"

GPU_PROFILES = [  # (substring of nvidia-smi's name, memory hint in MiB or None, profile)
    ("H200", None, "h200"), ("H100", None, "h100"), ("A100", 60000, "a100-80gb"), ("A100", 0, "a100-40gb"),
    ("A10", None, "a10"), ("L4", None, "l4"), ("T4", None, "t4"),
]


def say(msg: str) -> None:
    print(f"[gpu-reality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- GPU

def detect_gpu() -> dict:
    """name, memory, driver and count of the GPUs: nvidia-smi, else torch; {} without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
        if out.returncode == 0 and rows:
            return {"name": rows[0][0], "memory_mib": int(float(rows[0][1])), "driver": rows[0][2],
                    "count": len(rows), "source": "nvidia-smi"}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "memory_mib": p.total_memory // 2**20, "driver": None,
                    "count": torch.cuda.device_count(), "source": "torch"}
    except Exception:  # noqa: BLE001 - no torch / no CUDA: no GPU
        pass
    return {}


def profile_for(gpu: dict) -> str | None:
    name = gpu.get("name", "").upper()
    for key, min_mib, profile in GPU_PROFILES:
        if key in name and (min_mib is None or gpu.get("memory_mib", 0) >= min_mib):
            if key == "A10" and "A100" in name:
                continue
            return profile
    return None


# ---------------------------------------------------------------- processes

def tritonkit(args: list[str], log: Path, env: dict | None = None, timeout: float = 1800) -> None:
    """Run `python -m tritonkit ARGS`, output appended to `log`; raise with the log's tail on failure."""
    with open(log, "a") as f:
        f.write(f"\n$ tritonkit {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "tritonkit", *args], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"tritonkit {args[0]} failed (exit {proc.returncode}); last lines of {log}:\n" + tail(log))


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def engine_cli(args: dict, served_name: str, port: int) -> list[str]:
    """model.json (AsyncEngineArgs) -> the OpenAI server's command line, the same engine arguments."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", served_name]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is False or value is None:
            continue  # False is the OpenAI server's default for every flag model.json sets
        else:
            cmd += [flag, str(value)]
    return cmd


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited (code {proc.returncode}) before it was ready:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"no answer from {url} within {timeout_s:.0f} s:\n{tail(log)}")


def stop_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---------------------------------------------------------------- load

def sweep(label: str, kind: str, values: str, common: dict, perf_dir: Path) -> dict:
    """One sweep through tritonkit's load generator; returns its summary document."""
    from tritonkit.perf import session

    opts = session.Options(preset="classification", **{kind: values}, out=str(perf_dir / label), **common)
    plan = session.resolve(opts, say=lambda m: say(f"{label}: {m}"))
    say(f"{label}: {kind} {values} against {plan.url} ({plan.protocol}), {plan.workload.describe()}")
    doc, files, result = session.execute(plan)
    for s in doc["steps"]:
        lat = s["latency_s"]
        say(f"  {s['label']:>16}: {s['requests_per_s']:7.2f} req/s ok {s['ok']} failed {s['failed']}  "
            f"p90 e2e {_f(lat['e2e']['p90'])} s  ttft p50 {_f(lat['ttft']['p50'])} p90 {_f(lat['ttft']['p90'])} s  "
            f"out {s['output_tokens_per_s']:.0f} tok/s{'  CLIENT-LIMITED' if s['client_limited'] else ''}")
    if doc.get("stop_reason"):
        say(f"  stopped: {doc['stop_reason']}")
    if result.status != "ok":
        say(f"  run {result.status}: {result.message}")
    return doc


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def measure(server: str, common: dict, args, perf_dir: Path) -> dict:
    return {"rate": sweep(f"{server}-rate", "rate", args.rates, common, perf_dir),
            "concurrency": sweep(f"{server}-concurrency", "concurrency", args.concurrency, common, perf_dir)}


def sweep_opts(args) -> dict:
    return {"window_s": args.window, "max_step_s": args.max_step, "warmup_s": args.warmup,
            "timeout_s": 60.0, "gpu": args.profile}


# ---------------------------------------------------------------- the phases

def phase_build(args, work: Path, state: dict) -> dict:
    repo = work / "repo"
    if (args.skip_build or "build" not in args.phases) and (repo / args.model / "build.json").exists():
        say(f"build: reusing {repo / args.model}")
    else:
        extra = [] if args.model_builtin else ["--random-weights"]
        say(f"build: {args.model} --gpu {args.profile} {' '.join(extra)} -> {repo}")
        t0 = time.monotonic()
        tritonkit(["build", args.model, "--gpu", args.profile, *extra, "-o", str(repo), "--force"], work / "build.log")
        state["build_s"] = round(time.monotonic() - t0, 1)
        say(f"build: done in {state['build_s']:.0f} s")
    build = json.loads((repo / args.model / "build.json").read_text())
    state["build"] = {k: build[k] for k in ("model", "gpu", "plan", "engine_args", "runtime_env")}
    return build


def phase_triton(args, work: Path, state: dict) -> None:
    from tritonkit.runtime.spec import free_port

    log = work / "triton.log"
    repo = work / "repo"
    ports = [str(free_port()) for _ in range(3)]
    tritonkit(["stop", "--all"], log)
    say("triton: tritonkit serve --runtime local --detach ...")
    t0 = time.monotonic()
    tritonkit(["serve", "-r", str(repo), "--runtime", "local", "--detach", "--name", SERVER_NAME,
               "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2],
               "--timeout", str(args.start_timeout)], log)
    state["triton_ready_s"] = round(time.monotonic() - t0, 1)
    say(f"triton: ready in {state['triton_ready_s']} s")
    try:
        common = {"repository": str(repo), "model": args.model, "protocol": "grpc",
                  "url": f"127.0.0.1:{ports[1]}", **sweep_opts(args)}
        state["triton"] = measure("triton", common, args, work / "perf")
    finally:
        tritonkit(["stop", "--name", SERVER_NAME], log)
        _copy_server_log(work)


def _copy_server_log(work: Path) -> None:
    from tritonkit.paths import home

    src = home() / "servers" / SERVER_NAME / "server.log"
    if src.exists():
        shutil.copyfile(src, work / "triton-server.log")


def phase_vllm(args, work: Path, state: dict) -> None:
    from tritonkit.runtime.spec import free_port

    repo = work / "repo"
    build = json.loads((repo / args.model / "build.json").read_text())
    engine_args = json.loads((repo / args.model / "1" / "model.json").read_text())
    port = free_port()
    cmd = engine_cli(engine_args, args.model, port)
    log = work / "vllm-server.log"
    env = {**os.environ, **{k: str(v) for k, v in build.get("runtime_env", {}).items()}}
    say(f"vllm: {' '.join(cmd[1:])}")
    state["vllm_command"] = " ".join(["python", *cmd[1:]])
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work,
                                start_new_session=True)
    (work / "vllm-server.pid").write_text(str(proc.pid))  # its process group, should this script be killed
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, args.start_timeout, log)
        state["vllm_ready_s"] = round(time.monotonic() - t0, 1)
        say(f"vllm: ready in {state['vllm_ready_s']} s")
        common = {"repository": str(repo), "model": args.model, "protocol": "openai",
                  "url": f"http://127.0.0.1:{port}", **sweep_opts(args)}
        state["vllm"] = measure("vllm", common, args, work / "perf")
    finally:
        stop_group(proc)
        (work / "vllm-server.pid").unlink(missing_ok=True)


# ---------------------------------------------------------------- the table

def _steps(server: dict | None) -> list[dict]:
    if not server:
        return []
    return [s for sweep_doc in server.values() for s in sweep_doc.get("steps", [])]


def _meets(s: dict) -> bool:
    p90 = s["latency_s"]["e2e"]["p90"]
    return s["ok"] > 0 and s["failed"] == 0 and p90 is not None and p90 < SLO_S


def _step(server: dict | None, kind: str, value: float) -> dict | None:
    sweep_doc = (server or {}).get("rate" if kind == "rate" else "concurrency", {})
    return next((s for s in sweep_doc.get("steps", []) if abs(s["value"] - value) < 1e-6), None)


def _top(text: str) -> float:
    from tritonkit.perf.schedules import parse_values

    return max(parse_values(str(text)))


def headline(server: dict | None, price: float | None, rates: str, concurrency: str) -> dict:
    """The numbers of one server's table column."""
    from tritonkit.perf.cost import seed_cost_per_1k

    steps = _steps(server)
    good = [s for s in steps if _meets(s)]
    best = max(good, key=lambda s: s["requests_per_s"], default=None)
    out: dict = {"max_rps_at_slo": None, "best_step": None,
                 # No step missed the SLO: the sweeps stopped at their top load, so the maximum is higher.
                 "max_is_lower_bound": bool(steps) and all(_meets(s) for s in steps)}
    if best is not None:
        lat = best["latency_s"]
        out.update({
            "max_rps_at_slo": best["requests_per_s"], "best_step": f"{best['kind']} {best['label']}",
            "best_step_client_limited": best["client_limited"],
            "p90_e2e_at_best_s": lat["e2e"]["p90"], "ttft_p50_at_best_s": lat["ttft"]["p50"],
            "ttft_p90_at_best_s": lat["ttft"]["p90"], "output_tokens_per_s_at_best": best["output_tokens_per_s"],
            "mean_input_tokens": best["mean_input_tokens"], "mean_output_tokens": best["mean_output_tokens"],
            "cost_per_1k_tokens_at_best": (seed_cost_per_1k(price, best["requests_per_s"], best["mean_input_tokens"],
                                                            best["mean_output_tokens"]) if price else None),
        })
    points = [("rate", r, f"{r:g}_rps") for r in SEED_RATES]
    points += [("rate", _top(rates), "top_rate"), ("concurrency", _top(concurrency), "top_concurrency")]
    for kind, value, key in points:
        s = _step(server, kind, value)
        lat = s["latency_s"] if s else {}
        out[f"rps_at_{key}"] = s["requests_per_s"] if s else None
        out[f"p90_e2e_at_{key}_s"] = lat["e2e"]["p90"] if s else None
        out[f"ttft_p50_at_{key}_s"] = lat["ttft"]["p50"] if s else None
        out[f"ttft_p90_at_{key}_s"] = lat["ttft"]["p90"] if s else None
        out[f"output_tokens_per_s_at_{key}"] = s["output_tokens_per_s"] if s else None
        out[f"cost_per_1k_tokens_at_{key}"] = (seed_cost_per_1k(price, s["requests_per_s"], s["mean_input_tokens"],
                                                                s["mean_output_tokens"]) if s and price else None)
    out["client_limited_steps"] = [f"{s['kind']} {s['label']}" for s in steps if s["client_limited"]]
    out["failed_requests"] = sum(s["failed"] for s in steps)
    return out


def _rows(state: dict) -> list[tuple[str, str, str, bool]]:
    """(label, key, format, ratio meaningful); the 'at max RPS' rows compare different loads when the
    two servers' best steps differ, so their ratio is left out then."""
    r, c = _top(state.get("rates", "320")), _top(state.get("concurrency", "128"))
    t, v = state.get("headline", {}).get("triton", {}), state.get("headline", {}).get("vllm", {})
    same_best = t.get("best_step") is not None and t.get("best_step") == v.get("best_step")
    both_found = not (t.get("max_is_lower_bound") or v.get("max_is_lower_bound"))
    return [
        ("max RPS at p90 e2e < 1 s", "max_rps_at_slo", "{:.1f}", both_found),
        ("  reached at", "best_step", "{}", False),
        ("p90 e2e at 10 RPS (s)", "p90_e2e_at_10_rps_s", "{:.3f}", True),
        ("p90 e2e at 20 RPS (s)", "p90_e2e_at_20_rps_s", "{:.3f}", True),
        ("p90 e2e at 40 RPS (s)", "p90_e2e_at_40_rps_s", "{:.3f}", True),
        ("TTFT p50 / p90 at 40 RPS (s)", ("ttft_p50_at_40_rps_s", "ttft_p90_at_40_rps_s"), "{:.3f}", True),
        (f"p90 e2e at {r:g} RPS, open loop (s)", "p90_e2e_at_top_rate_s", "{:.3f}", True),
        (f"TTFT p50 / p90 at {r:g} RPS (s)", ("ttft_p50_at_top_rate_s", "ttft_p90_at_top_rate_s"), "{:.3f}", True),
        (f"output tokens/s at {r:g} RPS", "output_tokens_per_s_at_top_rate", "{:.0f}", True),
        (f"req/s at concurrency {c:g}, closed loop", "rps_at_top_concurrency", "{:.1f}", True),
        (f"p90 e2e at concurrency {c:g} (s)", "p90_e2e_at_top_concurrency_s", "{:.3f}", True),
        (f"TTFT p50 / p90 at concurrency {c:g} (s)",
         ("ttft_p50_at_top_concurrency_s", "ttft_p90_at_top_concurrency_s"), "{:.3f}", True),
        (f"output tokens/s at concurrency {c:g}", "output_tokens_per_s_at_top_concurrency", "{:.0f}", True),
        (f"$/1K tokens at concurrency {c:g}", "cost_per_1k_tokens_at_top_concurrency", "{:.7f}", True),
        ("output tokens/s at max RPS", "output_tokens_per_s_at_best", "{:.0f}", same_best),
        (f"$/1K tokens at max RPS (${state.get('price_per_hour')}/h)", "cost_per_1k_tokens_at_best", "{:.7f}", same_best),
    ]


def _cell(col: dict, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    vals = [col.get(k) for k in keys]
    if all(v is None for v in vals):
        return "-"
    text = " / ".join("-" if v is None else fmt.format(v) for v in vals)
    if key == "max_rps_at_slo" and col.get("max_is_lower_bound"):
        text = ">= " + text
    return text


def _ratio(a: dict, b: dict, key) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    parts = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if not (isinstance(x, (int, float)) and isinstance(y, (int, float)) and y):
            return "-"
        parts.append(f"{x / y:.2f}")
    return " / ".join(parts)


def table(state: dict) -> str:
    price = state.get("price_per_hour")
    t, v = state.get("headline", {}).get("triton", {}), state.get("headline", {}).get("vllm", {})
    head = ["metric", "tritonkit-Triton", "standalone vLLM", "Triton / vLLM"]
    rows = []
    for label, key, fmt, comparable in _rows(state):
        rows.append([label, _cell(t, key, fmt), _cell(v, key, fmt), _ratio(t, v, key) if comparable else ""])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    b = state.get("build", {})
    gpu = state.get("gpu", {})
    notes = [
        f"{state.get('model')} ({'RANDOM weights, ' if b.get('model', {}).get('random_weights') else ''}"
        f"{b.get('plan', {}).get('dtype', '?')}, max_num_seqs {b.get('plan', {}).get('max_num_seqs', '?')}) on "
        f"{gpu.get('name', '?')} (driver {gpu.get('driver', '?')}), profile {state.get('profile')} at ${price}/h "
        f"({state.get('price_source')}); vLLM {state.get('versions', {}).get('vllm')}, "
        f"torch {state.get('versions', {}).get('torch')}",
        "workload: the seed's classification preset (100 input tokens, 6 output tokens, ignore_eos, all counted "
        "by the servers); Triton over gRPC streaming, vLLM over its OpenAI completions stream, same client; "
        f"open-loop rate sweep {state.get('rates')} req/s and closed-loop concurrency sweep {state.get('concurrency')}, "
        f"steps of <= {state.get('max_step_s')} s (ended early once 3 × {state.get('window_s')} s windows agree) "
        f"after {state.get('warmup_s')} s warm-up",
        "max RPS: the highest achieved req/s of any step (either sweep) with p90 e2e < 1 s and no failed request; "
        "'>=' means no step missed that SLO, so the true maximum is higher than the sweeps reached; "
        "$/1K tokens: the seed's formula on measured req/s and server-counted tokens",
        f"servers ready in: Triton {state.get('triton_ready_s', '-')} s, vLLM {state.get('vllm_ready_s', '-')} s",
    ]
    for server in ("triton", "vllm"):
        col = state.get("headline", {}).get(server, {})
        if col.get("client_limited_steps"):
            notes.append(f"{server}: client-limited steps (the generator, not the server, set the pace): "
                         f"{', '.join(col['client_limited_steps'])}")
        if col.get("failed_requests"):
            notes.append(f"{server}: {col['failed_requests']} failed requests")
    notes.append(f"seed (10-minute runs): Triton+vLLM on an A10: 10 RPS at p90 {SEED['triton_vllm_a10']['p90_s']} s; "
                 f"vLLM on an A100: 20 RPS at p90 {SEED['vllm_a100']['p90_s']} s")
    return "\n".join(out + [""] + [f"- {n}" for n in notes])


def versions() -> dict:
    found = {}
    for mod in ("vllm", "torch", "transformers"):
        try:
            found[mod] = __import__(mod).__version__
        except Exception as err:  # noqa: BLE001
            found[mod] = f"not importable: {type(err).__name__}"
    return found


def phase_report(state: dict, out: Path) -> str:
    price = state.get("price_per_hour")
    state["headline"] = {s: headline(state.get(s), price, state.get("rates", "10"), state.get("concurrency", "1"))
                         for s in ("triton", "vllm")}
    text = table(state)
    (out / "gpu_reality.md").write_text("# GPU reality check\n\n" + text + "\n")
    return text


def save(state: dict, work: Path, out: Path) -> None:
    (work / "state.json").write_text(json.dumps(state, indent=2, default=str))
    (out / "gpu_reality.json").write_text(json.dumps(state, indent=2, default=str))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-reality-results", help="results: gpu_reality.json, gpu_reality.md")
    ap.add_argument("--work", default=None, help="repository, perf reports and logs (default: OUT/work)")
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--gpu", default="auto", help="tritonkit GPU profile, or auto (from nvidia-smi)")
    ap.add_argument("--rates", default="10,20,40,80,160,320,640")
    ap.add_argument("--concurrency", default="1,4,16,64,256")
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--max-step", type=float, default=12.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--phase", default="all",
                    help="all, or a comma list of build, triton, vllm, report (state kept in WORK/state.json)")
    ap.add_argument("--skip-build", action="store_true", help="reuse WORK/repo if it holds the model")
    ap.add_argument("--fresh", action="store_true", help="forget WORK/state.json")
    args = ap.parse_args(argv)
    # `timeout` sends SIGTERM: unwind (stop the servers, write what was measured) instead of dying.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.phases = ["build", "triton", "vllm", "report"] if args.phase == "all" else args.phase.split(",")
    if set(args.phases) - {"build", "triton", "vllm", "report"}:
        ap.error(f"unknown phase in {args.phase!r}")
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITONKIT_HOME", str(work / "tritonkit-home"))

    from tritonkit import catalog, gpus

    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and not args.fresh else {}
    if args.phases == ["report"] and state.get("profile"):  # a report of a finished run: keep its record
        phase_report(state, out)
        save(state, work, out)
        print(table(state), flush=True)
        return 0
    gpu = detect_gpu()
    profile = args.gpu if args.gpu != "auto" else profile_for(gpu)
    if profile is None:
        raise SystemExit(f"no GPU profile for {gpu.get('name') or 'this machine (no GPU found)'}: pass --gpu PROFILE")
    args.profile = profile
    args.model_builtin = catalog.resolve(args.model).builtin
    prof = gpus.get_profile(profile)
    state.update({"model": args.model, "gpu": gpu, "profile": profile, "price_per_hour": prof.price_per_hour,
                  "price_source": prof.instance, "rates": args.rates, "concurrency": args.concurrency,
                  "window_s": args.window, "max_step_s": args.max_step, "warmup_s": args.warmup,
                  "versions": versions(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])})
    say(f"GPU: {gpu or 'none'} -> profile {profile} (${prof.price_per_hour}/h); versions {state['versions']}")
    t0 = time.monotonic()
    try:
        if {"build", "triton", "vllm"} & set(args.phases):
            phase_build(args, work, state)
            save(state, work, out)
        for name, phase in (("triton", phase_triton), ("vllm", phase_vllm)):
            if name in args.phases:
                try:
                    phase(args, work, state)
                finally:
                    save(state, work, out)
    finally:
        state.setdefault("elapsed_s", {})[args.phase] = round(time.monotonic() - t0, 1)
        text = phase_report(state, out)
        save(state, work, out)
        if "report" in args.phases or args.phase == "all":
            print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

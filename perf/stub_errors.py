"""Does the backend stub's memory grow with failed requests? (A benchmark; a slow test runs it short.)

The hour-long soak before supervision saw the Python backend stub grow ~21 KiB per failed request
once the engine was dead. This starts a local server on the tiny model, sends a warm-up of
successful and failing requests, then N failing requests of each kind through the backend's error
paths and prints the stub's and Triton's resident memory before and after (anonymous and shared
memory apart: the Python backend passes responses through shared memory, which RSS counts).

  bad_json     sampling_parameters that are not JSON (refused in execute)
  engine_error max_tokens 0 (refused by vLLM, relayed from the engine)
  stream_echo  streaming with the prompt in the output (refused before reaching the engine)
  engine_down  the engine killed with TRITONKIT_ENGINE_MAX_RESTARTS=0: the model is unloaded and
               its reload refused, so Triton refuses the requests (measures Triton; no stub left)

The soak's leak itself (asyncio's drain() re-raising one exception whose traceback kept every
failed request's frames) is reproduced without a server in tests/test_backend_model_units.py.

    PYTHONPATH=. .venv/bin/python perf/stub_errors.py [--requests 400] [--kinds bad_json,...] [--out DIR]

Prints one line per kind: KiB per request of the stub (rss, anon, shmem) and of Triton; writes
stub_errors.json to --out. Exit 1 when the stub grew more than --limit-kib per request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("bad_json", "engine_error", "stream_echo", "engine_down")
SAMPLING = {"bad_json": b"{max_tokens: 4", "engine_error": b'{"max_tokens": 0}', "stream_echo": b'{"max_tokens": 4}',
            "engine_down": b'{"max_tokens": 4}', "ok": b'{"max_tokens": 2, "ignore_eos": true}'}


def memory_kib(pid: int | None) -> dict[str, int]:
    """RSS and its parts (kB) from /proc/<pid>/status (0 for no process)."""
    out = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    if pid is None:
        return out
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return found


def find(pid: int, word: str) -> int | None:
    """The first descendant of pid whose command line holds word."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            if word in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"):
                return p
        except OSError:
            pass
        todo.extend(children(p))
    return None


def send(grpc_url: str, kind: str, n: int, timeout_s: float = 120.0) -> dict[str, int]:
    """n requests of a kind over one stream; how many came back ok / failed."""
    import tritonclient.grpc as grpcclient

    def tensor(name, value, dtype="BYTES"):
        array = np.array(value, dtype=np.object_ if dtype == "BYTES" else bool)
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    got = {"ok": 0, "failed": 0}
    finals = []

    def on_response(result, error):
        if error is not None:
            got["failed"] += 1
            finals.append(1)
        elif result.get_response(as_json=True).get("parameters", {}).get("triton_final_response", {}).get("bool_param"):
            got["ok"] += 1
            finals.append(1)

    inputs = [tensor("text_input", [b"memory"]), tensor("sampling_parameters", [SAMPLING[kind]]),
              tensor("stream", [kind == "stream_echo"], "BOOL")]
    if kind == "stream_echo":
        inputs.append(tensor("exclude_input_in_output", [False], "BOOL"))
    with grpcclient.InferenceServerClient(grpc_url) as client:
        client.start_stream(on_response)
        for i in range(n):
            client.async_stream_infer("tiny", inputs=inputs, request_id=f"{kind}-{i}", enable_empty_final_response=True)
            while len(finals) < i + 1 - 16:  # at most 16 at once
                time.sleep(0.002)
        deadline = time.monotonic() + timeout_s
        while len(finals) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        client.stop_stream()
    return got


def model_state(http_port: int, model: str) -> str | None:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return next((m.get("state") for m in json.load(resp) if m.get("name") == model), None)


def tk(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonkit", *args], env=env, text=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="failing requests of each kind")
    ap.add_argument("--warmup", type=int, default=100, help="requests of each kind before the first measurement")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--limit-kib", type=float, default=2.0, help="stub growth per failed request that fails the run")
    ap.add_argument("--out", default="perf-results/stub-errors")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from tritonkit.runtime.spec import free_port
    from tritonkit.tinymodel import build_tiny_llama

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITONKIT_ENGINE_MAX_RESTARTS": "0"}
    if not (out / "repo" / "tiny").is_dir():
        build_tiny_llama(out / "tiny")
        got = tk(env, "build", str(out / "tiny"), "--gpu", "cpu", "--name", "tiny", "-o", str(out / "repo"))
        if got.returncode:
            sys.exit(f"build failed: {got.stderr.strip()}")
    name, http, grpc = f"stub-errors-{os.getpid()}", free_port(), free_port()
    got = tk(env, "serve", "-r", str(out / "repo"), "--runtime", "local", "--name", name, "--detach",
             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(free_port()))
    if got.returncode:
        sys.exit(f"serve failed: {got.stderr.strip()}")
    from tritonkit.runtime import state

    results = {}
    try:
        triton = state.load(name).pid
        stub = find(triton, "triton_python_backend_stub")
        url = f"127.0.0.1:{grpc}"
        send(url, "ok", args.warmup)
        for kind in kinds:
            if kind == "engine_down":
                engine = find(stub, "tritonkit.backend.engine")
                os.killpg(engine, signal.SIGKILL)
                # Noticed within 1 s; under explicit model control (the local runtime) the model
                # is unloaded and its reload refused (no restart allowed): no stub, Triton itself
                # refuses the requests. Measured once the refused reload has settled.
                settled = time.monotonic() + 300
                while model_state(http, "tiny") != "UNAVAILABLE" and time.monotonic() < settled:
                    time.sleep(0.5)
                time.sleep(2)
                stub = find(triton, "triton_python_backend_stub")
            send(url, kind, args.warmup)
            before = {"stub": memory_kib(stub), "triton": memory_kib(triton)}
            counts = send(url, kind, args.requests)
            after = {"stub": memory_kib(stub), "triton": memory_kib(triton)}
            per = {proc: {k: round((after[proc][k] - before[proc][k]) / args.requests, 2) for k in before[proc]}
                   for proc in before}
            results[kind] = {"requests": args.requests, **counts, "before_kib": before, "after_kib": after,
                             "kib_per_request": per}
            print(f"{kind:>13}: {counts['failed']} failed, {counts['ok']} ok; KiB per request: stub rss "
                  f"{per['stub']['VmRSS']:+.2f} (anon {per['stub']['RssAnon']:+.2f}, shmem {per['stub']['RssShmem']:+.2f}), "
                  f"triton rss {per['triton']['VmRSS']:+.2f}; stub {before['stub']['VmRSS'] / 1024:.1f} -> "
                  f"{after['stub']['VmRSS'] / 1024:.1f} MiB", flush=True)
    finally:
        tk(env, "stop", "--name", name)
        (out / "stub_errors.json").write_text(json.dumps(results, indent=1) + "\n")
    worst = max((r["kib_per_request"]["stub"]["VmRSS"] for r in results.values()), default=0.0)
    return 0 if worst <= args.limit_kib and len(results) == len(kinds) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`tritonkit perf --workers N`: the run is split over processes, never reshaped.

Against the aiohttp ground-truth server (perf/sse_ground_truth.py, OpenAI SSE, known timings; no
Triton, no vLLM): the merged intended send times of an open-loop run are exactly the requested
schedule (same seed -> same offsets, same request numbers as one process), every request sent
is counted once, closed-loop users are dealt over the workers, and one worker starts no process.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonkit.perf import workers
from tritonkit.perf.runner import Share
from tritonkit.perf.schedules import Load, offsets
from tritonkit.runtime.spec import free_port

ROOT = Path(__file__).resolve().parent.parent
K = 3  # chunks per answer


@pytest.fixture(scope="module")
def sse_server():
    yield from _sse_server()


def _sse_server(*extra: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "perf" / "sse_ground_truth.py"), "--port", str(port),
                             "--first-ms", "10", "--gap-ms", "5", *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def _perf(url: str, out: Path, *args: str) -> tuple[dict, list[dict]]:
    p = subprocess.run([sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url", url,
                        "-m", "ground_truth", "--output-tokens", str(K), "--metrics-url", "none", "--json",
                        "--out", str(out), *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(out / "requests.csv", newline="") as f:
        return json.loads(p.stdout), list(csv.DictReader(f))


def test_a_server_slow_to_close_its_streams_is_not_the_clients_send_lag(tmp_path):
    """The server ends each body 40 ms after [DONE] (Ray Serve's proxy did ~30 ms on 2 cores): the
    user's next request waits for that (its connection), which is the server's tail, not the
    client's lag; E2E still ends at [DONE]."""
    server = _sse_server("--tail-ms", "40")
    url = next(server)
    try:
        doc, rows = _perf(url, tmp_path, "--concurrency", "2", "--duration", "2")
    finally:
        next(server, None)
    step = doc["steps"][0]
    lag, e2e = step["latency_s"]["send_lag"], step["latency_s"]["e2e"]
    assert lag["p50"] < 0.005 and not step["client_limited"], (lag, step["client_note"])
    assert e2e["p50"] < 0.010 + 0.005 * (K - 1) + 0.030, e2e  # [DONE], not the body's end 40 ms later
    samples = json.loads((tmp_path / "results.json").read_text())["steps"][0]["samples"]
    tails = sorted(r["ended_s"] - r["done_s"] for r in samples)
    assert 0.035 <= tails[len(tails) // 2] < 0.2, tails[:5]


def test_shares_partition_users_budgets_and_the_schedule():
    for of in (1, 2, 3, 7):
        shares = [Share(k, of) for k in range(of)]
        assert sum(s.users(10) for s in shares) == 10
        assert sum(s.budget(23) for s in shares) == 23
    sched = list(offsets(Load("poisson", 50), 2.0, seed=3))
    assert sched == list(offsets(Load("poisson", 50), 2.0, seed=3))  # same seed, same schedule
    merged = sorted(off for k in range(3) for i, off in enumerate(sched) if i % 3 == k)
    assert merged == sched


def test_auto_worker_count():
    assert workers.count("1", [Load("rate", 5000)]) == 1
    assert workers.count("4", [Load("rate", 1)]) == 4
    assert workers.count(None, [Load("rate", 10)]) == 1  # light loads: one process, as before
    assert workers.count(None, [Load("concurrency", 4)]) == 1
    assert 1 <= workers.count("auto", [Load("concurrency", 10_000)]) <= max(1, workers.cores() // 2)
    with pytest.raises(Exception, match="--workers must be"):
        workers.count("many", [Load("rate", 1)])
    with pytest.raises(Exception, match="at least 1"):
        workers.count("0", [Load("rate", 1)])


def _offsets_of(rows: list[dict]) -> list[tuple[int, float]]:
    first = min(float(r["intended_s"]) for r in rows)
    return sorted((int(r["index"]), round(float(r["intended_s"]) - first, 5)) for r in rows)


@pytest.mark.slow
def test_open_loop_merged_schedule_is_exactly_the_requested_one(sse_server, tmp_path):
    rate, duration, seed = 80, 2.0, 7
    want = [round(o, 5) for o in offsets(Load("poisson", rate), duration, seed=seed)]
    runs = {}
    for n in (1, 3):
        doc, rows = _perf(sse_server, tmp_path / f"w{n}", "--poisson", str(rate), "--duration", str(duration),
                          "--seed", str(seed), "--workers", str(n))
        step = doc["steps"][0]
        assert doc["workers"] == n and step["client_usage"]["workers"] == n
        assert step["sent"] == step["ok"] + step["failed"] == len(rows) == len(want)  # merged counts == sent
        assert step["ok"] == len(want) and step["output_tokens"] == K * len(want)
        got = _offsets_of(rows)
        assert [i for i, _ in got] == list(range(len(want)))  # request i of the schedule, once each
        assert [o for _, o in got] == pytest.approx([o - want[0] for o in want], abs=2e-5)
        runs[n] = got
    # one worker and three: the same requests at the same offsets
    assert [i for i, _ in runs[1]] == [i for i, _ in runs[3]]
    assert [o for _, o in runs[1]] == pytest.approx([o for _, o in runs[3]], abs=2e-5)


@pytest.mark.slow
def test_closed_loop_users_are_split_and_every_request_counted(sse_server, tmp_path):
    doc, rows = _perf(sse_server, tmp_path / "c", "--concurrency", "5", "--requests", "41", "--workers", "2")
    step = doc["steps"][0]
    assert step["sent"] == step["ok"] == len(rows) == 41 and step["failed"] == 0
    assert len({r["index"] for r in rows}) == 41
    # worker 0 numbers its requests 0, 2, 4...; worker 1: 1, 3, 5...: both sent (users 3 + 2)
    by_worker = {k: sum(int(r["index"]) % 2 == k for r in rows) for k in (0, 1)}
    assert by_worker[0] == 21 and by_worker[1] == 20
    # closed loop: throughput = users / E2E
    assert step["requests_per_s"] == pytest.approx(5 / step["latency_s"]["e2e"]["mean"], rel=0.35)


def test_rate_auto_probes_then_bisects_to_five_percent():
    from types import SimpleNamespace as Step

    from tritonkit.perf.autorate import AutoRate

    capacity = 137.0  # the server meets the SLO up to this rate; closed loop tops out at 150 req/s
    search, steps = AutoRate(), []
    while (load := search.next(steps)) is not None:
        if load.kind == "concurrency":
            steps.append(Step(kind=load.kind, value=load.value, rps=min(150.0, 20.0 * load.value),
                              slo_met=None, client_limited=False))
        else:
            steps.append(Step(kind=load.kind, value=load.value, rps=load.value,
                              slo_met=load.value <= capacity, client_limited=False))
    probes = [s.value for s in steps if s.kind == "concurrency"]
    assert probes == [4, 16, 64]  # 80 -> 150 grew, 150 -> 150 did not
    rates = [s.value for s in steps if s.kind == "rate"]
    assert rates[0] == 150.0 and len(rates) <= 8
    best = max(s.value for s in steps if s.kind == "rate" and s.slo_met)
    worst = min(s.value for s in steps if s.kind == "rate" and not s.slo_met)
    assert best <= capacity < worst and (worst - best) <= 0.05 * worst


@pytest.mark.slow
def test_rate_auto_end_to_end(sse_server, tmp_path):
    doc, _ = _perf(sse_server, tmp_path / "auto", "--rate", "auto", "--slo", "e2e:p90<=1s", "--window", "0.5",
                   "--max-step", "2", "--warmup", "0.2")
    kinds = [s["kind"] for s in doc["steps"]]
    assert kinds[0] == "concurrency" and "rate" in kinds
    assert doc["best_step"] and doc["best_step"].endswith("req/s")
    p = subprocess.run([sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url", sse_server,
                        "-m", "ground_truth", "--rate", "auto"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--rate auto needs an SLO" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_server_killed_mid_run_with_workers_keeps_partial_results(tmp_path):
    port = free_port()
    srv = subprocess.Popen([sys.executable, str(ROOT / "perf" / "sse_ground_truth.py"), "--port", str(port),
                            "--first-ms", "10", "--gap-ms", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    try:
        p = subprocess.Popen([sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url",
                              f"http://127.0.0.1:{port}", "-m", "ground_truth", "--rate", "40", "--duration", "120",
                              "--output-tokens", str(K), "--metrics-url", "none", "--workers", "2", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "sent" not in (line := p.stderr.readline()):
            assert p.poll() is None, line
        time.sleep(2)
        srv.kill()
        _, stderr = p.communicate(timeout=60)
    finally:
        srv.kill()
    assert p.returncode == 4 and "run failed" in stderr and "Traceback" not in stderr, stderr
    step = json.loads((out / "results.json").read_text())["steps"][0]
    assert step["ok"] >= 20 and step["ok"] + step["failed"] == step["sent"]

"""perf/soak.py: its pieces fast, and a 20-second soak on a real server (slow).

The real soak is an hour (`perf/soak.py`, not run in CI); this checks that it samples every role's
memory, kills the engine, accounts for every request and writes valid results."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tritonkit.perf import journal

SOAK = Path(__file__).resolve().parents[1] / "perf" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processes_are_sorted_into_roles(soak):
    assert soak.role_of("/x/bin/tritonserver --model-repository=/r") == "triton"
    assert soak.role_of("/x/backends/python/triton_python_backend_stub /r/tiny/1/model.py") == "stub"
    assert soak.role_of("/venv/bin/python -m tritonkit.backend.engine --model-json m") == "engine"
    assert soak.role_of("VLLM::EngineCore") == soak.role_of("VLLM::Worker") == "vllm"
    assert soak.role_of("/bin/bash") is None


def test_server_processes_include_descendants_in_groups_of_their_own(soak):
    """A supervised engine runs in its own process group: it is still the server's."""
    import subprocess as sp

    child = sp.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert child.pid in soak.server_pids(os.getpgid(0)) or child.pid in soak.server_pids(os.getpid())
        assert os.getpgid(child.pid) != os.getpgid(0)
    finally:
        child.kill()
        child.wait()


def test_rss_of_a_live_process(soak):
    mib = soak.sample_rss(os.getpid(), os.getpgid(0))
    assert mib["client"] > 10 and set(mib) == set(soak.ROLES)


def _sample(t, client=100, engine=600, vllm=2000):
    mib = {"client": client, "triton": 40, "stub": 42, "engine": engine, "vllm": vllm}
    return {"t": t, "mib": mib, "server": sum(v for k, v in mib.items() if k != "client")}


def test_flatness_after_warm_up_and_around_the_kill(soak):
    samples = [_sample(0, client=50), _sample(60), _sample(120, client=105),  # warm-up growth is allowed
               _sample(180, engine=0), _sample(240, engine=650), _sample(300, engine=660)]
    flat = soak.flatness(samples, warmup_s=60, kill_t=170)
    assert flat["client"]["flat"] and flat["client"]["spread"] == 0.05
    # The engine's worst segment is its restarted self, after a warm-up of its own (180 s is left out).
    assert flat["engine"] == {"samples": 2, "min": 650, "max": 660, "spread": 0.0154, "flat": True}
    leaking = [_sample(t, client=100 + t) for t in range(0, 600, 60)]
    assert soak.flatness(leaking, warmup_s=60, kill_t=None)["client"]["flat"] is False


def test_accounting_from_a_results_file(soak):
    events = [{"type": "run", "started_at": 1000.0}]
    for i, (sent, done, err) in enumerate([(0.0, 0.1, None), (1.0, 1.4, None), (1.9, 2.3, "connection_lost"),
                                           (2.5, 2.51, "connection_lost"), (3.0, 3.2, None)]):
        events.append({"type": "request", "index": i, "sent_s": sent, "done_s": done, "error_kind": err})
    events.append({"type": "end", "counts": {"sent": 5}, "readiness": {"not_ready": []}})
    a = soak.account(events, kill_offset_s=2.0)
    assert (a["sent"], a["recorded"], a["ok"], a["errors"], a["lost"]) == (5, 5, 3, 2, 0)
    assert a["in_flight_at_kill"] == 1 and a["errors_after_kill"] == 2
    assert soak.account(events[:-1], None)["lost"] is None  # a killed perf: no end line, lost unknown


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_soak_started_with_sigint_ignored_still_stops_on_it(sig):
    """`soak.py ... &` from a script: bash starts it with SIGINT ignored; the soak must still stop."""
    code = (f"import importlib.util, os, signal, time; spec = importlib.util.spec_from_file_location('soak', {str(SOAK)!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.take_stop_signals()\n"
            f"try:\n    os.kill(os.getpid(), signal.{sig}); time.sleep(5); print('not stopped')\n"
            "except KeyboardInterrupt as e:\n    print('stopped by', e)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert got.stdout.strip() == f"stopped by {sig}", (got.stdout, got.stderr[-1000:])


@pytest.mark.slow
def test_a_20_second_soak_on_a_real_server(tmp_path):
    out = tmp_path / "soak"
    got = subprocess.run([sys.executable, str(SOAK), "--duration", "20", "--rate", "2", "--sample-every", "2",
                          "--warmup", "4", "--kill-engine-at", "0.5", "--timeout", "5", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    verdict = json.loads((out / "soak.json").read_text())
    assert "memory (RSS MiB) every sample" in got.stdout and "checks:" in got.stdout, got.stderr[-2000:]
    assert len(verdict["samples"]) >= 9
    before = [s for s in verdict["samples"] if s["t"] < verdict["kill_t"]]
    assert all(s["mib"][r] > 0 for s in before[1:] for r in ("client", "triton", "stub", "engine", "vllm"))
    a = verdict["requests"]
    assert a["lost"] == 0 and a["sent"] == a["recorded"] == a["ok"] + a["errors"] >= 35
    assert a["errors"] >= a["in_flight_at_kill"] and a["errors"] > 0
    assert verdict["checks"]["none_lost"] is True
    memory, cut = journal.read(out / "memory.jsonl")
    assert not cut and sum(e["type"] == "kill" for e in memory) == 1
    assert got.returncode == (0 if all(v is not False for v in verdict["checks"].values()) else 1)

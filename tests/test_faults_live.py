"""Faults on a real local server (Triton 2.51, tritonkit's vllm backend, vLLM on the CPU, tiny model).

One server for the module, started by `tritonkit serve --detach` while a second start of the same
name is refused; then, in order: perf killed with SIGKILL mid-run leaves a valid partial results
file; perf onto a full disk says so in one line and keeps what it wrote; the engine process is
killed with SIGKILL mid-run and perf counts every failed request by kind, with the readiness
probe's view in the report (whether the backend heals the model or not).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonkit.perf import journal
from tritonkit.runtime.local import group_members
from tritonkit.runtime.spec import free_port

pytestmark = pytest.mark.slow
TRITONKIT = [sys.executable, "-m", "tritonkit"]
NAME = "faults-live"


def tk(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([*TRITONKIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def ports() -> list[str]:
    return ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]


def descendants(root: int) -> list[int]:
    """Every process below `root` (the supervised engine runs in a process group of its own)."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def engine_pids(pgid: int) -> list[int]:
    found = []
    for pid in sorted(set(group_members(pgid)) | set(descendants(pgid))):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"tritonkit.backend.engine" in cmd:
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from tritonkit.runtime import state

    repo = tmp_path_factory.mktemp("faults") / "repo"
    built = subprocess.run([*TRITONKIT, "build", str(tiny_model), "--gpu", "cpu", "--name", "tiny", "-o", str(repo)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    first = tk("serve", "-r", str(repo), "--runtime", "local", "--name", NAME, "--detach", *ports())
    lock = state.record_path(NAME).parent / "serve.lock"
    try:
        deadline = time.monotonic() + 60
        while not (state.record_path(NAME).parent / "server.log").exists():  # the first start is under way
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        t = time.monotonic()
        second = subprocess.run([*TRITONKIT, "serve", "-r", str(repo), "--runtime", "local", "--name", NAME,
                                 "--detach", *ports()], capture_output=True, text=True, timeout=60)
        assert first.poll() is None, "the second attempt must come while the first is still starting"
        assert second.returncode == 2, second.stderr
        assert f"a server named '{NAME}' is being started by another `tritonkit serve` right now (lock {lock})" \
            in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert time.monotonic() - t < 30  # refused at once, not after its own start
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
    except BaseException:
        first.kill()
        subprocess.run([*TRITONKIT, "stop", "--name", NAME], capture_output=True)
        raise
    record = state.load(NAME)
    yield record
    stopped = subprocess.run([*TRITONKIT, "stop", "--name", NAME], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not group_members(record.pid)  # nothing of the server is left, orphans included


def perf_args(record, out: Path, *extra: str) -> list[str]:
    return ["perf", "--url", record.grpc_url, "--model", "tiny", "--out", str(out), "--output-tokens", "8", *extra]


def test_perf_killed_mid_run_leaves_a_valid_partial_results_file(server, tmp_path):
    out = tmp_path / "killed"
    perf = tk(*perf_args(server, out, "--rate", "4", "--duration", "60"))
    try:
        deadline = time.monotonic() + 60
        while True:
            text = (out / journal.JOURNAL).read_bytes() if (out / journal.JOURNAL).exists() else b""
            if text.count(b'{"type":"request"') >= 12:
                break
            assert perf.poll() is None and time.monotonic() < deadline, perf.communicate()
            time.sleep(0.1)
    finally:
        perf.send_signal(signal.SIGKILL)
        perf.wait()
    events, cut = journal.read(out)
    requests = [e for e in events if e["type"] == "request"]
    assert events[0]["type"] == "run" and events[0]["model"] == "tiny"
    assert len(requests) >= 12 and all(r["error_kind"] is None for r in requests)
    assert [r["index"] for r in requests] == sorted(r["index"] for r in requests)
    assert not (out / "results.json").exists()  # it never got to the end; the journal is what is left


def test_perf_onto_a_full_disk_is_one_line_and_keeps_whole_lines(server, tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        perf = subprocess.run([*TRITONKIT, *perf_args(server, where / "out", "--rate", "20", "--duration", "12")],
                              capture_output=True, text=True, timeout=120)
        errors = [line for line in perf.stderr.splitlines() if line.startswith("error:")]
        assert perf.returncode == 2, perf.stderr
        assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in perf.stderr
        assert str(where / "out") in errors[0]
        events, cut = journal.read(where / "out")
        assert not cut and sum(e["type"] == "request" for e in events) > 20
        for name in ("results.json",):  # a summary file is there whole or not at all
            if (where / "out" / name).exists():
                json.loads((where / "out" / name).read_text())
        assert not list((where / "out").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_engine_killed_mid_run_failures_counted_by_kind_and_readiness_reported(server, tmp_path):
    out = tmp_path / "engine-kill"
    perf = tk(*perf_args(server, out, "--rate", "4", "--duration", "16", "--timeout", "8", "--json"))
    # Kill only once the run is under way: perf's start (imports, tokenizer) can take seconds here,
    # and a model already reloading by then fails its pre-flight check instead.
    deadline = time.monotonic() + 60
    while not (out.joinpath("requests.jsonl").is_file() and len(out.joinpath("requests.jsonl").read_text().splitlines()) > 4):
        assert perf.poll() is None and time.monotonic() < deadline, "perf did not get under way"
        time.sleep(0.2)
    victims = engine_pids(server.pid)
    assert victims, "no engine process found in the server's process group"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), time.time()
    stdout, stderr = perf.communicate(timeout=120)
    assert perf.returncode == 0, stderr  # --on-error continue (the default): the run goes on
    doc = json.loads(stdout)
    faults, ready = doc["faults"], doc["readiness"]
    events, cut = journal.read(out)
    requests = [e for e in events if e["type"] == "request"]
    failed = [r for r in requests if r["error_kind"]]
    # The counts equal the requests that failed: summary, per-kind and the results file agree.
    assert not cut and len(requests) == faults["finished"] == events[-1]["counts"]["sent"]
    assert faults["failed"] == len(failed) > 0
    assert sum(k["count"] for k in faults["by_kind"].values()) == len(failed)
    assert {r["error_kind"] for r in failed} == set(faults["by_kind"])
    # Requests in flight at the kill lose their connection to the engine; those sent while the model
    # reloads are refused as an unknown model, or as not ready while the backend says it restarts
    # (a kill between two requests leaves only the latter; seen in a full run).
    kill_s = killed_wall - next(e for e in events if e["type"] == "run")["started_at"]
    in_flight = [r for r in requests if r["sent_s"] is not None and r["done_s"] is not None
                 and r["sent_s"] <= kill_s - 0.05 and r["done_s"] >= kill_s + 0.05]
    assert all(r["error_kind"] == "connection_lost" for r in in_flight), in_flight
    assert set(faults["by_kind"]) <= {"connection_lost", "unknown_model", "not_ready"}, faults
    assert all(k["example"] for k in faults["by_kind"].values())
    assert doc["steps"][0]["failed"] == sum(1 for r in failed if r["step"] == doc["steps"][0]["label"])
    # Readiness was sampled all along; a backend that reports the dead engine shows an interval.
    assert ready["samples"] >= 20 and ready["probes"][1].endswith("/v2/models/tiny/ready")
    for span in ready["not_ready"]:
        assert span["duration_s"] > 0 and span["detail"]
    md = (out / "report.md").read_text()
    assert f"{faults['failed']} of {faults['finished']} requests failed (--on-error continue)" in md
    assert ("server NOT READY for" in md) == bool(ready["not_ready"])
    # --on-error stop, right after: stops at the first failure if the model is still broken.
    time.sleep(max(0.0, 2 - (time.monotonic() - killed_at)))
    stop = subprocess.run([*TRITONKIT, *perf_args(server, tmp_path / "stop", "--rate", "4", "--duration", "10",
                                                  "--timeout", "8", "--on-error", "stop", "--json")],
                          capture_output=True, text=True, timeout=120)
    if not stop.stdout:  # the supervised engine is restarting: perf refuses to start, in one line
        assert stop.returncode == 4 and "is not ready" in stop.stderr and "Traceback" not in stop.stderr
        return
    second = json.loads(stop.stdout)
    if second["faults"]["failed"]:
        assert stop.returncode == 4 and "--on-error stop" in stop.stderr
        assert second["faults"]["stopped_by"] and second["status"] == "failed"
    else:  # healed by the backend's supervision: nothing to stop for
        assert stop.returncode == 0

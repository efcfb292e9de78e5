"""Perf across faults, without a model server: failures counted by kind, --on-error, the readiness
poller against a real HTTP endpoint that goes not-ready, and the incremental results file.
(test_faults_live.py does the same against real Triton with a killed engine.)"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time

import pytest

from tritonkit.client import Chunk, RequestError, StreamClient
from tritonkit.errors import ServerError
from tritonkit.perf import faults, journal, readiness, report, session
from tritonkit.perf.faults import FaultLog, classify
from tritonkit.perf.records import RequestRecord


@pytest.mark.parametrize("kind, message, category", [
    ("server_error", "server error: Connection lost", "connection_lost"),
    ("server_error", "server error: [Errno 32] Broken pipe", "connection_lost"),
    ("server_error", "server error: [Errno 104] Connection reset by peer", "connection_lost"),
    ("truncated", "the stream ended before the final response", "connection_lost"),
    ("server_error", "server error: the vLLM engine process stopped", "connection_lost"),
    ("timeout", "no complete answer within 10 s", "timeout"),
    ("grpc_deadline_exceeded", "gRPC deadline exceeded", "timeout"),
    ("unfinished", "still running when the run stopped", "cancelled"),
    ("grpc_cancelled", "gRPC CANCELLED: Cancelled", "cancelled"),
    ("http_503", "HTTP 503: engine dead", "not_ready"),
    ("server_error", "server error: model 'tiny' is not ready", "not_ready"),
    ("unreachable", "cannot reach Triton gRPC at x: failed to connect", "unreachable"),
    ("server_error", "server error: invalid sampling_parameters: max_tokens must be positive", "bad_request"),
    ("server_error", "server error: something else", "server_error"),
    ("grpc_internal", "gRPC INTERNAL: oops", "server_error"),
])
def test_failures_are_classified_by_what_happened(kind, message, category):
    assert classify(kind, message) == category
    assert classify(category, "anything") == category  # idempotent


def _failed(i: int, kind: str, msg: str, t: float) -> RequestRecord:
    rec = RequestRecord(i, t)
    rec.fail(kind, msg, t + 0.1)
    return rec


def test_fault_log_counts_by_kind_with_an_example_and_when():
    log = FaultLog()
    ok = RequestRecord(0, 0.0)
    ok.done = 1.0
    log.observe(ok)
    for i in range(3):
        log.observe(_failed(i + 1, "server_error", f"server error: Connection lost #{i}", 10.0 + i))
    log.observe(_failed(9, "timeout", "no complete answer within 5 s", 20.0))
    d = log.to_dict(t0=0.0)
    assert (d["finished"], d["ok"], d["failed"]) == (5, 1, 4)
    assert d["by_kind"]["connection_lost"] == {"count": 3, "example": "server error: Connection lost #0",
                                               "first_s": 10.1, "last_s": 12.1}
    assert d["by_kind"]["timeout"]["count"] == 1
    lines = faults.describe(d)
    assert lines[0] == "4 of 5 requests failed (--on-error continue)"
    assert lines[1].startswith("connection_lost: 3, 10.1-12.1 s, e.g. \"server error: Connection lost #0\"")


def test_on_error_stop_halts_once_at_the_first_failure():
    halts = []
    log = FaultLog("stop", lambda status, msg: halts.append((status, msg)))
    log.observe(_failed(1, "server_error", "server error: Broken pipe", 1.0))
    log.observe(_failed(2, "unfinished", "still running when the run stopped", 1.0))
    assert halts == [("failed", "stopped at the first failed request (--on-error stop): "
                                "connection_lost: server error: Broken pipe")]
    assert log.to_dict(0.0)["failed"] == 2
    with pytest.raises(ValueError, match="on_error must be one of"):
        FaultLog("ignore")


def test_readiness_intervals_from_samples():
    p = readiness.ReadinessPoller(["http://h/v2/health/ready"])
    for t, ready, detail in [(0, True, "ready"), (0.5, True, "ready"), (1.0, False, "/v2/models/m/ready: HTTP 400"),
                             (1.5, False, "/v2/models/m/ready: HTTP 400"), (2.0, False, "/v2/health/ready: no answer"),
                             (3.0, True, "ready"), (4.0, False, "/v2/models/m/ready: HTTP 400")]:
        p.record(t, ready, detail)
    d = p.to_dict(t0=0.0, end=5.0)
    assert d["not_ready"] == [
        {"start_s": 1.0, "end_s": 3.0, "duration_s": 2.0, "ongoing": False,
         "detail": "/v2/models/m/ready: HTTP 400; then /v2/health/ready: no answer"},
        {"start_s": 4.0, "end_s": 5.0, "duration_s": 1.0, "ongoing": True, "detail": "/v2/models/m/ready: HTTP 400"}]
    assert d["not_ready_s"] == 3.0 and d["samples"] == 7 and d["not_ready_samples"] == 4
    lines = readiness.describe(d)
    assert lines[0].startswith("server NOT READY for 3.0 s in 2 interval(s)")
    assert "to the end of the run (still not ready)" in lines[2]


def test_probe_urls_per_protocol():
    assert readiness.probe_urls("grpc", "127.0.0.1:8001", "m") == [
        "http://127.0.0.1:8000/v2/health/ready", "http://127.0.0.1:8000/v2/models/m/ready"]
    assert readiness.probe_urls("grpc", "h:9001", "m", http_address="h:7000")[0] == "http://h:7000/v2/health/ready"
    assert readiness.probe_urls("http", "http://h:8000", "m")[1] == "http://h:8000/v2/models/m/ready"
    assert readiness.probe_urls("openai", "http://h:8000/v1", "m") == ["http://h:8000/health"]


# -- a whole perf run against a fake model whose engine dies, and a real HTTP health endpoint ----

class Health(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if Health.ready else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Health.ready = True
    yield f"http://127.0.0.1:{server.server_address[1]}/health"
    server.shutdown()


class DyingEngine(StreamClient):
    """Answers 3 tokens; from `die_at` s after the first request on, fails like a dead engine (one
    request in flight at that moment hangs until perf's timeout), and `heal_at` s it is back."""

    protocol = "fake"

    def __init__(self, die_at: float, heal_at: float):
        super().__init__("fake", "m")
        self.die_at, self.heal_at, self.start = die_at, heal_at, None
        self.hung = False

    async def check(self) -> None:
        if self.start is not None and self.down():  # as Triton says while the model is not ready
            raise ServerError("model 'm' is not ready (UNAVAILABLE)", "wait for it to load")

    def down(self) -> bool:
        elapsed = time.perf_counter() - self.start
        Health.ready = not (self.die_at <= elapsed < self.heal_at)
        return not Health.ready

    async def stream(self, prompt, sampling, lora_name=None, request_id=None):
        self.start = self.start or time.perf_counter()
        for n in range(3):
            await asyncio.sleep(0.01)
            if self.down():
                if not self.hung:
                    self.hung = True
                    await asyncio.sleep(3600)  # ends by perf's per-request timeout
                raise RequestError("server error: Connection lost", "server_error")
            yield Chunk("x", 1, "length" if n == 2 else None, 5, time.perf_counter(), final=n == 2)

    async def close(self) -> None:
        pass


def _plan(tmp_path, health_url, monkeypatch, on_error="continue", **kw):
    monkeypatch.setenv("TRITONKIT_HOME", str(tmp_path / "home"))
    kw = {"duration_s": 3.0, **kw}
    opts = session.Options(url="127.0.0.1:9", model="m", rate="20", timeout_s=1.0,
                           metrics_url="none", out=str(tmp_path / "out"), on_error=on_error, **kw)
    plan = session.resolve(opts, say=lambda m: None)
    plan.probe_urls = [health_url]
    return plan


def test_a_run_across_an_engine_death_counts_failures_and_the_not_ready_time(tmp_path, health_url, monkeypatch):
    monkeypatch.setattr("tritonkit.client.open_client", lambda *a: DyingEngine(die_at=0.8, heal_at=3.3))
    plan = _plan(tmp_path, health_url, monkeypatch, duration_s=4.5)
    doc, files, result = session.execute(plan)
    assert result.status == "ok", result.message  # the watchdog saw "not ready" and let the run go on
    f = doc["faults"]
    kinds = {k: v["count"] for k, v in f["by_kind"].items()}
    assert set(kinds) == {"connection_lost", "timeout"} and kinds["timeout"] == 1
    assert kinds["connection_lost"] >= 15  # ~20 req/s for ~1 s
    # Every failed request is counted exactly once, in the summary and the results file.
    events, cut = journal.read(plan.out_dir)
    requests = [e for e in events if e["type"] == "request"]
    assert not cut and len(requests) == f["finished"] == f["ok"] + f["failed"]
    assert sum(1 for r in requests if r["error_kind"]) == f["failed"]
    end = events[-1]
    assert end["type"] == "end" and end["counts"]["sent"] == len(requests)
    # The not-ready interval: about 2.5 s (longer than the runner's watchdog tolerates by default).
    spans = doc["readiness"]["not_ready"]
    assert len(spans) == 1 and 1.8 <= spans[0]["duration_s"] <= 3.2 and "HTTP 503" in spans[0]["detail"]
    assert [e["ready"] for e in events if e["type"] == "readiness"] == [True, False, True]
    md = files["md"].read_text()
    assert "connection_lost" in md and "server NOT READY for" in md
    assert "server NOT READY for" in files["html"].read_text()
    assert json.loads(files["json"].read_text())["faults"]["failed"] == f["failed"]


def test_on_error_stop_ends_the_run_at_the_first_failure(tmp_path, health_url, monkeypatch):
    monkeypatch.setattr("tritonkit.client.open_client", lambda *a: DyingEngine(die_at=0.5, heal_at=99))
    plan = _plan(tmp_path, health_url, monkeypatch, on_error="stop")
    doc, files, result = session.execute(plan)
    assert doc["steps"][0]["end_s"] < 2.0  # not the 3 s planned
    assert result.status == "failed" and "--on-error stop" in result.message
    assert doc["faults"]["stopped_by"].startswith("connection_lost")
    assert files["json"].exists()


def test_a_bad_on_error_value_is_refused(tmp_path, health_url, monkeypatch):
    with pytest.raises(Exception, match="--on-error must be one of continue, stop"):
        _plan(tmp_path, health_url, monkeypatch, on_error="ignore")


def test_report_without_faults_says_ready_throughout():
    doc = {"faults": {"failed": 0}, "readiness": {"samples": 4, "every_s": 0.5, "not_ready": [], "not_ready_s": 0},
           "steps": []}
    assert report._notes(doc)[0] == "server ready throughout (4 probes every 0.5 s)"


def test_an_unreachable_server_leaves_no_results_folder(tmp_path, health_url, monkeypatch):
    from tritonkit.client import Unreachable

    class Nobody(DyingEngine):
        async def check(self) -> None:
            raise Unreachable("cannot reach Triton gRPC at 127.0.0.1:9: refused")

    monkeypatch.setattr("tritonkit.client.open_client", lambda *a: Nobody(1, 2))
    plan = _plan(tmp_path, health_url, monkeypatch)
    with pytest.raises(Unreachable, match="cannot reach"):
        session.execute(plan)
    assert not plan.out_dir.exists()

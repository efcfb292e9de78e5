"""Pieces of the backend's stub side (tritonkit/backend/vllm/: model.py and the modules beside it)
that need no server, run outside Triton with a stand-in for triton_python_backend_utils (these
pieces do not use it):
- the restart ledger: the deaths of a model's engine counted across the stubs of one server, in
  $TMPDIR/tritonkit-engines-<server pid>/, removed when the model goes for good or its server is gone;
- sending to a dead engine keeps no memory per failed request (the soak's stub leak)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

import pytest

BACKEND_DIR = Path(__file__).resolve().parents[1] / "tritonkit" / "backend" / "vllm"
MODEL_PY = BACKEND_DIR / "model.py"


@pytest.fixture
def model(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.syspath_prepend(str(BACKEND_DIR))  # the stub finds model.py's modules beside it
    spec = importlib.util.spec_from_file_location("tk_backend_model", MODEL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ledger_module(model):
    return importlib.import_module("restart_ledger")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_deaths_survive_a_reload_and_the_file_goes_with_the_model(ledger_module, tmp_path):
    ledger = ledger_module.RestartLedger("tiny")
    assert Path(ledger.folder) == tmp_path / f"tritonkit-engines-{os.getppid()}"
    assert ledger.check_load() is None  # a first load: a fresh ledger
    assert ledger.record_death("was killed by SIGKILL") == 1
    ledger.forget()  # the stub unloaded for a restart is finalized: the count must stay
    assert Path(ledger.path).is_file()
    again = ledger_module.RestartLedger("tiny")  # the reloaded model's new stub
    assert again.check_load() is None
    again.forget()  # unloaded for good (or the server stops)
    assert not Path(ledger.path).exists() and not Path(ledger.folder).exists()


def test_over_the_budget_the_load_is_refused_and_nothing_is_left(ledger_module, tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "MAX_RESTARTS", 1)
    ledger = ledger_module.RestartLedger("tiny")
    ledger.check_load()
    ledger.record_death("exited with code 1")
    ledger.record_death("exited with code 1")
    refusal = ledger_module.RestartLedger("tiny").check_load()
    assert refusal is not None and "died 2 times" in refusal and "exited with code 1" in refusal
    ledger.forget()
    assert list(tmp_path.iterdir()) == []


def test_another_model_keeps_the_server_folder(ledger_module):
    tiny, other = ledger_module.RestartLedger("tiny"), ledger_module.RestartLedger("other")
    tiny.check_load(), other.check_load()
    tiny.forget()
    assert Path(other.path).is_file()
    other.forget()
    assert not Path(tiny.folder).exists()


def test_folders_of_servers_that_are_gone_are_removed(ledger_module, tmp_path):
    gone = tmp_path / f"tritonkit-engines-{dead_pid()}"
    gone.mkdir()
    (gone / "tiny.json").write_text('{"deaths": [1], "restart_pending": true}')
    alive = tmp_path / f"tritonkit-engines-{os.getpid()}"
    alive.mkdir()
    unrelated = tmp_path / "tritonkit-engines-notes"
    unrelated.mkdir()
    ledger_module.RestartLedger("tiny")
    assert not gone.exists() and alive.is_dir() and unrelated.is_dir()


def test_sending_to_a_dead_engine_keeps_nothing_per_request(model):
    """asyncio's drain() re-raises one stored BrokenPipeError whose traceback grows by every
    caller's frames: before supervision the stub grew ~21 KiB per request failed that way."""
    backend = object.__new__(model.TritonPythonModel)

    async def send_many(n: int) -> tuple[set[str], int]:
        ours, engines = socket.socketpair()
        reader, backend.writer = await asyncio.open_unix_connection(sock=ours)
        engines.close()  # the engine died
        await reader.read()
        messages, before = set(), 0
        for i in range(n):
            if i == n // 10:
                before = tracemalloc.get_traced_memory()[0]
            try:
                await backend._send({"op": "generate", "id": str(i), "prompt": "word " * 200})
            except ConnectionError as err:
                messages.add(str(err))
        return messages, tracemalloc.get_traced_memory()[0] - before

    tracemalloc.start()
    try:
        messages, grown = asyncio.run(send_many(2000))
    finally:
        tracemalloc.stop()
    assert messages and all("connection to the vLLM engine" in m for m in messages), messages
    assert grown < 100 * 1024, f"{grown / 1800:.0f} bytes kept per failed send"


class RecordingSender:
    """A response sender whose send() and is_cancelled() take a while, like the round trip to Triton."""

    def __init__(self, cancel_after=None, fail_on=None):
        self.sent, self.asked, self.cancel_after, self.fail_on = [], 0, cancel_after, fail_on

    def send(self, response, flags=0):
        time.sleep(0.001)
        if response == self.fail_on:
            raise RuntimeError("the client is gone")
        self.sent.append((response, flags))

    def is_cancelled(self):
        self.asked += 1
        return self.cancel_after is not None and len(self.sent) >= self.cancel_after


@pytest.fixture
def response_thread(model):
    return importlib.import_module("response_thread")


def test_responses_go_out_in_order_and_the_final_last(response_thread):
    errors = []
    thread = response_thread.ResponseThread(final_flag=1, log_error=errors.append)
    senders = [RecordingSender() for _ in range(3)]
    states = [response_thread.RequestState(s) for s in senders]
    for chunk in range(5):
        for i, state in enumerate(states):
            thread.send(state, f"r{i}-c{chunk}", final=chunk == 4)
    assert all(state.final_queued for state in states)
    thread.stop()
    for i, sender in enumerate(senders):
        assert sender.sent == [(f"r{i}-c{c}", 1 if c == 4 else 0) for c in range(5)]
        assert sender.asked == 0  # a request shorter than CANCEL_CHECK_S costs no extra round trip
    assert errors == [] and not thread.thread.is_alive()


def test_a_long_request_learns_of_its_cancel_and_a_failed_send_stops_nothing(response_thread, monkeypatch):
    monkeypatch.setattr(response_thread, "CANCEL_CHECK_S", 0.0)
    errors = []
    thread = response_thread.ResponseThread(final_flag=1, log_error=errors.append)
    long_one = response_thread.RequestState(RecordingSender(cancel_after=2))
    gone = response_thread.RequestState(RecordingSender(fail_on="bad"))
    for response in ("a", "b", "c"):
        thread.send(long_one, response, final=False)
    thread.send(gone, "bad", final=False)
    thread.send(gone, "after", final=True)
    thread.stop()
    assert long_one.cancelled and long_one.sender.asked == 3
    assert gone.sender.sent == [("after", 1)]
    assert len(errors) == 1 and "the client is gone" in errors[0]


def test_a_lone_request_is_sent_at_once_and_never_overtakes_a_queued_one(response_thread):
    thread = response_thread.ResponseThread(final_flag=1, log_error=print)
    slow, lone = RecordingSender(), RecordingSender()
    slow_state, lone_state = response_thread.RequestState(slow), response_thread.RequestState(lone)
    thread.send(lone_state, "now", final=False, alone=True)
    assert lone.sent == [("now", 0)]  # sent on the caller's thread, before send() returned
    thread.send(slow_state, "queued", final=False)  # others in flight: the thread sends it
    thread.send(slow_state, "after", final=True, alone=True)  # something still queued: it waits its turn
    thread.stop()
    assert slow.sent == [("queued", 0), ("after", 1)]


class FlakyGauge:
    def __init__(self):
        self.values = []

    def set(self, value):
        if value < 0:
            raise RuntimeError("the server is gone")
        self.values.append(value)


class WarnLog:
    def __init__(self):
        self.warnings = []

    def log_warn(self, message):
        self.warnings.append(message)


def test_failed_metric_updates_are_logged_once_and_counted_at_stop(model):
    engine_metrics = importlib.import_module("engine_metrics")
    gauge, log = FlakyGauge(), WarnLog()
    metrics = engine_metrics.EngineMetrics([], {"running": gauge}, log)
    for count in (1, -1, 2, -1, -1, 3):
        metrics.set_running(count)
    metrics.stop()
    assert gauge.values == [1, 2, 3]  # a failed update stops none after it
    assert len(log.warnings) == 2, log.warnings
    assert "a metric update failed (RuntimeError: the server is gone)" in log.warnings[0]
    assert log.warnings[1] == "[vllm] 3 metric updates failed in all"

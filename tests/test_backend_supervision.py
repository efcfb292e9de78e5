"""The local vllm backend supervises its engine (issue 9), on a real Triton 2.51 + vLLM server.

One server for the module (explicit model control, a 15 s heartbeat timeout, a budget of 2
restarts), one tiny model. In order: malformed requests leave it serving; SIGKILL of the engine
fails the request in flight with the cause and the model is not ready within 2 s, then ready and
serving again with no process of the old engine left; a SIGSTOPped (hung) engine is noticed within
the timeout; a third death is over the budget, and the model stays down saying why.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from test_backend_conformance import (BASE_SAMPLING, build, engine_pid, infer, inputs_for, model_ready,
                                      only_error, output_tokens, start_server)

grpcclient = pytest.importorskip("tritonclient.grpc")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first test starts the server (minutes here)

HANG_TIMEOUT_S = 15.0  # generous: on this shared, loaded machine the engine loop stalled 5 s once


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    repo = tmp_path_factory.mktemp("supervision") / "repo"
    build(tiny_model, "tiny", repo)
    env = {"TRITONKIT_ENGINE_HANG_TIMEOUT_S": str(HANG_TIMEOUT_S), "TRITONKIT_ENGINE_MAX_RESTARTS": "2"}
    yield from start_server(repo, ["tiny"], env)


def group_members(pgid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def wait_for(condition, timeout_s: float, poll_s: float = 0.05) -> float:
    """Seconds until condition() held; fails after timeout_s."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s"
        time.sleep(poll_s)
    return time.monotonic() - start


def index_entry(server, model="tiny"):
    with grpcclient.InferenceServerClient(server["grpc"]) as client:
        return [m for m in client.get_model_repository_index().models if m.name == model][0]


def tensor(name, value, dtype="BYTES"):
    array = np.array(value, dtype=np.object_ if dtype == "BYTES" else bool)
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def sampling_tensor(raw: bytes):
    return tensor("sampling_parameters", [raw])


MALFORMED = {
    "sampling_parameters not JSON": ([tensor("text_input", [b"hi"]), sampling_tensor(b"{max_tokens: 4")], r"Expecting"),
    "sampling_parameters a JSON list": ([tensor("text_input", [b"hi"]), sampling_tensor(b"[4]")], r"JSON object"),
    "an unknown key": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": 4, "colour": 1}')], r"colour"),
    "negative max_tokens": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": -1}')], r"max_tokens"),
    # (a huge max_tokens is no error in vLLM 0.32, nor in the official backend: it stops at the context length)
    "zero max_tokens": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": 0}')], r"max_tokens"),
    "string max_tokens": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": "lots"}')], r"max_tokens"),
    "temperature -1": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": 4, "temperature": -1}')],
                       r"temperature"),
    "unknown lora_name": ([tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": 4, "lora_name": "x"}')],
                          r"^LoRA feature is not enabled\.$"),
    "invalid UTF-8 prompt": ([tensor("text_input", [b"\xff\xfe bad"]), sampling_tensor(b'{"max_tokens": 4}')],
                             r"utf-8"),
    "over-long prompt": ([tensor("text_input", [b"word " * 5000]), sampling_tensor(b'{"max_tokens": 4}')],
                         r"longer than|maximum|max_model_len"),
    "a batch of two prompts": ([tensor("text_input", [b"a", b"b"]), sampling_tensor(b'{"max_tokens": 4}')],
                               r"shape"),
    "no text_input": ([sampling_tensor(b'{"max_tokens": 4}')], r"text_input"),
    "stream as a string": ([tensor("text_input", [b"hi"]), tensor("stream", [b"yes"])], r"stream|data type|BOOL"),
    "streaming with the prompt in the output": (
        [tensor("text_input", [b"hi"]), tensor("stream", [True], "BOOL"), tensor("exclude_input_in_output", [False], "BOOL"),
         sampling_tensor(b'{"max_tokens": 4}')], r"`exclude_input_in_output` = False is not allowed"),
    "sampling_parameters not UTF-8": ([tensor("text_input", [b"hi"]), sampling_tensor(b"\xff{}")], r"utf-8|decode"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_its_own_error(server, case):
    inputs, expected = MALFORMED[case]
    message = only_error(infer(server, inputs))
    assert re.search(expected, message), message
    # and the server keeps serving
    assert output_tokens(infer(server, inputs_for(sampling=BASE_SAMPLING, return_num_output_tokens=True))) == 6


def test_empty_prompt_and_no_stream_input_are_served(server):
    for inputs in ([tensor("text_input", [b""]), sampling_tensor(b'{"max_tokens": 3, "ignore_eos": true}')],
                   [tensor("text_input", [b"hi"]), sampling_tensor(b'{"max_tokens": 3, "ignore_eos": true}')]):
        responses = infer(server, inputs)
        assert len(responses) == 1
        result, error = responses[0]
        assert error is None or "prompt" in error.message(), error


@pytest.fixture
def streaming_client(server):
    """A client that keeps one gRPC stream open and sends on it twice a second, as perf and
    production clients do: Triton keeps a model UNLOADING while such a stream is open (the
    hour-long soak's model stayed down for its whole second half). Yields its responses."""
    client = grpcclient.InferenceServerClient(server["grpc"])
    responses, stop = [], threading.Event()
    client.start_stream(lambda result, error: responses.append((result, error)))

    def keep_sending():
        while not stop.is_set():
            client.async_stream_infer("tiny", inputs=inputs_for(sampling=BASE_SAMPLING))
            stop.wait(0.5)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_for(lambda: any(error is None for _, error in responses), 120)
        yield responses
    finally:
        stop.set()
        sender.join()
        client.stop_stream()
        client.close()


def test_engine_sigkill_is_noticed_and_healed(server, streaming_client):
    pid = engine_pid(server, "tiny")
    # a long request in flight when the engine dies
    long_request = {**BASE_SAMPLING, "max_tokens": "3000"}
    responses = []
    thread = threading.Thread(target=lambda: responses.extend(infer(server, inputs_for(sampling=long_request))))
    thread.start()
    wait_for(lambda: len(group_members(pid)) > 0, 5)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: model_ready(server, "tiny")[0] is False, 2.0)
    assert time.monotonic() - killed_at < 2.0
    thread.join(10)
    errors = [error.message() for _, error in responses if error is not None]
    assert errors and "was killed by SIGKILL" in errors[-1] and "its last log lines:" in errors[-1], errors
    assert wait_for(lambda: not group_members(pid), 5) < 5  # engine core and workers are gone too
    wait_for(lambda: model_ready(server, "tiny") == (True, True), 400, poll_s=0.5)  # the stream is still open
    assert engine_pid(server, "tiny") != pid
    assert output_tokens(infer(server, inputs_for(sampling=BASE_SAMPLING, return_num_output_tokens=True))) == 6
    served_again = len(streaming_client)
    wait_for(lambda: any(error is None for _, error in streaming_client[served_again:]), 60)


def test_hung_engine_is_noticed_within_the_timeout(server):
    pid = engine_pid(server, "tiny")
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(lambda: model_ready(server, "tiny")[0] is False, HANG_TIMEOUT_S + 2)
    finally:
        if group_members(pid):
            os.kill(pid, signal.SIGCONT)
    assert time.monotonic() - stopped_at < HANG_TIMEOUT_S + 2
    assert wait_for(lambda: not group_members(pid), 5) < 5
    wait_for(lambda: model_ready(server, "tiny") == (True, True), 400, poll_s=0.5)
    assert output_tokens(infer(server, inputs_for(sampling=BASE_SAMPLING, return_num_output_tokens=True))) == 6


def test_over_the_restart_budget_the_model_stays_down_and_says_why(server):
    def down_for_good():
        entry = index_entry(server)
        return entry.state == "UNAVAILABLE" and "not restarted again" in entry.reason

    for _ in range(3):  # the budget is 2 restarts; earlier tests used some of it
        wait_for(lambda: model_ready(server, "tiny") == (True, True) or down_for_good(), 400, poll_s=0.5)
        if down_for_good():
            break
        pid = engine_pid(server, "tiny")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not group_members(pid), 5)
        wait_for(lambda: model_ready(server, "tiny")[0] is False, 5)
    wait_for(down_for_good, 400, poll_s=0.5)
    reason = index_entry(server).reason
    assert re.search(r"died \d+ times within 10 minutes", reason) and "SIGKILL" in reason, reason
    assert model_ready(server, "tiny") == (False, False)
    assert "unknown model" in only_error(infer(server, inputs_for(sampling=BASE_SAMPLING)))

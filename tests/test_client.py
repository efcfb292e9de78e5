"""tritonkit.client against nothing (error paths) and against the ground-truth model on real Triton."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from tritonkit.client import PROTOCOLS, UnknownModel, Unreachable, open_client
from tritonkit.errors import UsageError
from tritonkit.runtime.local import LocalServer
from tritonkit.runtime.spec import ServerSpec, free_port

REPO = Path(__file__).resolve().parent.parent / "perf" / "ground_truth_repo"
FAST = {"max_tokens": 4, "gt_first_delay_ms": 30, "gt_gap_ms": 10}


@pytest.fixture(scope="module")
def server():
    spec = ServerSpec(repository=REPO, name=f"client-gt-{os.getpid()}", http_port=free_port(),
                      grpc_port=free_port(), metrics_port=free_port())
    with LocalServer(spec) as s:
        s.wait_ready(["ground_truth"], 120)
        yield s


def _url(server, protocol):
    return server.spec.grpc_url if protocol == "grpc" else server.spec.http_url


async def _collect(client, prompt="one two three", sampling=FAST, **kw):
    return [c async for c in client.stream(prompt, sampling, **kw)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_is_a_clear_error(protocol):
    port = free_port()  # nothing listens there
    url = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"

    async def go():
        client = open_client(protocol, url, "m")
        try:
            with pytest.raises(Unreachable, match=str(port)) as check:
                await client.check()
            with pytest.raises(Unreachable, match=str(port)) as stream:
                await _collect(client)
        finally:
            await client.close()
        return check.value, stream.value

    for err in asyncio.run(go()):
        assert str(port) in err.message and err.exit_code == 4 and err.kind == "unreachable"


def test_bad_protocol_and_missing_max_tokens():
    with pytest.raises(UsageError, match="unknown protocol"):
        open_client("websocket", None, "m")

    async def go():
        client = open_client("grpc", f"127.0.0.1:{free_port()}", "m")
        try:
            with pytest.raises(UsageError, match="max_tokens"):
                await _collect(client, sampling={"temperature": 0})
        finally:
            await client.close()

    asyncio.run(go())


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stream_chunks_tokens_and_timing(server, protocol):
    async def go():
        client = open_client(protocol, _url(server, protocol), "ground_truth")
        try:
            await client.check()
            t0 = time.perf_counter()
            chunks = await _collect(client, request_id="r1")
        finally:
            await client.close()
        return t0, chunks

    t0, chunks = asyncio.run(go())
    out = [c for c in chunks if c.has_output]
    assert [c.text for c in out] == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert [c.num_output_tokens for c in out] == [1, 1, 1, 1]
    assert out[-1].finish_reason == "length" and out[0].num_input_tokens == 3
    assert chunks[-1].final and sum(c.final for c in chunks) == 1
    assert all(a.t <= b.t for a, b in zip(chunks, chunks[1:]))
    assert 0.030 <= out[0].t - t0 < 0.030 + 0.5  # first chunk after the model's known delay
    for a, b in zip(out, out[1:]):
        assert b.t - a.t == pytest.approx(0.010, abs=0.008)


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model(server, protocol):
    async def go():
        client = open_client(protocol, _url(server, protocol), "no_such_model")
        try:
            with pytest.raises(UnknownModel, match="ground_truth"):
                await client.check()  # lists the models it has
            with pytest.raises(UnknownModel, match="no_such_model"):
                await _collect(client)
        finally:
            await client.close()

    asyncio.run(go())


@pytest.mark.slow  # starts a server
def test_server_errors_become_request_errors(server):
    from tritonkit.client import RequestError

    async def go():
        client = open_client("grpc", _url(server, "grpc"), "ground_truth")
        try:
            with pytest.raises(RequestError, match="bad request") as err:
                await _collect(client, sampling={"max_tokens": "many"})
        finally:
            await client.close()
        return err.value

    assert asyncio.run(go()).kind == "server_error"


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("how", ["cancel_task", "aclose"])
def test_cancelling_the_iteration_cancels_the_request_on_the_server(server, how):
    rid = f"cancel-{how}-{time.monotonic_ns()}"

    async def go():
        client = open_client("grpc", _url(server, "grpc"), "ground_truth")
        got = []

        async def consume():
            async for chunk in client.stream("x", {"max_tokens": 200, "gt_first_delay_ms": 10, "gt_gap_ms": 20},
                                             request_id=rid):
                got.append(chunk)
                if how == "aclose" and len(got) == 2:
                    break

        try:
            if how == "cancel_task":
                task = asyncio.create_task(consume())
                while len(got) < 2:
                    await asyncio.sleep(0.005)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                stream = client.stream("x", {"max_tokens": 200, "gt_first_delay_ms": 10, "gt_gap_ms": 20}, request_id=rid)
                async with contextlib.aclosing(stream):
                    async for chunk in stream:
                        got.append(chunk)
                        if len(got) == 2:
                            break
        finally:
            await client.close()
        return got

    got = asyncio.run(go())
    assert len(got) == 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the model logs a cancelled request at its next chunk
        if f"request '{rid}' cancelled after" in server.logs(200):
            break
        time.sleep(0.1)
    assert f"request '{rid}' cancelled after" in server.logs(200)


def test_finish_reason_none_string_is_no_finish_reason():
    """vLLM backends (official and tritonkit's) send finish_reason "None" on every streamed
    response but the last: the clients read it as no finish reason yet."""
    from tritonclient.grpc import service_pb2

    from tritonkit.client.triton_grpc import _bytes_tensor, _parse
    from tritonkit.client.triton_http import _to_chunk

    def grpc_chunk(reason: bytes):
        resp = service_pb2.ModelStreamInferResponse()
        resp.infer_response.outputs.add(name="text_output")
        resp.infer_response.outputs.add(name="finish_reason")
        resp.infer_response.raw_output_contents.extend([_bytes_tensor(b"hi"), _bytes_tensor(reason)])
        return _parse(resp, 0.0)

    assert grpc_chunk(b"None").finish_reason is None
    assert grpc_chunk(b"length").finish_reason == "length"
    assert _to_chunk(0.0, {"text_output": "hi", "finish_reason": "None"}).finish_reason is None
    assert _to_chunk(0.0, {"text_output": "hi", "finish_reason": ["stop"]}).finish_reason == "stop"

"""The load generator's gRPC transports (tritonkit.client.grpc_aio_streams, grpc_h2_streams, and
grpc_streams' threads) against the ground-truth model on real Triton: responses routed by request id over shared streams,
a failing request amid good ones, timeouts and cancellation (a request alone on its stream is
aborted on the server), closing with requests in flight, and a server killed mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from tritonkit.client import RequestError, UnknownModel, Unreachable
from tritonkit.client.triton_grpc import TritonGrpcClient
from tritonkit.errors import UsageError
from tritonkit.perf.records import RequestRecord

from ground_truth_server import start_ground_truth

QUICK = {"gt_first_delay_ms": 20, "gt_gap_ms": 5}


@pytest.fixture(scope="module")
def server():
    s = start_ground_truth("aio-gt")
    yield s
    s.stop()


def _client(server, transport: str = "aio", streams: int = 2, model: str = "ground_truth") -> TritonGrpcClient:
    client = TritonGrpcClient(server.spec.grpc_url, model)
    client.transport, client.n_streams = transport, streams
    return client


async def _send(client, i: int, sampling: dict, slot: int | None = None, rid: str | None = None) -> RequestRecord:
    rec = RequestRecord(i, time.perf_counter())
    try:
        await client.request(f"prompt {i}", sampling, None, rid or str(i), rec.observe, slot)
    except (RequestError, Unreachable, UnknownModel) as err:
        rec.fail(err.kind, err.message, time.perf_counter())
    return rec


def _logged_cancel(server, rid: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # the model logs a cancelled request at its next chunk
        if f"request '{rid}' cancelled after" in server.logs(400):
            return True
        time.sleep(0.1)
    return False


def test_transport_is_chosen_by_environment(monkeypatch):
    monkeypatch.delenv("TRITONKIT_GRPC_STREAMS", raising=False)
    assert TritonGrpcClient("127.0.0.1:1", "m").transport == "h2"  # kernel arrival stamps: a stalled loop shows
    monkeypatch.setenv("TRITONKIT_GRPC_STREAMS", "shared")  # the old name of the thread transport
    assert TritonGrpcClient("127.0.0.1:1", "m").transport == "threads"
    monkeypatch.setenv("TRITONKIT_GRPC_STREAMS", "fast")
    with pytest.raises(UsageError, match="is not a transport"):
        TritonGrpcClient("127.0.0.1:1", "m")
    monkeypatch.setenv("TRITONKIT_GRPC_STREAMS", "aio")
    monkeypatch.setenv("TRITONKIT_GRPC_STREAM_COUNT", "many")
    with pytest.raises(UsageError, match="TRITONKIT_GRPC_STREAM_COUNT='many' is not a whole number"):
        TritonGrpcClient("127.0.0.1:1", "m")


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2", "threads"])
def test_responses_find_their_request_by_id_and_errors_stay_with_theirs(server, transport):
    """60 requests over 2 streams, each asking for its own token count; every 7th is malformed (the
    model answers it with an error on the shared stream): each record gets exactly its own answer."""

    async def go():
        client = _client(server, transport, streams=2)
        # Threads started meanwhile, by identity: a count also drops when an earlier test's thread ends.
        threads_before = set(threading.enumerate())
        try:
            bad = {i for i in range(60) if i % 7 == 3}
            recs = await asyncio.gather(*(_send(client, i, {**QUICK, "max_tokens": "x" if i in bad else 1 + i % 5})
                                          for i in range(60)))
            new_threads = len(set(threading.enumerate()) - threads_before)
            after = await _send(client, 99, {**QUICK, "max_tokens": 3})  # the streams still work
        finally:
            await client.close()
        return bad, recs, after, new_threads

    bad, recs, after, new_threads = asyncio.run(go())
    for rec in recs:
        if rec.index in bad:
            assert rec.error_kind == "server_error" and "bad request" in rec.error, rec
        else:
            assert rec.ok and rec.output_tokens == 1 + rec.index % 5 == len(rec.chunks), rec
            assert rec.finish_reason == "length"
    assert after.ok and after.output_tokens == 3
    if transport == "h2":
        assert new_threads == 0, new_threads  # no grpcio underneath: nothing but the event loop
    if transport == "aio":
        assert new_threads <= 1, new_threads  # gRPC's own poller at most: no threads of ours


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_an_unknown_model_fails_its_requests_clearly(server, transport):
    async def go():
        client = _client(server, transport, model="no_such_model")
        try:
            return await asyncio.wait_for(_send(client, 1, {**QUICK, "max_tokens": 2}), 10)
        finally:
            await client.close()

    rec = asyncio.run(go())
    assert rec.error_kind == "unknown_model" and "no_such_model" in rec.error, rec


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_a_timed_out_request_alone_on_its_stream_is_aborted_and_the_slot_reused(server, transport):
    rid = f"{transport}-timeout-{time.monotonic_ns()}"

    async def go():
        client = _client(server, transport, streams=4)
        try:
            rec = RequestRecord(0, time.perf_counter())
            t0 = time.perf_counter()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await client.request("slow", {"max_tokens": 100, "gt_first_delay_ms": 50, "gt_gap_ms": 50},
                                         None, rid, rec.observe, slot=1)
            waited = time.perf_counter() - t0
            again = await _send(client, 1, {**QUICK, "max_tokens": 2}, slot=1)  # same slot: a new stream
            return rec, waited, again
        finally:
            await client.close()

    rec, waited, again = asyncio.run(go())
    assert 0.5 <= waited < 1.5 and 3 <= len(rec.chunks) < 100, (waited, rec.chunks)
    assert again.ok and again.output_tokens == 2
    assert _logged_cancel(server, rid)  # Triton cancelled it: the model stopped early


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_a_timed_out_request_sharing_a_stream_is_forgotten_and_the_others_finish(server, transport):
    async def go():
        client = _client(server, transport, streams=1)
        try:
            slow = RequestRecord(0, time.perf_counter())

            async def slow_one():
                async with asyncio.timeout(0.3):
                    await client.request("slow", {"max_tokens": 20, "gt_first_delay_ms": 20, "gt_gap_ms": 50},
                                         None, "shared-slow", slow.observe, 0)

            results = await asyncio.gather(slow_one(), _send(client, 1, {"max_tokens": 4, "gt_first_delay_ms": 400,
                                                                          "gt_gap_ms": 100}, 0),
                                           return_exceptions=True)
            await asyncio.sleep(1.2)  # the forgotten request's late answers arrive and are dropped
            later = await _send(client, 2, {**QUICK, "max_tokens": 2}, 0)
            return slow, results, later
        finally:
            await client.close()

    slow, (timeout, other), later = asyncio.run(go())
    assert isinstance(timeout, TimeoutError)
    n_seen = len(slow.chunks)
    assert other.ok and other.output_tokens == 4 and len(other.chunks) == 4, other
    assert later.ok and later.output_tokens == 2 and len(slow.chunks) == n_seen < 20


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_closing_with_requests_in_flight_ends_them_and_aborts_them_on_the_server(server, transport):
    rid = f"{transport}-close-{time.monotonic_ns()}"

    async def go():
        client = _client(server, transport, streams=2)
        rec = RequestRecord(0, time.perf_counter())
        task = asyncio.create_task(client.request("x", {"max_tokens": 100, "gt_first_delay_ms": 20, "gt_gap_ms": 50},
                                                  None, rid, rec.observe, 0))
        while len(rec.chunks) < 2:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await client.close()
        with pytest.raises(RequestError, match="the stream was closed"):
            await asyncio.wait_for(task, 2)
        return time.perf_counter() - t0

    assert asyncio.run(go()) < 2.0
    assert _logged_cancel(server, rid)


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("transport", ["aio", "h2"])
def test_a_server_killed_mid_run_fails_what_is_in_flight_and_what_follows(transport):
    own = start_ground_truth("aio-kill")
    try:
        async def go():
            client = _client(own, transport, streams=4)
            try:
                first = await _send(client, 0, {**QUICK, "max_tokens": 2})
                inflight = [asyncio.create_task(_send(client, i, {"max_tokens": 50, "gt_first_delay_ms": 20,
                                                                   "gt_gap_ms": 100}, i)) for i in range(1, 9)]
                await asyncio.sleep(0.5)
                killed = time.perf_counter()
                os.killpg(own.pid, signal.SIGKILL)
                recs = await asyncio.wait_for(asyncio.gather(*inflight), 10)
                noticed = time.perf_counter() - killed
                after = await asyncio.wait_for(_send(client, 20, {**QUICK, "max_tokens": 2}), 10)
                return first, recs, noticed, after
            finally:
                await client.close()

        first, recs, noticed, after = asyncio.run(go())
    finally:
        own.stop(timeout_s=5)
    assert first.ok
    assert noticed < 5.0, noticed
    for rec in recs:
        assert rec.error_kind == "unreachable" and "cannot reach Triton gRPC" in rec.error, rec
        assert 0 < len(rec.chunks) < 50  # it was streaming when the server died
    assert after.error_kind == "unreachable", after


@pytest.mark.slow  # starts a server
def test_h2_sends_a_request_larger_than_the_flow_control_window(server):
    """300 KB of prompt: more than HTTP/2's first 64 KB window and its 16 KB frames, so the request
    goes out in pieces as the server grants window."""

    async def go():
        client = _client(server, "h2", streams=2)
        try:
            big = RequestRecord(0, time.perf_counter())
            await asyncio.wait_for(client.request("word " * 60_000, {**QUICK, "max_tokens": 3}, None, "big",
                                                  big.observe, 0), 20)
            small = await _send(client, 1, {**QUICK, "max_tokens": 2}, 0)
            return big, small
        finally:
            await client.close()

    big, small = asyncio.run(go())
    assert big.ok and big.output_tokens == 3, big
    assert small.ok and small.output_tokens == 2, small


def test_h2_without_a_server_is_unreachable():
    from tritonkit.runtime.spec import free_port

    async def go():
        client = TritonGrpcClient(f"127.0.0.1:{free_port()}", "m")
        client.transport = "h2"
        try:
            return await _send(client, 0, {"max_tokens": 2})
        finally:
            await client.close()

    rec = asyncio.run(go())
    assert rec.error_kind == "unreachable" and "cannot reach Triton gRPC" in rec.error, rec

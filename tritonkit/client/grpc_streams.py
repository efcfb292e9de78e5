"""The load generator's gRPC transport on threads (TRITONKIT_GRPC_STREAMS=threads): long-lived
ModelStreamInfer streams shared by many requests; the default transport (grpc_aio_streams is the threadless one).

perf_analyzer keeps its streams open and tells responses apart by request id; so does this.
Per stream: a sender (gRPC's own thread, draining a queue of ready-made request bytes) and a
reader thread that stamps each response's arrival time *first*, before any parsing, so the
timestamps do not wait for the asyncio loop (a starved loop shows up as send lag, not hidden in
the latencies). The reader fills the caller's record directly and wakes the loop once per request,
on its final response. Each prompt's request bytes are built once and cached; per request only
the id is appended (protobuf: a later singular field wins, so bytes concatenate); the client
(triton_grpc) keeps that cache.

The trade-off: a request on a shared stream cannot be cancelled alone. One that times out is
forgotten (its late responses are dropped) while the server finishes it; closing the pool cancels
every stream, and Triton then aborts what is still running.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Callable

import grpc
from tritonclient.grpc import service_pb2

from tritonkit.client.base import RequestError

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def _id_field(request_id: str) -> bytes:
    """Protobuf bytes of ModelInferRequest.id (field 3, length-delimited)."""
    raw = request_id.encode()
    n, out = len(raw), bytearray(b"\x1a")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + raw


class _Pending:
    __slots__ = ("loop", "future", "observe")

    def __init__(self, loop, future, observe):
        self.loop, self.future, self.observe = loop, future, observe


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class _Stream:
    def __init__(self, pool: "StreamPool"):
        self.pool = pool
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[str, _Pending] = {}
        self.lock = threading.Lock()
        self.broken: BaseException | None = None
        self.call = pool.method(iter(self.outbox.get, None))
        self.thread = threading.Thread(target=self._read, name="tk-grpc-reader", daemon=True)
        self.thread.start()

    def send(self, request_id: str, body: bytes, pending: _Pending) -> None:
        with self.lock:
            self.pending[request_id] = pending
        self.outbox.put(body + _id_field(request_id))

    def forget(self, request_id: str) -> None:
        with self.lock:
            self.pending.pop(request_id, None)

    def _read(self) -> None:
        parse, pool = self.pool.parse, self.pool
        try:
            for resp in self.call:
                t = time.perf_counter()  # arrival, before anything else
                rid = resp.infer_response.id
                with self.lock:
                    p = self.pending.get(rid)
                    if p is None and not rid and self.pending and (resp.error_message or len(self.pending) == 1):
                        # A response without an id (some error paths): the oldest request owns it.
                        rid = next(iter(self.pending))
                        p = self.pending[rid]
                if p is None:
                    continue  # a forgotten (timed-out) request's late response
                if resp.error_message:
                    self.forget(rid)
                    p.loop.call_soon_threadsafe(_settle, p.future, pool.server_error(resp.error_message))
                    continue
                chunk = parse(resp, t)
                p.observe(chunk)
                if chunk.final:
                    self.forget(rid)
                    p.loop.call_soon_threadsafe(_settle, p.future, None)
        except grpc.RpcError as err:
            self.broken = pool.rpc_error(err)
        except Exception as err:  # noqa: BLE001 - a reader must never die silently
            self.broken = RequestError(f"reading the gRPC stream failed: {err}", "bad_response")
        else:
            self.broken = RequestError("the server closed the stream before the final response", "truncated")
        with self.lock:
            orphans, self.pending = list(self.pending.values()), {}
        for p in orphans:
            p.loop.call_soon_threadsafe(_settle, p.future, self.broken)

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()


class StreamPool:
    """`n_streams` open streams on one channel; requests go to stream `slot % n_streams`."""

    def __init__(self, url: str, parse: Callable, rpc_error: Callable, server_error: Callable,
                 n_streams: int = 8, options=()):
        self.channel = grpc.insecure_channel(url, options=list(options))
        self.method = self.channel.stream_stream(
            METHOD, request_serializer=None,  # bytes go out as they are
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
        self.parse = parse
        self.rpc_error, self.server_error = rpc_error, server_error
        self.n_streams = max(1, n_streams)
        self.streams: list[_Stream | None] = [None] * self.n_streams
        self.next_slot = 0

    def _stream(self, slot: int) -> _Stream:
        i = slot % self.n_streams
        s = self.streams[i]
        if s is None or s.broken is not None:  # (re)open lazily: a broken stream fails its requests, not later ones
            s = self.streams[i] = _Stream(self)
        return s

    async def request(self, request_id: str, body: bytes, observe: Callable, slot: int | None = None) -> None:
        """Send one request; `observe(chunk)` runs on the reader thread; returns on the final response."""
        if slot is None:
            slot, self.next_slot = self.next_slot, self.next_slot + 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        stream = self._stream(slot)
        stream.send(request_id, body, _Pending(loop, future, observe))
        try:
            await future
        except asyncio.CancelledError:
            stream.forget(request_id)
            raise

    def close(self) -> None:
        for s in self.streams:
            if s is not None:
                s.close()
        for s in self.streams:
            if s is not None:
                s.thread.join(timeout=2)
        self.streams = [None] * self.n_streams
        self.channel.close()

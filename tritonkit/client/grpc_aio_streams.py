"""The load generator's gRPC hot path on grpc.aio: long-lived ModelStreamInfer streams, no threads of ours.

Why: the thread transport (grpc_streams) runs a request-iterator consumer and a reader thread per
stream, ~33 Python threads a worker; every response crossed threads and queued for the GIL, and on
an H100 a worker idled at ~11% of a core while half its users waited inside it. Here everything
runs on the worker's event loop: per stream one `stream_stream` call written with `call.write()`
and one reader task; grpc.aio's single poller hands completions to the loop in batches.

Per stream, as perf_analyzer does (one stream per concurrent context): requests are told apart by
id; the reader stamps each response's arrival first, before parsing (raw bytes come in, the
protobuf is decoded after the stamp), fills the caller's record and settles its future on the
final response. Requests are cached bytes plus their id (see grpc_streams._id_field).

Streams: closed-loop users pass their slot and get stream `slot % n_streams`, so with n_streams >=
users a worker's users each own a stream; open-loop requests go round robin. Streams are spread over
`n_channels` channels (separate TCP connections: gRPC serializes one connection's frames).

Cancelling (a timeout, the run's end): a request alone on its stream cancels the whole call, so
Triton aborts it, and the stream reopens on next use; a request sharing its stream is forgotten
(late responses dropped) while the server finishes it. close() cancels every call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import grpc
from tritonclient.grpc import service_pb2

from tritonkit.client.base import Chunk, RequestError
from tritonkit.client.grpc_streams import METHOD, _id_field, _settle

_Response = service_pb2.ModelStreamInferResponse


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future
    observe: Callable[[Chunk], None]


def deliver(pending: dict, resp, t: float, parse: Callable, server_error: Callable) -> None:
    """A response to the request it belongs to (by id, from `pending`, a dict of _Pending): its
    chunk observed, its future settled on the final response or an error."""
    rid = resp.infer_response.id
    p = pending.get(rid)
    if p is None and not rid and pending and (resp.error_message or len(pending) == 1):
        rid = next(iter(pending))  # a response without an id (some error paths): the oldest request owns it
        p = pending[rid]
    if p is None:
        return  # a forgotten (timed-out) request's late response
    if resp.error_message:
        del pending[rid]
        _settle(p.future, server_error(resp.error_message))
        return
    chunk = parse(resp, t)
    p.observe(chunk)
    if chunk.final:
        del pending[rid]
        _settle(p.future, None)


class _Stream:
    """One open ModelStreamInfer call, its reader task and the requests waiting on it."""

    def __init__(self, pool: "AioStreamPool", method: grpc.aio.StreamStreamMultiCallable):
        self.pool = pool
        self.call = method()  # reader/writer style: no request iterator
        self.pending: dict[str, _Pending] = {}
        self.broken: BaseException | None = None
        self.writing = asyncio.Lock()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def write(self, data: bytes) -> None:
        # gRPC allows one outstanding write per call: users sharing a stream take turns. With one
        # user per stream the lock is never contended (and costs next to nothing).
        async with self.writing:
            await self.call.write(data)

    async def _read(self) -> None:
        pool, pending, parse = self.pool, self.pending, self.pool.parse
        broken: BaseException
        try:
            async for raw in self.call:
                t = time.perf_counter()  # arrival, before decoding
                deliver(pending, _Response.FromString(raw), t, parse, pool.server_error)
            broken = RequestError("the server closed the stream before the final response", "truncated")
        except grpc.aio.AioRpcError as err:
            broken = pool.rpc_error(err)
        except asyncio.CancelledError:
            broken = RequestError("the stream was closed", "unfinished")
        except Exception as err:  # noqa: BLE001 - a reader must never die silently
            broken = RequestError(f"reading the gRPC stream failed: {err}", "bad_response")
        self.broken = broken
        orphans = list(pending.values())
        pending.clear()
        for p in orphans:
            _settle(p.future, broken)

    def cancel(self) -> None:
        self.call.cancel()  # Triton aborts every request still running on this stream
        self.reader.cancel()


class AioStreamPool:
    """`n_streams` streams over `n_channels` channels, opened lazily on the running loop."""

    def __init__(self, url: str, parse: Callable, rpc_error: Callable, server_error: Callable,
                 n_streams: int = 64, n_channels: int = 1, options: tuple = ()):
        self.parse, self.rpc_error, self.server_error = parse, rpc_error, server_error
        self.n_streams = max(1, n_streams)
        self.n_channels = max(1, min(n_channels, self.n_streams))
        # A local subchannel pool per channel: otherwise channels with equal arguments share one
        # TCP connection, and more channels would change nothing.
        self.channels = [grpc.aio.insecure_channel(url, options=[*options, ("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(self.n_channels)]
        self.methods = [ch.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
                        for ch in self.channels]  # bytes both ways: we stamp before decoding
        self.streams: list[_Stream | None] = [None] * self.n_streams
        self.next_slot = 0

    def _stream(self, slot: int) -> _Stream:
        i = slot % self.n_streams
        s = self.streams[i]
        if s is None or s.broken is not None:  # (re)open: a broken stream fails its requests, not later ones
            s = self.streams[i] = _Stream(self, self.methods[i % self.n_channels])
        return s

    async def request(self, request_id: str, body: bytes, observe: Callable[[Chunk], None],
                      slot: int | None = None) -> None:
        """Send one request; `observe(chunk)` runs on the loop for each response; returns on the final one."""
        if slot is None:
            slot, self.next_slot = self.next_slot, self.next_slot + 1
        stream = self._stream(slot)
        future = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = _Pending(future, observe)
        try:
            try:
                await stream.write(body + _id_field(request_id))
            except grpc.aio.AioRpcError as err:
                raise self.rpc_error(err) from None
            except asyncio.InvalidStateError:  # the call ended before this write: its reader says why
                if stream.broken is None:
                    await asyncio.wait({stream.reader}, timeout=1.0)
                raise stream.broken or RequestError("the gRPC stream closed", "truncated") from None
            await future
        except BaseException:
            stream.pending.pop(request_id, None)
            if not stream.pending and stream.broken is None and not future.done():
                # Alone on its stream (cancelled, timed out): end the call so Triton aborts the request.
                stream.cancel()
                if self.streams[slot % self.n_streams] is stream:
                    self.streams[slot % self.n_streams] = None
            raise

    async def close(self) -> None:
        streams = [s for s in self.streams if s is not None]
        self.streams = [None] * self.n_streams
        for s in streams:
            s.cancel()
        await asyncio.gather(*(s.reader for s in streams), return_exceptions=True)
        for ch in self.channels:
            await ch.close()

"""The load generator's leanest gRPC transport (TRITONKIT_GRPC_STREAMS=h2): long-lived
ModelStreamInfer streams spoken over tritonkit's own HTTP/2 framing (h2_wire), without grpcio.

Why: with grpcio (threads or grpc.aio) most of the generator's CPU went to grpcio's own machinery
(a py-spy profile: the request-iterator consumer, condition waits, the channel's polling), 0.6-1.4 s
of CPU per 1,000 streamed requests against perf_analyzer's 0.2-0.3 s. A ModelStreamInfer call is
just an HTTP/2 stream of length-prefixed protobuf messages, so here a request is one DATA frame
written straight to the socket, and a response is parsed where its bytes arrive, on the loop,
with the arrival time the kernel stamped on them (stamped_socket): a late loop does not hide.

Otherwise it behaves like grpc_aio_streams, so every transport reports alike: as perf_analyzer
does, requests share streams and are told apart by id; closed-loop users get stream `slot %
n_streams`, open-loop requests go round robin; streams are spread over `n_connections` TCP
connections. A request alone on its stream that is cancelled resets the stream, so Triton aborts
it; one sharing its stream is forgotten while the server finishes it. close() resets every stream.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Callable
from urllib.parse import unquote

import grpc
from tritonclient.grpc import service_pb2

from tritonkit.client.base import Chunk, RequestError, Unreachable
from tritonkit.client.grpc_aio_streams import _Pending, deliver
from tritonkit.client.grpc_streams import METHOD, _id_field, _settle
from tritonkit.client.h2_wire import ConnectionGone, H2Connection, H2Stream, header_block
from tritonkit.client.stamped_socket import open_stamped

_Response = service_pb2.ModelStreamInferResponse
_PREFIX = struct.Struct(">BI")  # gRPC message: compressed flag, length
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_error(name: str, message: str, url: str) -> Exception:
    """A gRPC status by name (grpcio's StatusCode.name, or h2 trailers') as the error every transport raises."""
    if name == "UNAVAILABLE":
        return Unreachable(f"cannot reach Triton gRPC at {url}: {message}",
                           "is the server running? (`tritonkit serve`), or pass the right --url")
    if name == "DEADLINE_EXCEEDED":
        return RequestError(f"gRPC deadline exceeded at {url}", "timeout")
    return RequestError(f"gRPC {name}: {message}", f"grpc_{name.lower()}")


class _Call(H2Stream):
    """One open ModelStreamInfer stream and the requests waiting on it."""

    def __init__(self, pool: "H2StreamPool", conn: H2Connection):
        self.pool, self.conn = pool, conn
        self.pending: dict[str, _Pending] = {}
        self.broken: BaseException | None = None
        self.partial = b""  # a message split over DATA frames
        conn.open_stream(self, pool.headers)

    @property
    def usable(self) -> bool:
        return self.broken is None and self.conn.usable

    def send(self, message: bytes) -> None:
        self.conn.send(self, _PREFIX.pack(0, len(message)) + message)

    def on_data(self, payload: bytes, t: float) -> None:
        if self.partial:
            payload, self.partial = self.partial + payload, b""
        pos, end = 0, len(payload)
        while end - pos >= 5:
            compressed, n = _PREFIX.unpack_from(payload, pos)
            if pos + 5 + n > end:
                break
            if compressed:  # we never offer compression (no grpc-accept-encoding)
                self._fail(RequestError("the server sent a compressed gRPC message", "bad_response"))
                self.conn.reset(self)
                return
            self._message(payload[pos + 5:pos + 5 + n], t)
            pos += 5 + n
        if pos < end:
            self.partial = payload[pos:]

    def _message(self, raw: bytes, t: float) -> None:
        try:
            resp = _Response.FromString(raw)
        except Exception as err:  # noqa: BLE001 - a garbled message fails the stream, never the loop
            self._fail(RequestError(f"unreadable gRPC response: {err}", "bad_response"))
            self.conn.reset(self)
            return
        deliver(self.pending, resp, t, self.pool.parse, self.pool.server_error)

    def on_headers(self, headers: list[tuple[str, str]], end_stream: bool) -> None:
        if not end_stream:
            return
        found = dict(headers)
        try:
            status = int(found.get("grpc-status", "2"))
        except ValueError:
            status = 2
        message = unquote(found.get("grpc-message", "")) or f"HTTP status {found.get(':status', '?')}"
        if status == 0:
            self._fail(RequestError("the server closed the stream before the final response", "truncated"))
        else:
            self._fail(status_error(_STATUS_NAMES.get(status, f"STATUS_{status}"), message, self.pool.url))

    def on_end(self, error: BaseException) -> None:
        if isinstance(error, ConnectionAbortedError):  # we closed it
            self._fail(RequestError("the stream was closed", "unfinished"))
        elif isinstance(error, ConnectionGone):  # as grpcio reports a server gone: UNAVAILABLE
            self._fail(Unreachable(f"cannot reach Triton gRPC at {self.pool.url}: {error}",
                                   "is the server still running? (`tritonkit serve`)"))
        else:
            self._fail(RequestError(f"the gRPC stream broke: {error}", "truncated"))

    def _fail(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
        orphans = list(self.pending.values())
        self.pending.clear()
        for p in orphans:
            _settle(p.future, self.broken)


class H2StreamPool:
    """`n_streams` streams over `n_connections` connections, opened lazily on the running loop."""

    def __init__(self, url: str, parse: Callable, server_error: Callable, n_streams: int = 64,
                 n_connections: int = 1):
        self.url, self.parse, self.server_error = url, parse, server_error
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise RequestError(f"a gRPC address is HOST:PORT, not {url!r}", "bad_url")
        self.host, self.port = host.strip("[]"), int(port)
        self.headers = header_block([(":method", "POST"), (":scheme", "http"), (":path", METHOD),
                                     (":authority", url), ("content-type", "application/grpc"),
                                     ("te", "trailers"), ("user-agent", "tritonkit-h2")])
        self.n_streams = max(1, n_streams)
        self.n_connections = max(1, min(n_connections, self.n_streams))
        self.connections: list[H2Connection | None] = [None] * self.n_connections
        self.connecting: list[asyncio.Future | None] = [None] * self.n_connections
        self.streams: list[_Call | None] = [None] * self.n_streams
        self.next_slot = 0

    async def _connection(self, i: int) -> H2Connection:
        conn = self.connections[i]
        if conn is not None and conn.usable:
            return conn
        if self.connecting[i] is None:  # one connect per connection, however many requests wait on it
            self.connecting[i] = asyncio.ensure_future(self._connect(i))
        try:
            return await asyncio.shield(self.connecting[i])
        finally:
            if self.connecting[i] is not None and self.connecting[i].done():
                self.connecting[i] = None

    async def _connect(self, i: int) -> H2Connection:
        try:
            conn = await open_stamped(self.host, self.port, H2Connection)
        except OSError as err:
            raise Unreachable(f"cannot reach Triton gRPC at {self.url}: {err.strerror or err}",
                              "is the server running? (`tritonkit serve`), or pass the right --url") from None
        old, self.connections[i] = self.connections[i], conn
        if old is not None:
            old.close()
        return conn

    async def _stream(self, slot: int) -> _Call:
        i = slot % self.n_streams
        s = self.streams[i]
        if s is None or not s.usable:
            conn = await self._connection(i % self.n_connections)
            s = self.streams[i]  # another request may have opened it meanwhile
            if s is None or not s.usable:
                s = self.streams[i] = _Call(self, conn)
        return s

    async def request(self, request_id: str, body: bytes, observe: Callable[[Chunk], None],
                      slot: int | None = None) -> None:
        """Send one request; `observe(chunk)` runs on the loop for each response; returns on the final one."""
        if slot is None:
            slot, self.next_slot = self.next_slot, self.next_slot + 1
        stream = self.streams[slot % self.n_streams]
        if stream is None or not stream.usable:
            stream = await self._stream(slot)
            if stream.broken is not None:  # it ended as it opened: its connection was lost meanwhile
                raise stream.broken
        future = asyncio.get_running_loop().create_future()
        stream.pending[request_id] = _Pending(future, observe)
        try:
            stream.send(body + _id_field(request_id))
            await future
        except BaseException:
            stream.pending.pop(request_id, None)
            if not stream.pending and stream.broken is None and not future.done():
                # Alone on its stream (cancelled, timed out): reset it so Triton aborts the request.
                stream.broken = RequestError("the stream was reset", "unfinished")
                stream.conn.reset(stream)
                if self.streams[slot % self.n_streams] is stream:
                    self.streams[slot % self.n_streams] = None
            raise

    async def close(self) -> None:
        self.streams = [None] * self.n_streams
        for conn in self.connections:
            if conn is not None:
                conn.close()
        self.connections = [None] * self.n_connections

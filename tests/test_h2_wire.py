"""tritonkit's HTTP/2 framing (tritonkit.client.h2_wire) and the gRPC stream on it, byte by byte,
without a server: what a real server may do that the ground-truth runs rarely show (frames split
over reads, padding, a message over several DATA frames, resets, GOAWAY, error trailers, windows)."""

from __future__ import annotations

import asyncio
import struct

import hpack
import pytest

from tritonkit.client import h2_wire as h2
from tritonkit.client.base import RequestError, Unreachable
from tritonkit.client.grpc_aio_streams import _Pending
from tritonkit.client.grpc_h2_streams import H2StreamPool, _Call


class FakeTransport:
    def __init__(self):
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def frames(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    if raw.startswith(h2.PREFACE):
        pos = len(h2.PREFACE)
    while pos < len(raw):
        head, flags, sid = struct.unpack_from(">IBI", raw, pos)
        out.append((head & 0xFF, flags, sid, bytes(raw[pos + 9:pos + 9 + (head >> 8)])))
        pos += 9 + (head >> 8)
    return out


class Recorder(h2.H2Stream):
    def __init__(self):
        self.data, self.headers, self.ended = [], [], []

    def on_data(self, payload, t):
        self.data.append((payload, t))

    def on_headers(self, headers, end_stream):
        self.headers.append((headers, end_stream))

    def on_end(self, error):
        self.ended.append(error)


def connection() -> tuple[h2.H2Connection, FakeTransport]:
    conn, transport = h2.H2Connection(), FakeTransport()
    conn.connection_made(transport)
    return conn, transport


def test_the_preface_offers_a_wide_window_and_no_push_and_settings_and_pings_are_answered():
    conn, transport = connection()
    assert transport.written.startswith(h2.PREFACE)
    (settings, window) = frames(transport.written)
    assert settings[0] == h2.SETTINGS and struct.unpack(">HIHI", settings[3]) == (2, 0, 4, 2**31 - 1)
    assert window[0] == h2.WINDOW_UPDATE and struct.unpack(">I", window[3])[0] == 2**31 - 1 - 65535
    transport.written.clear()
    conn.data_received(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", 5, 32768)) + h2.frame(h2.PING, 0, 0, b"12345678"))
    assert frames(transport.written) == [(h2.SETTINGS, h2.ACK, 0, b""), (h2.PING, h2.ACK, 0, b"12345678")]
    assert conn.peer_max_frame == 32768


def test_frames_split_anywhere_over_reads_arrive_whole_with_their_read_time():
    conn, _ = connection()
    stream = Recorder()
    conn.open_stream(stream, h2.header_block([(":status", "200")]))
    padded = bytes([3]) + b"hello" + b"\0\0\0"
    raw = h2.frame(h2.DATA, 0, 1, b"first") + h2.frame(h2.DATA, h2.PADDED, 1, padded)
    for i, byte in enumerate(raw):
        conn.data_received(raw[i:i + 1], t=float(i))
    assert stream.data == [(b"first", 13.0), (b"hello", len(raw) - 1.0)]


def test_a_grpc_message_over_several_data_frames_and_two_messages_in_one():
    pool = H2StreamPool("127.0.0.1:1", parse=None, server_error=None)
    conn, _ = connection()
    call = _Call(pool, conn)
    got = []
    call._message = lambda raw, t: got.append(raw)
    message = b"x" * 10
    wire = struct.pack(">BI", 0, 10) + message
    call.on_data(wire[:3], 0.0)
    call.on_data(wire[3:8], 0.0)
    call.on_data(wire[8:] + wire + wire, 0.0)
    assert got == [message] * 3 and call.partial == b""


def test_error_trailers_and_resets_fail_what_waits_on_the_stream():
    pool = H2StreamPool("127.0.0.1:8001", parse=None, server_error=None)
    conn, _ = connection()
    encoder = hpack.Encoder()
    calls = [_Call(pool, conn) for _ in range(4)]
    futures = []
    loop = asyncio.new_event_loop()
    try:
        for call in calls:
            future = loop.create_future()
            call.pending["r"] = _Pending(future, None)
            futures.append(future)
        trailers = encoder.encode([("grpc-status", "14"), ("grpc-message", "going%20away")])
        conn.data_received(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, trailers))
        conn.data_received(h2.frame(h2.RST_STREAM, 0, 3, struct.pack(">I", 2)))
        conn.data_received(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 5,
                                    encoder.encode([("grpc-status", "0")])))
        conn.data_received(h2.frame(h2.GOAWAY, 0, 0, struct.pack(">II", 5, 0) + b"bye"))
    finally:
        loop.close()
    errors = [f.exception() for f in futures]
    assert isinstance(errors[0], Unreachable) and "going away" in errors[0].message
    assert isinstance(errors[1], RequestError) and "reset the stream (HTTP/2 error code 2)" in errors[1].message
    assert errors[2].kind == "truncated" and "before the final response" in errors[2].message
    assert isinstance(errors[3], Unreachable) and "GOAWAY" in errors[3].message  # never seen by the server
    assert not conn.usable


def test_a_stream_opened_on_a_lost_connection_ends_at_once_and_its_request_fails():
    """A killed server's connection can be lost while a request's connect completes: the stream opened
    on it then was registered where nothing would end it, and the request waited for its timeout
    (CI: 10 s, then TimeoutError). Now it ends at once and the request fails as Unreachable."""
    conn, transport = connection()
    transport.closed = True  # as the socket does when it is lost, then it tells the connection
    conn.connection_lost(ConnectionResetError("reset"))
    written = len(transport.written)
    stream = Recorder()
    conn.open_stream(stream, b"")
    assert isinstance(stream.ended[0], h2.ConnectionGone) and not conn.streams
    assert len(transport.written) == written

    pool = H2StreamPool("127.0.0.1:8001", parse=None, server_error=None)
    lost, lost_transport = connection()
    lost_transport.closed = True
    lost.connection_lost(None)

    async def connect(i):
        return lost

    pool._connection = connect
    with pytest.raises(Unreachable, match="closed the connection"):
        asyncio.run(asyncio.wait_for(pool.request("r", b"body", lambda chunk: None), 2))


@pytest.mark.parametrize("size", [100, 70_000])
def test_sending_waits_for_window_and_respects_the_frame_size(size):
    conn, transport = connection()
    conn.data_received(h2.frame(h2.SETTINGS, 0, 0, struct.pack(">HI", 4, 1000)))  # stream windows: 1000 bytes
    stream = Recorder()
    conn.open_stream(stream, b"")
    transport.written.clear()
    conn.send(stream, b"a" * size)
    sent = [f for f in frames(transport.written) if f[0] == h2.DATA]
    assert sum(len(f[3]) for f in sent) == min(size, 1000)
    assert stream.send_window == 1000 - min(size, 1000) and conn.send_window == 65535 - min(size, 1000)
    conn.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 10**6)))
    sent = [f for f in frames(transport.written) if f[0] == h2.DATA]
    assert sum(len(f[3]) for f in sent) == min(size, 65535)  # then the connection's own window
    assert all(len(f[3]) <= 16384 for f in sent)
    conn.data_received(h2.frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 10**6)))
    sent = [f for f in frames(transport.written) if f[0] == h2.DATA]
    assert b"".join(f[3] for f in sent) == b"a" * size and stream.outbox is None

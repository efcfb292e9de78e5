"""A minimal HTTP/2 client connection, driven by the event loop through stamped_socket: what the
load generator's leanest gRPC transport (grpc_h2_streams) speaks to Triton.

Only what a gRPC client needs (RFC 9113): the preface and SETTINGS, HEADERS (+CONTINUATION) and
DATA both ways, flow control both ways, PING answers, RST_STREAM and GOAWAY. No push (disabled),
no priority, no TLS. The header blocks we send are built once, literal and without Huffman coding;
the server's are decoded with the `hpack` package, which keeps its dynamic table in step. On a
long-lived gRPC stream headers come only at its start and end, never per request.

Receiving: each read comes with one arrival time (the kernel's, from stamped_socket, or
time.perf_counter() before any parsing), and every DATA frame in it is handed to its stream with it.
"""

from __future__ import annotations

import struct
import time

import hpack

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
NO_ERROR, CANCEL = 0x0, 0x8
_ENABLE_PUSH, _INITIAL_WINDOW_SIZE, _MAX_FRAME_SIZE = 0x2, 0x4, 0x5
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_TOP_UP = 2**30  # received bytes after which a window is given back (keeps the server's window wide open)
_HEAD = struct.Struct(">IBI")  # (payload length << 8 | type), flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


class ConnectionGone(ConnectionError):
    """The connection ended (closed by the server, GOAWAY, unreadable): its streams end with it."""


class StreamReset(ConnectionError):
    """The server reset one stream, or ended it without trailers."""


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | ftype, flags, sid) + payload


def _hpack_int(n: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([n])
    out, n = bytearray([limit]), n - limit
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def header_block(headers: list[tuple[str, str]]) -> bytes:
    """HPACK "literal header field without indexing, new name", no Huffman: any decoder reads it."""
    out = bytearray()
    for name, value in headers:
        out.append(0)
        for text in (name.encode(), value.encode()):
            out += _hpack_int(len(text), 7) + text
    return bytes(out)


class H2Stream:
    """One stream's state on a connection; a subclass handles what arrives on it."""

    sid = 0
    send_window = _DEFAULT_WINDOW
    received = 0  # bytes since this stream's window was last given back
    outbox: bytearray | None = None  # bytes waiting for flow-control window

    def on_data(self, payload: bytes, t: float) -> None:
        raise NotImplementedError

    def on_headers(self, headers: list[tuple[str, str]], end_stream: bool) -> None:
        """Response headers, or trailers when `end_stream` (the stream is then over)."""

    def on_end(self, error: BaseException) -> None:
        """The stream ended without trailers: reset by the server, or the connection is gone."""


class H2Connection:
    """One TCP connection: frames in and out, flow control, and the streams open on it."""

    def __init__(self) -> None:
        self.transport = None  # a stamped_socket.StampedSocket (write, close, is_closing), or a test's fake
        self.streams: dict[int, H2Stream] = {}
        self.next_sid = 1
        self.pending = b""  # the start of a frame not yet complete
        self.send_window = _DEFAULT_WINDOW
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.received = 0
        self.blocked: list[H2Stream] = []  # streams with bytes waiting for window, in order
        self.closed: BaseException | None = None  # set when no new stream may open here
        self.decoder = hpack.Decoder()
        self.header_sid, self.header_end, self.header_parts = 0, False, []  # a block in CONTINUATIONs

    @property
    def usable(self) -> bool:
        return self.closed is None and self.next_sid < MAX_WINDOW

    # -- the connection's life ------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        settings = (_SETTING.pack(_ENABLE_PUSH, 0) + _SETTING.pack(_INITIAL_WINDOW_SIZE, MAX_WINDOW))
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - _DEFAULT_WINDOW)))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_all(ConnectionGone(f"the server closed the connection{': ' + str(exc) if exc else ''}"))

    def _fail_all(self, error: BaseException) -> None:
        if self.closed is None:
            self.closed = error
        streams, self.streams, self.blocked = list(self.streams.values()), {}, []
        for stream in streams:
            stream.on_end(error)

    def close(self) -> None:
        self._fail_all(ConnectionAbortedError("the connection was closed"))  # before the socket says "lost"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(NO_ERROR)))
            self.transport.close()

    # -- sending ----------------------------------------------------------------------------------
    def open_stream(self, stream: H2Stream, block: bytes) -> None:
        """Start a stream with a (small, ready-made) header block; it stays open for sending. On a
        connection already lost it ends at once: nothing would ever answer or end it (a request can
        open one on a connection lost while its connect completed, as a killed server goes)."""
        stream.sid, self.next_sid = self.next_sid, self.next_sid + 2
        stream.send_window = self.peer_initial_window
        if self.transport.is_closing():
            stream.on_end(self.closed or ConnectionGone("the connection was already closed"))
            return
        self.streams[stream.sid] = stream
        self.transport.write(frame(HEADERS, END_HEADERS, stream.sid, block))

    def send(self, stream: H2Stream, payload: bytes) -> None:
        """DATA on an open stream, as flow control allows now; the rest waits for WINDOW_UPDATE."""
        n = len(payload)
        if stream.outbox is None and n <= stream.send_window and n <= self.send_window and n <= self.peer_max_frame:
            stream.send_window -= n  # the usual case: one small request, one frame, one write
            self.send_window -= n
            self.transport.write(_HEAD.pack(n << 8, 0, stream.sid) + payload)
            return
        if stream.outbox is None:
            stream.outbox = bytearray()
            self.blocked.append(stream)
        stream.outbox += payload
        self._flush()

    def _flush(self) -> None:
        still = []
        for stream in self.blocked:
            box = stream.outbox
            while box and stream.send_window > 0 and self.send_window > 0:
                n = min(len(box), stream.send_window, self.send_window, self.peer_max_frame)
                self.transport.write(frame(DATA, 0, stream.sid, bytes(box[:n])))
                del box[:n]
                stream.send_window -= n
                self.send_window -= n
            if box and stream.sid in self.streams:
                still.append(stream)
            else:
                stream.outbox = None
        self.blocked = still

    def reset(self, stream: H2Stream, code: int = CANCEL) -> None:
        """End a stream at once (the server aborts its work on it); nothing more is told to it."""
        if self.streams.pop(stream.sid, None) is not None and self.transport and not self.transport.is_closing():
            self.transport.write(frame(RST_STREAM, 0, stream.sid, _U32.pack(code)))

    # -- receiving --------------------------------------------------------------------------------
    def data_received(self, data: bytes, t: float | None = None) -> None:
        """`t`: when the bytes arrived (stamped_socket gives the kernel's stamp); else now, before parsing."""
        if t is None:
            t = time.perf_counter()
        buf = self.pending + data if self.pending else data
        pos, end_all = 0, len(buf)
        while end_all - pos >= 9:
            head, flags, sid = _HEAD.unpack_from(buf, pos)
            end = pos + 9 + (head >> 8)
            if end > end_all:
                break
            if head & 0xFF == DATA:
                self._data(sid, flags, buf[pos + 9:end], t)
            else:
                self._control(head & 0xFF, flags, sid & MAX_WINDOW, buf[pos + 9:end])
            pos = end
        self.pending = buf[pos:] if pos < end_all else b""

    def _data(self, sid: int, flags: int, payload: bytes, t: float) -> None:
        self.received += len(payload)
        if self.received >= _TOP_UP:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.received = 0
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream we reset: its late bytes
        stream.received += len(payload)
        if stream.received >= _TOP_UP:
            self.transport.write(frame(WINDOW_UPDATE, 0, sid, _U32.pack(stream.received)))
            stream.received = 0
        if flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        if payload:
            stream.on_data(payload, t)
        if flags & END_STREAM and self.streams.pop(sid, None) is not None:
            stream.on_end(StreamReset("the server ended the stream without trailers"))

    def _control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            self.header_sid, self.header_end, self.header_parts = sid, bool(flags & END_STREAM), [payload]
            if flags & END_HEADERS:
                self._headers_done()
        elif ftype == CONTINUATION:
            self.header_parts.append(payload)
            if flags & END_HEADERS:
                self._headers_done()
        elif ftype == WINDOW_UPDATE:
            grow = _U32.unpack_from(payload)[0] & MAX_WINDOW
            if sid == 0:
                self.send_window += grow
            elif sid in self.streams:
                self.streams[sid].send_window += grow
            if self.blocked:
                self._flush()
        elif ftype == SETTINGS and not flags & ACK:
            for pos in range(0, len(payload) - 5, 6):
                key, value = _SETTING.unpack_from(payload, pos)
                if key == _INITIAL_WINDOW_SIZE:
                    for stream in self.streams.values():
                        stream.send_window += value - self.peer_initial_window
                    self.peer_initial_window = value
                elif key == _MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            self.transport.write(frame(SETTINGS, ACK, 0))
            if self.blocked:
                self._flush()
        elif ftype == PING and not flags & ACK:
            self.transport.write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                code = _U32.unpack_from(payload)[0]
                stream.on_end(StreamReset(f"the server reset the stream (HTTP/2 error code {code})"))
        elif ftype == GOAWAY:
            last_sid, code = _U32.unpack_from(payload)[0] & MAX_WINDOW, _U32.unpack_from(payload, 4)[0]
            why = payload[8:].decode("utf-8", "replace")
            self.closed = ConnectionGone(f"the server is closing the connection (GOAWAY, code {code}"
                                               f"{': ' + why if why else ''})")
            for stream_id in [s for s in self.streams if s > last_sid]:  # never seen by the server
                self.streams.pop(stream_id).on_end(self.closed)

    def _headers_done(self) -> None:
        block = b"".join(self.header_parts)
        sid, end_stream = self.header_sid, self.header_end
        self.header_parts = []
        try:
            headers = [(name, value) for name, value in self.decoder.decode(block)]
        except hpack.HPACKError as err:  # the table is out of step: nothing more on this connection can be read
            self._fail_all(ConnectionGone(f"unreadable HTTP/2 headers from the server: {err}"))
            self.transport.close()
            return
        stream = self.streams.pop(sid, None) if end_stream else self.streams.get(sid)
        if stream is not None:
            stream.on_headers(headers, end_stream)

"""A TCP connection on the event loop whose reads carry the kernel's receive time (SO_TIMESTAMPNS).

Why: the load generator stamps each response's arrival to measure TTFT and E2E. Stamped when the
event loop gets to it, a late loop (a blocking call, a starved CPU) would push every stamp late:
the client's own delay would hide inside the server's latency, and the next closed-loop send
would look on time. The kernel stamps each packet as it arrives, so a stalled client shows as
what it is: send lag, and an event-loop stall, not a slower server. (The thread transport gets
the same from a reader thread; here it costs nothing: one recvmsg instead of one recv.)

Where the kernel gives no stamp (another OS, an option refused) the read is stamped on the loop.
Only what h2_wire needs of an asyncio transport: write, close, is_closing; the protocol gets
data_received(data, t) and connection_lost(exc).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time

# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS), with a 64-bit struct timespec: the generic value
# that x86-64 and arm64 use (Python's socket module does not export it).
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
_TIMESPEC = struct.Struct("@qq")
_READ = 256 * 1024
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


class StampedSocket:
    """A connected non-blocking socket driven by the loop's reader/writer callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol):
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.fd = sock.fileno()
        self.out = bytearray()  # what the socket did not take yet
        self.closing = False
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                pass  # reads are then stamped on the loop
        loop.add_reader(self.fd, self._readable)
        protocol.connection_made(self)

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(_READ, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lost(err)
            return
        now = time.perf_counter()
        if not data:
            self._lost(None)
            return
        t = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                # The stamp is wall-clock time; perf_counter's clock differs from it by a fixed offset.
                t = min(now, sec + nsec * 1e-9 - (time.time() - now))
        self.protocol.data_received(data, t)

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as err:
                self._lost(err)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.loop.add_writer(self.fd, self._writable)
        self.out += data

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lost(err)
            return
        del self.out[:sent]
        if not self.out:
            self.loop.remove_writer(self.fd)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Close now (what is still unsent is dropped: h2_wire closes only to end everything)."""
        self._lost(None)

    def _lost(self, err: BaseException | None) -> None:
        if self.fd < 0:
            return
        self.closing = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.fd = -1
        self.protocol.connection_lost(err)


async def open_stamped(host: str, port: int, protocol_factory):
    """Connect to host:port (each address in turn) and drive `protocol_factory()` on the connection."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError(f"no address for {host}")
    try:  # a numeric address needs no lookup (and no thread for it)
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as err:
            sock.close()
            error = err
            continue
        except BaseException:
            sock.close()
            raise
        protocol = protocol_factory()
        StampedSocket(loop, sock, protocol)
        return protocol
    raise error

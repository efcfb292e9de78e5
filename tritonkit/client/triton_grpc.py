"""Triton gRPC streaming (ModelStreamInfer) against a decoupled model such as the vLLM backend.

One bidirectional stream per request, so cancelling a request cancels exactly its gRPC call and
Triton aborts the vLLM request. Messages come from tritonclient's generated protobuf/gRPC modules;
the request is built from a template once per client (only the prompt, the sampling JSON and the
id change) and responses are decoded straight from the protobuf. That keeps the client's CPU per
request low, and it lets us opt into Triton's empty final response
(`triton_enable_empty_final_response`), which tritonclient's `stream_infer` refuses as a reserved
parameter: without it a request whose backend ends with a bare FINAL flag would never end.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from typing import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tritonkit.client.base import Chunk, RequestError, StreamClient, UnknownModel, sampling_json
from tritonkit.client.grpc_streams import StreamPool
from tritonkit.client.grpc_aio_streams import AioStreamPool
from tritonkit.client.grpc_h2_streams import H2StreamPool, status_error
from tritonkit.errors import ServerError, UsageError

_BOOL_INPUTS = ("stream", "exclude_input_in_output", "return_num_input_tokens",
                "return_num_output_tokens", "return_finish_reason")
_MAX_MESSAGE = 2**31 - 1
_OPTIONS = (("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE))
_U32 = struct.Struct("<I")
_CACHE_MAX = 20000  # distinct (prompt, sampling) request bodies kept
# The load generator's gRPC transport (TRITONKIT_GRPC_STREAMS), to compare them on one server:
#   h2           shared long-lived streams on tritonkit's own HTTP/2 framing, no grpcio (grpc_h2_streams)
#   aio          shared long-lived streams on grpc.aio, all on the event loop (grpc_aio_streams)
#   threads      shared long-lived streams on sync gRPC, two threads a stream (grpc_streams; was "shared")
#   per-request  one stream per request (the pattern before issue 13; cancels exactly one request)
# The default is h2: about half the CPU per request of aio and threads (16 cores, one process:
# 0.22 s per 1,000 requests against aio's 0.51 and perf_analyzer's 0.32), and its arrival times are
# the kernel's, so a stalled loop still shows as send lag (threads get that from reader threads;
# aio stamps on the loop, where a stall hides inside the latencies).
TRANSPORTS = ("h2", "aio", "threads", "per-request")
DEFAULT_TRANSPORT = "h2"


def _bytes_tensor(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def _decode_bytes(raw: bytes) -> list[bytes]:
    out, pos, end = [], 0, len(raw)
    while pos + 4 <= end:
        (n,) = _U32.unpack_from(raw, pos)
        out.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def _request_template(model: str) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model)
    for name, dtype in (("text_input", "BYTES"), ("sampling_parameters", "BYTES")):
        req.inputs.add(name=name, datatype=dtype, shape=[1])
        req.raw_input_contents.append(b"")
    for name in _BOOL_INPUTS:
        req.inputs.add(name=name, datatype="BOOL", shape=[1])
        req.raw_input_contents.append(b"\x01")
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def _parse(resp, t: float) -> Chunk:
    ir = resp.infer_response
    text, n_out, n_in, reason = "", None, None, None
    raw = ir.raw_output_contents
    for i, out in enumerate(ir.outputs):
        data = raw[i] if i < len(raw) else b""
        name = out.name
        if name == "text_output":
            text = b"".join(_decode_bytes(data)).decode("utf-8", "replace")
        elif name == "num_output_tokens":
            n_out = sum(struct.unpack(f"<{len(data) // 4}I", data))
        elif name == "num_input_tokens" and len(data) >= 4:
            n_in = _U32.unpack_from(data)[0]
        elif name == "finish_reason":
            parts = _decode_bytes(data)
            reason = parts[0].decode() if parts and parts[0] else None
            reason = None if reason == "None" else reason  # vLLM backends send "None" until the last
    params = ir.parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    return Chunk(text, n_out, reason, n_in, t, final)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a whole number") from None


def _server_error(message: str, model: str) -> Exception:
    if "unknown model" in message.lower():
        return UnknownModel(f"the server does not serve model {model!r}: {message}",
                            "check the model name (`tritonkit serve` lists the models it loaded)")
    return RequestError(f"server error: {message}", "server_error")


class TritonGrpcClient(StreamClient):
    protocol = "grpc"

    def __init__(self, url: str, model: str):
        super().__init__(url.removeprefix("grpc://"), model)
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._template = _request_template(model)
        self._pool: StreamPool | AioStreamPool | H2StreamPool | None = None
        self._bodies: dict[tuple, bytes] = {}
        self.transport = os.environ.get("TRITONKIT_GRPC_STREAMS", DEFAULT_TRANSPORT).replace("shared", "threads")
        if self.transport not in TRANSPORTS:
            raise UsageError(f"TRITONKIT_GRPC_STREAMS={self.transport!r} is not a transport",
                             f"use one of: {', '.join(TRANSPORTS)}")
        # Streams a process opens (closed-loop users get one each up to this many) and the TCP
        # connections they share; TRITONKIT_GRPC_STREAM_COUNT / TRITONKIT_GRPC_CHANNELS to measure others.
        self.n_streams = _env_int("TRITONKIT_GRPC_STREAM_COUNT", 16 if self.transport == "threads" else 64)
        self.n_channels = _env_int("TRITONKIT_GRPC_CHANNELS", 1)

    def _get_stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:  # created lazily: a grpc.aio channel belongs to the running loop
            self._channel = grpc.aio.insecure_channel(self.url, options=list(_OPTIONS))
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    def _rpc_error(self, err: grpc.aio.AioRpcError) -> Exception:
        return status_error(err.code().name, err.details(), self.url)

    async def check(self, timeout_s: float = 5.0) -> None:
        stub = self._get_stub()
        try:
            await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout_s, wait_for_ready=False)
            ready = await stub.ModelReady(service_pb2.ModelReadyRequest(name=self.model), timeout=timeout_s)
            if ready.ready:
                return
            index = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise self._rpc_error(err) from None
        states = {m.name: (m.state, m.reason) for m in index.models}
        if self.model not in states:
            have = ", ".join(sorted(states)) or "none"
            raise UnknownModel(f"Triton at {self.url} does not serve model {self.model!r} (it has: {have})",
                               "pass --model with one of those names")
        state, reason = states[self.model]
        raise ServerError(f"model {self.model!r} is not ready ({state}{': ' + reason if reason else ''})",
                          "wait for it to load, or check the server log")

    async def stream(self, prompt: str, sampling: dict, lora_name: str | None = None,
                     request_id: str | None = None) -> AsyncIterator[Chunk]:
        req = service_pb2.ModelInferRequest()
        req.CopyFrom(self._template)
        req.raw_input_contents[0] = _bytes_tensor(prompt.encode("utf-8"))
        req.raw_input_contents[1] = _bytes_tensor(sampling_json(sampling, lora_name).encode("utf-8"))
        if request_id:
            req.id = request_id
        call = self._get_stub().ModelStreamInfer()
        finished = False
        try:
            try:
                await call.write(req)
                await call.done_writing()
                while True:
                    resp = await call.read()
                    t = time.perf_counter()
                    if resp is grpc.aio.EOF:
                        raise RequestError("the stream ended before the final response", "truncated")
                    if resp.error_message:
                        finished = True
                        raise _server_error(resp.error_message, self.model)
                    chunk = _parse(resp, t)
                    if chunk.final:
                        finished = True
                    yield chunk
                    if finished:
                        return
            except grpc.aio.AioRpcError as err:
                finished = True
                raise self._rpc_error(err) from None
        finally:
            if not finished:  # cancelled or abandoned: tell Triton, which aborts the vLLM request
                call.cancel()

    def _build(self, prompt: str, sampling: dict, lora_name: str | None) -> bytes:
        req = service_pb2.ModelInferRequest()
        req.CopyFrom(self._template)
        req.raw_input_contents[0] = _bytes_tensor(prompt.encode("utf-8"))
        req.raw_input_contents[1] = _bytes_tensor(sampling_json(sampling, lora_name).encode("utf-8"))
        return req.SerializeToString()

    def _body(self, prompt: str, sampling: dict, lora_name: str | None) -> bytes:
        """The request's bytes without its id, built once per (prompt, sampling, adapter)."""
        try:
            key = (prompt, lora_name, *sampling.items())
            body = self._bodies.get(key)
        except TypeError:  # an unhashable sampling value (a list of stop strings): not cached
            return self._build(prompt, sampling, lora_name)
        if body is None:
            body = self._build(prompt, sampling, lora_name)
            if len(self._bodies) < _CACHE_MAX:
                self._bodies[key] = body
        return body

    async def request(self, prompt: str, sampling: dict, lora_name: str | None, request_id: str,
                      observe, slot: int | None = None) -> None:
        """The load generator's path: shared long-lived streams (grpc_aio_streams, or grpc_streams'
        threads); `observe` gets each chunk stamped on arrival (on a reader thread for `threads`)."""
        if self.transport == "per-request":
            return await super().request(prompt, sampling, lora_name, request_id, observe, slot)
        if self._pool is None:
            errors = (self._rpc_error, lambda message: _server_error(message, self.model))
            if self.transport == "h2":
                self._pool = H2StreamPool(self.url, _parse, errors[1], self.n_streams, self.n_channels)
            elif self.transport == "aio":
                self._pool = AioStreamPool(self.url, _parse, *errors, self.n_streams, self.n_channels, _OPTIONS)
            else:
                self._pool = StreamPool(self.url, _parse, *errors, self.n_streams, _OPTIONS)
        await self._pool.request(request_id, self._body(prompt, sampling, lora_name), observe, slot)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if isinstance(pool, (AioStreamPool, H2StreamPool)):
                await pool.close()
            else:
                await asyncio.to_thread(pool.close)
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

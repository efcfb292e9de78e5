"""One streaming interface over three protocols.

    client = open_client("grpc", "127.0.0.1:8001", "tiny-llama")
    await client.check()                       # Unreachable / UnknownModel, clearly worded
    async for chunk in client.stream("Hello", {"max_tokens": 16, "ignore_eos": True}):
        print(chunk.text, chunk.num_output_tokens, chunk.finish_reason, chunk.t)
    await client.close()

Protocols: "grpc" (Triton gRPC streaming, the default), "http" (Triton /generate_stream, SSE),
"openai" (/v1/completions stream, SSE). Cancelling the iterating task, or closing the stream
(`contextlib.aclosing`), cancels the request on the server. A chunk with `final=True` ends each
stream; it may carry no text.
"""

from __future__ import annotations

from tritonkit.client.base import Chunk, RequestError, StreamClient, UnknownModel, Unreachable, error_kind
from tritonkit.errors import UsageError

PROTOCOLS = ("grpc", "http", "openai")
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000", "openai": "http://127.0.0.1:8000"}


def open_client(protocol: str, url: str | None, model: str) -> StreamClient:
    """A client for `model` at `url` (default: the protocol's usual local port). Connects lazily."""
    url = url or DEFAULT_URLS.get(protocol, "")
    if protocol == "grpc":
        from tritonkit.client.triton_grpc import TritonGrpcClient
        return TritonGrpcClient(url, model)
    if protocol == "http":
        from tritonkit.client.triton_http import TritonHttpClient
        return TritonHttpClient(url, model)
    if protocol == "openai":
        from tritonkit.client.openai import OpenAIClient
        return OpenAIClient(url, model)
    raise UsageError(f"unknown protocol {protocol!r}", f"use one of: {', '.join(PROTOCOLS)}")


__all__ = ["Chunk", "PROTOCOLS", "DEFAULT_URLS", "RequestError", "StreamClient", "UnknownModel",
           "Unreachable", "error_kind", "open_client"]

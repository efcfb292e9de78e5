"""What every protocol client shares: the chunk it yields, the interface, and its errors.

A client streams one request at a time per `stream()` call; many calls may run concurrently on
one client (one connection pool / gRPC channel). Cancelling the task that iterates a stream (or
closing the async generator, e.g. with `contextlib.aclosing`) cancels the request on the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AsyncIterator

from tritonkit.errors import ServerError, TritonkitError, UsageError


@dataclass(slots=True)
class Chunk:
    """One streamed response as it arrived."""

    text: str  # new text only (never the prompt)
    num_output_tokens: int | None  # tokens in this chunk, as the server counted them; None if it did not say
    finish_reason: str | None  # set on the last chunk where the server reports it
    num_input_tokens: int | None  # prompt tokens, where the server reports them
    t: float  # time.perf_counter() when the chunk arrived
    final: bool = False  # the server marked this response as the request's last
    # The request's whole output token count, where a server only reports a total at the end
    # (OpenAI-style usage); per-chunk counts are then None.
    total_output_tokens: int | None = None
    # On the final chunk, where the transport's exchange ends after it (an HTTP body read to its end
    # after [DONE]): when it ended. Until then the connection is not free for the user's next request.
    ended: float | None = None

    @property
    def has_output(self) -> bool:
        """Carries generated output (text or tokens): what TTFT and ITL are measured on."""
        return bool(self.text) or bool(self.num_output_tokens)


class RequestError(TritonkitError):
    """One request failed; `kind` groups failures in reports (server_error, http_503, timeout...)."""

    exit_code = 1

    def __init__(self, message: str, kind: str = "server_error", hint: str | None = None):
        super().__init__(message, hint)
        self.kind = kind


class Unreachable(ServerError):
    """Nothing answers at the URL (refused, reset, DNS, TLS): the server is down or elsewhere."""

    kind = "unreachable"


class UnknownModel(UsageError):
    """The server answers but does not serve this model."""

    kind = "unknown_model"


def error_kind(err: BaseException) -> str:
    """A short label for grouping failures."""
    return getattr(err, "kind", None) or type(err).__name__


class StreamClient:
    """One server, one model, one protocol."""

    protocol = ""

    def __init__(self, url: str, model: str):
        self.url = url
        self.model = model

    async def check(self) -> None:
        """Raise Unreachable / UnknownModel unless the server is up and serves the model."""
        raise NotImplementedError

    def stream(self, prompt: str, sampling: dict, lora_name: str | None = None,
               request_id: str | None = None) -> AsyncIterator[Chunk]:
        raise NotImplementedError

    async def request(self, prompt: str, sampling: dict, lora_name: str | None, request_id: str,
                      observe, slot: int | None = None) -> None:
        """The load generator's path: send one request, call `observe(chunk)` for each chunk
        (possibly on another thread), return after the final one. `slot` groups a user's requests."""
        async for chunk in self.stream(prompt, sampling, lora_name, request_id):
            observe(chunk)

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> "StreamClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def sampling_json(sampling: dict, lora_name: str | None) -> str:
    """The vLLM backend's `sampling_parameters` input; max_tokens is required (vLLM's default is 16)."""
    if "max_tokens" not in sampling:
        raise UsageError("sampling parameters need max_tokens", "vLLM would silently default to 16 tokens")
    params = dict(sampling)
    if lora_name is not None:
        params["lora_name"] = lora_name
    return json.dumps(params, separators=(",", ":"))

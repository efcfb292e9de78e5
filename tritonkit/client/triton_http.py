"""Triton's HTTP generate extension: POST /v2/models/<m>/generate_stream, server-sent events.

Body keys that name model inputs become tensors, so the request carries the same inputs as the
gRPC client. Triton closes the event stream after the final response.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import aiohttp

from tritonkit.client.base import Chunk, RequestError, UnknownModel, sampling_json
from tritonkit.client.sse import SseClient, base_url, events, raise_for_status, stream_errors, unreachable
from tritonkit.errors import ServerError


def _to_chunk(t: float, event: dict) -> Chunk:
    text = event.get("text_output", "")
    if isinstance(text, list):
        text = "".join(text)
    n_out = event.get("num_output_tokens")
    if isinstance(n_out, list):
        n_out = sum(n_out)
    n_in = event.get("num_input_tokens")
    if isinstance(n_in, list):
        n_in = n_in[0] if n_in else None
    reason = event.get("finish_reason")
    if isinstance(reason, list):
        reason = reason[0] if reason else None
    if reason == "None":  # vLLM backends send "None" on every response but the last
        reason = None
    return Chunk(text or "", n_out, reason or None, n_in, t)


class TritonHttpClient(SseClient):
    protocol = "http"

    def __init__(self, url: str, model: str):
        super().__init__(base_url(url), model)
        self._endpoint = f"{self.url}/v2/models/{model}/generate_stream"

    async def check(self, timeout_s: float = 5.0) -> None:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.get(f"{self.url}/v2/health/live", timeout=timeout) as resp:
                live = resp.status == 200
            async with session.get(f"{self.url}/v2/models/{self.model}/ready", timeout=timeout) as resp:
                if resp.status == 200:
                    return
            async with session.post(f"{self.url}/v2/repository/index", json={}, timeout=timeout) as resp:
                index = await resp.json() if resp.status == 200 else []
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise unreachable(self.url, err) from None
        if not live:
            raise ServerError(f"Triton at {self.url} is not live", "check the server log")
        states = {m["name"]: m.get("state", "") for m in index}
        if self.model not in states:
            have = ", ".join(sorted(states)) or "none"
            raise UnknownModel(f"Triton at {self.url} does not serve model {self.model!r} (it has: {have})",
                               "pass --model with one of those names")
        raise ServerError(f"model {self.model!r} is not ready ({states[self.model]})",
                          "wait for it to load, or check the server log")

    async def stream(self, prompt: str, sampling: dict, lora_name: str | None = None,
                     request_id: str | None = None) -> AsyncIterator[Chunk]:
        body = {
            "text_input": prompt,
            "sampling_parameters": sampling_json(sampling, lora_name),
            "stream": True,
            "exclude_input_in_output": True,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
            "return_finish_reason": True,
        }
        if request_id:
            body["id"] = request_id
        with stream_errors(self.url):
            async with self._get_session().post(self._endpoint, json=body) as resp:
                if resp.status in (400, 404):
                    text = await resp.text()
                    if "unknown model" in text.lower() or resp.status == 404:
                        raise UnknownModel(f"the server does not serve model {self.model!r}: {text[:300]}",
                                           "check the model name")
                    raise RequestError(f"HTTP {resp.status}: {text[:300]}", f"http_{resp.status}")
                await raise_for_status(resp, self._endpoint)
                seen = False
                async for t, event in events(resp):
                    if isinstance(event, dict) and "error" in event:
                        raise RequestError(f"server error: {event['error']}", "server_error")
                    if not isinstance(event, dict):
                        raise RequestError(f"unexpected event from the server: {event!r:.200}", "bad_response")
                    seen = True
                    yield _to_chunk(t, event)
                if not seen:
                    raise RequestError("the stream ended without a response", "truncated")
                # Triton ends the event stream after the final response: mark the end.
                yield Chunk("", None, None, None, time.perf_counter(), final=True)

"""An OpenAI-compatible completions stream: POST <url>/v1/completions with stream=true.

Measures vLLM's own server, TGI, Ray Serve LLM and others with the same harness. Token counts
come from `usage`: per chunk where the server supports vLLM's `continuous_usage_stats`, else the
total at the end (`include_usage`). A LoRA adapter is selected as the model name, as vLLM does.
"""

from __future__ import annotations

import time
from typing import AsyncIterator

import aiohttp

from tritonkit.client.base import Chunk, RequestError, UnknownModel
from tritonkit.client.sse import SseClient, base_url, events, raise_for_status, stream_errors, unreachable
from tritonkit.errors import UsageError

# Sampling keys passed through as top-level body fields (vLLM and most servers accept these).
_PASS_THROUGH = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos",
                 "min_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty", "n"}


class OpenAIClient(SseClient):
    protocol = "openai"

    def __init__(self, url: str, model: str, usage_per_chunk: bool = True):
        url = base_url(url)
        super().__init__(url.removesuffix("/v1"), model)
        self.usage_per_chunk = usage_per_chunk
        self._endpoint = f"{self.url}/v1/completions"

    async def check(self, timeout_s: float = 5.0) -> None:
        try:
            async with self._get_session().get(f"{self.url}/v1/models",
                                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    return  # not every server lists models; the first request will tell
                listing = await resp.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise unreachable(self.url, err) from None
        names = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
        if names and self.model not in names:
            raise UnknownModel(f"{self.url} does not serve model {self.model!r} (it has: {', '.join(names)})",
                               "pass --model with one of those names")

    def _body(self, prompt: str, sampling: dict, lora_name: str | None) -> dict:
        if "max_tokens" not in sampling:
            raise UsageError("sampling parameters need max_tokens", "servers default to a few tokens")
        body = {"model": lora_name or self.model, "prompt": prompt, "stream": True}
        for key, value in sampling.items():
            if key in _PASS_THROUGH:
                body[key] = value
        options = {"include_usage": True}
        if self.usage_per_chunk:
            options["continuous_usage_stats"] = True  # vLLM: usage on every chunk
        body["stream_options"] = options
        return body

    async def stream(self, prompt: str, sampling: dict, lora_name: str | None = None,
                     request_id: str | None = None) -> AsyncIterator[Chunk]:
        body = self._body(prompt, sampling, lora_name)
        headers = {"X-Request-Id": request_id} if request_id else None
        with stream_errors(self.url):
            async with self._get_session().post(self._endpoint, json=body, headers=headers) as resp:
                if resp.status == 404:
                    text = await resp.text()
                    raise UnknownModel(f"{self._endpoint}: HTTP 404: {text[:300]}", "check the model name and the URL")
                await raise_for_status(resp, self._endpoint)
                counted = 0  # cumulative completion tokens seen in usage so far
                n_in = total = done_t = None
                async for t, event in events(resp):
                    if event == "[DONE]":
                        # Read on to the end of the body (it follows at once): a response left
                        # unread closes its connection, and a new TCP connect per request stalled
                        # the loop (the 274 ms send lag of issue 13).
                        done_t = t
                        continue
                    if not isinstance(event, dict):
                        raise RequestError(f"unexpected event from the server: {event!r:.200}", "bad_response")
                    if "error" in event:
                        err = event["error"]
                        raise RequestError(f"server error: {err.get('message', err) if isinstance(err, dict) else err}",
                                           "server_error")
                    usage = event.get("usage") or {}
                    n_out = None
                    if usage:
                        n_in = usage.get("prompt_tokens", n_in)
                        total = usage.get("completion_tokens", total)
                        if total is not None:
                            n_out, counted = total - counted, total
                    for choice in event.get("choices") or ():
                        yield Chunk(choice.get("text") or "", n_out if self.usage_per_chunk else None,
                                    choice.get("finish_reason"), n_in, t)
                        n_out = 0  # a chunk's usage delta belongs to its first choice
                ended = time.perf_counter()  # the body's end: the server may close it a while after [DONE]
                yield Chunk("", None, None, n_in, done_t or ended, final=True, total_output_tokens=total, ended=ended)

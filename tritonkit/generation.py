"""One streamed generation with timings: what `tritonkit generate` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tritonkit.client import open_client


BURST_S_PER_TOKEN = 0.001  # faster than 1 ms a token between first and last: delivered at once, not decoded


@dataclass
class GenerationSummary:
    text: str
    output_tokens: int
    input_tokens: int | None
    finish_reason: str | None
    ttft_s: float | None         # request sent -> first output-carrying chunk
    total_s: float               # request sent -> stream ended
    last_output_s: float | None = None  # request sent -> last output-carrying chunk

    @property
    def decode_s(self) -> float | None:
        """From the first output chunk to the last: the span the decode rate is measured over."""
        if self.ttft_s is None or self.last_output_s is None:
            return None
        return self.last_output_s - self.ttft_s

    @property
    def burst(self) -> bool:
        """The tokens arrived together (one chunk, or within ~1 ms a token): the stream did not
        show them as they were decoded, so no decode rate can be read from it."""
        return self.output_tokens >= 2 and self.decode_s is not None and \
            self.decode_s < BURST_S_PER_TOKEN * (self.output_tokens - 1)

    @property
    def tokens_per_s(self) -> float | None:
        if self.output_tokens < 2 or self.burst or not self.decode_s:
            return None
        return (self.output_tokens - 1) / self.decode_s  # decode rate, after the first token

    def line(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "n/a"
        if self.tokens_per_s:
            rate = (f"{self.tokens_per_s:.1f} tokens/s decoding ({self.output_tokens - 1} tokens in the "
                    f"{self.decode_s:.2f} s from the first to the last)")
        elif self.burst:
            rate = (f"all in one burst {self.last_output_s:.2f} s after sending (the stream did not deliver "
                    "them one by one), so no decode rate")
        else:
            rate = "no decode rate (fewer than 2 tokens)"
        inputs = f", {self.input_tokens} input tokens" if self.input_tokens is not None else ""
        return (f"time to first token {ttft}, {self.output_tokens} tokens in {self.total_s:.2f} s, {rate}"
                f"{inputs}, finish reason {self.finish_reason or 'n/a'}")


async def generate(protocol: str, url: str | None, model: str, prompt: str, sampling: dict,
                   lora_name: str | None = None, on_text: Callable[[str], None] = lambda t: None) -> GenerationSummary:
    client = open_client(protocol, url, model)
    try:
        await client.check()
        start = time.perf_counter()
        parts, tokens, first, last, input_tokens, reason = [], 0, None, None, None, None
        async for chunk in client.stream(prompt, sampling, lora_name=lora_name):
            if chunk.has_output:
                first = chunk.t if first is None else first
                last = chunk.t
            if chunk.text:
                parts.append(chunk.text)
                on_text(chunk.text)
            tokens += chunk.num_output_tokens or 0
            if chunk.total_output_tokens is not None:
                tokens = chunk.total_output_tokens
            input_tokens = chunk.num_input_tokens if chunk.num_input_tokens is not None else input_tokens
            reason = chunk.finish_reason or reason
        end = time.perf_counter()
    finally:
        await client.close()
    return GenerationSummary("".join(parts), tokens, input_tokens, reason,
                             None if first is None else first - start, end - start,
                             None if last is None else last - start)

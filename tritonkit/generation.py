"""One streamed generation with timings: what `tritonkit generate` prints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tritonkit.client import open_client


@dataclass
class GenerationSummary:
    text: str
    output_tokens: int
    input_tokens: int | None
    finish_reason: str | None
    ttft_s: float | None
    total_s: float

    @property
    def tokens_per_s(self) -> float | None:
        decode_s = self.total_s - (self.ttft_s or 0.0)
        if self.output_tokens < 2 or decode_s <= 0:
            return None
        return (self.output_tokens - 1) / decode_s  # decode rate, after the first token

    def line(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "n/a"
        rate = f"{self.tokens_per_s:.1f} tokens/s" if self.tokens_per_s else "n/a tokens/s"
        inputs = f", {self.input_tokens} input tokens" if self.input_tokens is not None else ""
        return (f"time to first token {ttft}, {self.output_tokens} tokens in {self.total_s:.2f} s, {rate}"
                f"{inputs}, finish reason {self.finish_reason or 'n/a'}")


async def generate(protocol: str, url: str | None, model: str, prompt: str, sampling: dict,
                   lora_name: str | None = None, on_text: Callable[[str], None] = lambda t: None) -> GenerationSummary:
    client = open_client(protocol, url, model)
    try:
        await client.check()
        start = time.perf_counter()
        parts, tokens, first, input_tokens, reason = [], 0, None, None, None
        async for chunk in client.stream(prompt, sampling, lora_name=lora_name):
            if chunk.has_output and first is None:
                first = chunk.t
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
                             None if first is None else first - start, end - start)

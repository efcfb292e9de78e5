"""One request's raw timestamps, and every per-request metric derived from them.

All times are time.perf_counter() values. Latencies are measured from the *intended* send time,
so a request the client sent late still counts the wait it caused (no coordinated omission);
the gap between intended and actual send is the send lag, reported on its own.

Definitions (seconds):
  send_lag = sent - intended
  ttft     = first output-carrying chunk - intended
  e2e      = done (final response) - intended
  (closed loop: a user's next intended send is its previous request's end -- `ended`, where the
   transport's exchange ends after the final response, as an HTTP body closed after [DONE] -- so the
   server's tail is not counted as the client's send lag)
  itl      = gaps between consecutive output-carrying chunks (a chunk may carry several tokens)
  tpot     = (last output chunk - first output chunk) / (output_tokens - 1), for output_tokens > 1
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    index: int
    intended: float
    max_tokens: int | None = None
    prompt_tokens: int | None = None  # as the workload built it (client-side tokenizer)
    sent: float | None = None
    chunks: list[float] = field(default_factory=list)  # arrival of each output-carrying chunk
    done: float | None = None
    ended: float | None = None  # the exchange's end where later than done (see Chunk.ended)
    input_tokens: int | None = None  # as the server reported them
    output_tokens: int | None = None  # as the server reported them (sum over chunks, or its total)
    finish_reason: str | None = None
    error_kind: str | None = None
    error: str | None = None

    # -- filled while streaming ---------------------------------------------------------------

    def observe(self, chunk) -> None:
        """Take one client Chunk into the record."""
        if chunk.has_output:
            self.chunks.append(chunk.t)
        if chunk.num_output_tokens is not None:
            self.output_tokens = (self.output_tokens or 0) + chunk.num_output_tokens
        if chunk.total_output_tokens is not None:
            self.output_tokens = chunk.total_output_tokens
        if chunk.num_input_tokens is not None:
            self.input_tokens = chunk.num_input_tokens
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if chunk.final:
            self.done = chunk.t
            self.ended = chunk.ended

    def fail(self, kind: str, message: str, t: float) -> None:
        self.error_kind, self.error = kind, message
        if self.done is None:
            self.done = t

    # -- derived ------------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.error_kind is None and self.done is not None

    @property
    def send_lag(self) -> float | None:
        return None if self.sent is None else self.sent - self.intended

    @property
    def ttft(self) -> float | None:
        return self.chunks[0] - self.intended if self.chunks else None

    @property
    def e2e(self) -> float | None:
        return None if self.done is None else self.done - self.intended

    @property
    def itl(self) -> list[float]:
        c = self.chunks
        return [c[i] - c[i - 1] for i in range(1, len(c))]

    @property
    def tpot(self) -> float | None:
        n = self.output_tokens
        if not self.chunks or n is None or n < 2:
            return None
        return (self.chunks[-1] - self.chunks[0]) / (n - 1)

    def to_dict(self, t0: float) -> dict:
        """A JSON-ready sample, times relative to the run's start `t0`."""
        rel = (lambda t: None if t is None else round(t - t0, 6))
        return {
            "index": self.index, "intended_s": rel(self.intended), "sent_s": rel(self.sent),
            "done_s": rel(self.done), "ended_s": rel(self.ended), "chunks_s": [rel(t) for t in self.chunks],
            "ttft_s": _r(self.ttft), "e2e_s": _r(self.e2e), "tpot_s": _r(self.tpot),
            "send_lag_s": _r(self.send_lag), "prompt_tokens": self.prompt_tokens,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "max_tokens": self.max_tokens, "finish_reason": self.finish_reason,
            "error_kind": self.error_kind, "error": self.error,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)

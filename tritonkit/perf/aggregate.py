"""A step's numbers from its request records: counts, throughput, latency distributions, goodput.

Latency distributions are over successful requests; failed ones are counted by kind next to them
(never dropped silently) and are never good for goodput. Throughput divides by the step's span:
from the start of its measured period to the later of its end and the last response of a request
it sent (so a server that falls behind is not flattered by requests cut off at the end).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from tritonkit.perf import slo as slo_mod
from tritonkit.perf.records import RequestRecord
from tritonkit.perf.stats import EXACT, HDR, HdrSeries, Summary, summarize

SERIES = ("ttft", "itl", "tpot", "e2e", "send_lag")


@dataclass
class StepResult:
    label: str
    kind: str
    value: float
    start: float  # perf_counter at the start of the measured period
    end: float  # end of the measured period (last intended send for open loop)
    span_s: float
    sent: int
    ok: int
    failed: int
    errors: dict[str, int]
    unfinished: int  # still in flight when the run stopped (counted as failures too)
    input_tokens: int
    output_tokens: int
    prompt_tokens: int
    output_mismatch: int  # successful requests whose output_tokens != max_tokens
    summaries: dict[str, Summary]
    percentile_method: str
    good: int
    slo_met: bool | None
    send_rate: float  # requests started per second of the measured period
    client_limited: bool = False
    client_note: str = ""
    stable: bool | None = None
    windows: list[dict] = field(default_factory=list)
    client_cpu_s: float | None = None
    client_usage: dict = field(default_factory=dict)  # verdict.ClientUsage: workers, CPU, CPU wait, machine
    server_metrics: dict = field(default_factory=dict)
    samples: list[RequestRecord] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.span_s if self.span_s > 0 else 0.0

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.span_s if self.span_s > 0 else 0.0

    @property
    def total_tps(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.span_s if self.span_s > 0 else 0.0

    @property
    def goodput_rps(self) -> float:
        return self.good / self.span_s if self.span_s > 0 else 0.0

    @property
    def mean_input_tokens(self) -> float:
        return self.input_tokens / self.ok if self.ok else 0.0

    @property
    def mean_output_tokens(self) -> float:
        return self.output_tokens / self.ok if self.ok else 0.0

    def to_dict(self, t0: float, with_samples: bool = True) -> dict:
        d = {
            "label": self.label, "kind": self.kind, "value": self.value,
            "start_s": round(self.start - t0, 6), "end_s": round(self.end - t0, 6), "span_s": round(self.span_s, 6),
            "sent": self.sent, "ok": self.ok, "failed": self.failed, "errors": self.errors,
            "unfinished": self.unfinished, "send_rate": self.send_rate,
            "requests_per_s": self.rps, "output_tokens_per_s": self.output_tps, "total_tokens_per_s": self.total_tps,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "prompt_tokens_client": self.prompt_tokens, "output_tokens_mismatch": self.output_mismatch,
            "mean_input_tokens": self.mean_input_tokens, "mean_output_tokens": self.mean_output_tokens,
            "latency_s": {k: v.to_dict() for k, v in self.summaries.items()},
            "percentile_method": self.percentile_method,
            "good": self.good, "goodput_requests_per_s": self.goodput_rps, "slo_met": self.slo_met,
            "client_limited": self.client_limited, "client_note": self.client_note,
            "client_cpu_s": self.client_cpu_s, "client_usage": self.client_usage, "stable": self.stable, "windows": self.windows,
            "server_metrics": self.server_metrics,
        }
        if with_samples:
            d["samples"] = [r.to_dict(t0) for r in self.samples]
        return d


class Aggregator:
    """Fed one finished record at a time. exact=True keeps every record (and exact percentiles);
    exact=False (soak) keeps HdrHistograms and only the last `keep` records, in constant memory."""

    def __init__(self, bounds: list, exact: bool = True, keep: int = 1000):
        self.bounds = bounds
        self.exact = exact
        self.records: list[RequestRecord] | deque = [] if exact else deque(maxlen=keep)
        self.series = {k: ([] if exact else HdrSeries()) for k in SERIES}
        self.sent = self.ok = self.good = self.unfinished = self.mismatch = 0
        self.errors: Counter = Counter()
        self.input_tokens = self.output_tokens = self.prompt_tokens = 0
        self.last_done: float | None = None

    def _add(self, name: str, value) -> None:
        if value is None:
            return
        s = self.series[name]
        s.append(value) if self.exact else s.add(value)

    def add(self, r: RequestRecord) -> None:
        self.records.append(r)
        self.sent += r.sent is not None
        self._add("send_lag", r.send_lag)
        if r.done is not None:
            self.last_done = r.done if self.last_done is None else max(self.last_done, r.done)
        if not r.ok:
            self.errors[r.error_kind or "unfinished"] += 1
            self.unfinished += r.error_kind == "unfinished"
            return
        self.ok += 1
        self.input_tokens += r.input_tokens if r.input_tokens is not None else (r.prompt_tokens or 0)
        self.output_tokens += r.output_tokens or 0
        self.prompt_tokens += r.prompt_tokens or 0
        if r.max_tokens is not None and r.output_tokens != r.max_tokens:
            self.mismatch += 1
        self.good += slo_mod.request_good(self.bounds, r)
        self._add("ttft", r.ttft)
        self._add("e2e", r.e2e)
        self._add("tpot", r.tpot)
        self.series["itl"].extend(r.itl)

    def summaries(self) -> dict[str, Summary]:
        return {k: (summarize(v) if self.exact else v.summary()) for k, v in self.series.items()}

    def result(self, label: str, kind: str, value: float, start: float, end: float,
               scheduled: int | None = None) -> StepResult:
        span = max(end, self.last_done or end) - start
        summaries = self.summaries()
        period = end - start
        return StepResult(
            label=label, kind=kind, value=value, start=start, end=end, span_s=span,
            sent=self.sent, ok=self.ok, failed=sum(self.errors.values()), errors=dict(self.errors),
            unfinished=self.unfinished, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            prompt_tokens=self.prompt_tokens, output_mismatch=self.mismatch, summaries=summaries,
            percentile_method=EXACT if self.exact else HDR, good=self.good,
            slo_met=slo_mod.step_meets(self.bounds, summaries),
            send_rate=self.sent / period if period > 0 else 0.0,
            samples=list(self.records),
        )

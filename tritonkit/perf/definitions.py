"""What each reported number means: one text, used by the docs, the Markdown and the HTML report."""

METRICS = {
    "TTFT": "time to first token: arrival of the first chunk carrying output minus the request's intended send time",
    "ITL": "inter-token latency: gap between consecutive output-carrying chunks (a chunk may carry several tokens)",
    "TPOT": "time per output token: (last output chunk - first output chunk) / (output tokens - 1), per request",
    "E2E": "end-to-end latency: the final response minus the intended send time",
    "send lag": "actual send minus intended send; the load generator's own delay, reported apart",
    "requests/s": "successful requests / span (start of the measured period to the later of its end and the last response)",
    "output tokens/s": "server-reported output tokens of successful requests / span",
    "total tokens/s": "(server-reported input + output tokens) / span",
    "goodput": "successful requests whose own TTFT/ITL/TPOT/E2E are within every SLO bound, per second of span",
    "errors": "failed requests by kind (timeout, server_error, unreachable, unfinished, http_NNN...); latency "
              "distributions are over successful requests, failures are counted beside them, never dropped",
    "$/1K tokens": "price_per_hour / (requests/s * 3600 * (mean input + mean output tokens)) * 1000: the seed's "
                   "formula with measured throughput and server-reported token counts",
    "$/1M requests": "price_per_hour / (requests/s * 3600) * 1e6",
}

LATENCY_FROM = ("Latencies are timed from the intended send time (no coordinated omission); "
                "the open-loop schedule's lag is reported separately as send lag.")

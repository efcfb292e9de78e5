"""The backend's vLLM metrics on Triton's metrics endpoint, named and bucketed as the official
vLLM backend's (REPORT_CUSTOM_METRICS): registered once per model, fed by the engine's stats.
Copied beside model.py into the server's backend folder.

Each metric update is a round trip to the Triton process, so they run on a thread of their own:
on the engine's event loop, a handful per engine step delayed the tokens behind them (a lone
request's first token sometimes came with its last on a 2-core CPU).
"""

import queue
import threading

import triton_python_backend_utils as pb_utils

# The official backend's histogram buckets (token-count ones are 1-2-5 up to max_model_len).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
E2E_BUCKETS = [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
N_BUCKETS = [1, 2, 5, 10, 20]
# Tokens per engine step. 512: vLLM's default largest CUDA graph; a bigger mixed step runs without one.
STEP_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def buckets_1_2_5(limit):
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return out
            out.append(m * scale)
        scale *= 10


class EngineMetrics:
    """One model's metric families and their metrics (a family must outlive its metrics)."""

    def __init__(self, families, metrics, logger=None):
        self.families, self.metrics, self.logger = families, metrics, logger
        self.failed = 0  # updates that raised: the first is logged, the count at stop()
        self.updates = queue.SimpleQueue()  # ("stats", message) or ("running", count); None ends
        self.thread = threading.Thread(target=self._run, name="tk-metrics", daemon=True)
        self.thread.start()

    def stop(self):
        self.updates.put(None)
        self.thread.join(5.0)
        if self.failed > 1 and self.logger is not None:
            self.logger.log_warn(f"[vllm] {self.failed} metric updates failed in all")

    def _run(self):
        for kind, value in iter(self.updates.get, None):
            try:
                self._set_running(value) if kind == "running" else self._observe(value)
            except Exception as err:  # a metric that cannot be updated must not stop the others
                self.failed += 1
                if self.failed == 1 and self.logger is not None:  # once: an update per engine step could flood the log
                    self.logger.log_warn(f"[vllm] a metric update failed ({type(err).__name__}: {err}); "
                                         "the metrics may lag, the count follows at unload")

    @classmethod
    def register(cls, model_name, version, max_model_len, logger):
        """The model's metrics, or None where the server runs with --allow-metrics=false."""
        labels = {"model": model_name, "version": str(version)}
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        token_buckets = buckets_1_2_5(max_model_len)
        specs = {  # key: (name, description, kind, buckets)
            "prompt_tokens": ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", counter, None),
            "generation_tokens": ("vllm:generation_tokens_total", "Number of generation tokens processed.", counter, None),
            # As vLLM's own server (the official backend has none): a cache hit skips that prefill.
            "cache_queries": ("vllm:prefix_cache_queries_total",
                              "Prefix cache queries, in terms of number of queried tokens.", counter, None),
            "cache_hits": ("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
                           counter, None),
            "ttft": ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     histogram, TTFT_BUCKETS),
            "itl": ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                    histogram, TPOT_BUCKETS),
            "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                    histogram, E2E_BUCKETS),
            "req_prompt": ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", histogram, token_buckets),
            "req_generation": ("vllm:request_generation_tokens", "Number of generation tokens processed.",
                               histogram, token_buckets),
            "n": ("vllm:request_params_n", "Histogram of the n request parameter.", histogram, N_BUCKETS),
            # As vLLM's own server (the official backend has none): how the engine batched its work.
            "step_tokens": ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                            histogram, STEP_BUCKETS),
            # tritonkit's own (the official backend has no such gauge): requests in flight.
            "running": ("vllm:num_requests_running", "Number of requests in the engine.",
                        pb_utils.MetricFamily.GAUGE, None),
        }
        families, metrics = [], {}
        try:
            for key, (name, description, kind, buckets) in specs.items():
                families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
                extra = {"buckets": buckets} if buckets else {}
                metrics[key] = families[-1].Metric(labels=labels, **extra)
        except pb_utils.TritonModelException as err:
            if "metrics not supported" not in str(err):
                raise
            logger.log_info("[vllm] Metrics not supported")  # the server runs with --allow-metrics=false
            return None
        return cls(families, metrics, logger)

    def set_running(self, count):
        self.updates.put(("running", count))

    def observe(self, stats):
        """One message of the engine's stats (tritonkit.backend.engine's StatLogger), queued."""
        self.updates.put(("stats", stats))

    def _set_running(self, count):
        self.metrics["running"].set(count)

    def _observe(self, stats):
        m = self.metrics
        for key in ("prompt_tokens", "generation_tokens", "cache_queries", "cache_hits"):
            if stats.get(key):
                m[key].increment(stats[key])
        if stats.get("step_tokens"):  # steps that ran no token (an abort, say) are not counted
            m["step_tokens"].observe(stats["step_tokens"])
        for key in ("ttft", "itl", "e2e", "req_prompt", "req_generation", "n"):
            for value in stats[key]:
                m[key].observe(value)

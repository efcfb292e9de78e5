"""Server-side metrics: scrape Triton's Prometheus endpoint before and after a step, keep the change.

Only vllm:* and nv_inference_* families. Counters and histogram _sum/_count become deltas; from
histogram deltas we derive the server's own mean (e.g. vLLM's mean TTFT over the step), which
can be set beside the client's numbers: the gap is network, gRPC and queueing outside vLLM.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

PREFIXES = ("vllm:", "nv_inference_")
_GAUGES = ("pending", "num_requests", "usage_perc", "cache_usage")  # levels, not counters
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse(text: str, buckets: bool = False) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the families we keep (bucket lines dropped
    unless asked for)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if not m or not m.group(1).startswith(PREFIXES) or (m.group(1).endswith("_bucket") and not buckets):
            continue
        try:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        except ValueError:
            continue
    return out


def for_model(metrics: dict[str, float], model: str | None) -> dict[str, float]:
    """Keep series about `model` (label model="...") and those without a model label."""
    if not model:
        return metrics
    return {k: v for k, v in metrics.items() if 'model="' not in k or f'model="{model}"' in k}


def scrape(url: str | None, model: str | None = None, timeout_s: float = 2.0,
           buckets: bool = False) -> dict[str, float] | None:
    """None when there is no metrics URL or nothing answers there (metrics are optional)."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return for_model(parse(resp.read().decode("utf-8", "replace"), buckets), model)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _is_gauge(key: str) -> bool:
    return any(g in _family(key) for g in _GAUGES)


def _counters(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not _is_gauge(k)}


def scrape_settled(url: str | None, model: str | None = None, pause_s: float = 0.1,
                   max_s: float = 2.0) -> dict[str, float] | None:
    """Scrape until the counters stop moving (at most `max_s`). A server counts a request's tokens
    just after it sends the final response (vLLM's stats run after its output is handed over), so a
    scrape right after the last response can miss the last few tokens."""
    if not url:
        return None
    latest = scrape(url, model)
    deadline = time.monotonic() + max_s
    while latest is not None and time.monotonic() < deadline:
        time.sleep(pause_s)
        again = scrape(url, model)
        if again is None or _counters(again) == _counters(latest):
            return again or latest
        latest = again
    return latest


def _family(key: str) -> str:
    return key.split("{", 1)[0]


def family_total(metrics: dict[str, float], family: str) -> float:
    """One metric family summed over its label sets (every model, engine, finish reason...)."""
    return sum(v for k, v in metrics.items() if _family(k) == family)


def diff(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """Change over the step: counters/sums/counts as deltas, gauges as their value after,
    and a mean for every histogram (delta sum / delta count)."""
    if before is None or after is None:
        return {}
    changes: dict[str, float] = {}
    for key, value in after.items():
        changes[key] = value if _is_gauge(key) else value - before.get(key, 0.0)
    means = {}
    for key, total in changes.items():
        fam = _family(key)
        if fam.endswith("_sum"):
            count_key = fam[:-4] + "_count" + key[len(fam):]
            n = changes.get(count_key)
            if n:
                means[fam[:-4] + key[len(fam):]] = total / n
    return {"delta": {k: v for k, v in changes.items() if v}, "histogram_means": means}

"""Server-side metrics: scrape Triton's Prometheus endpoint before and after a step, keep the change.

Only vllm:* and nv_inference_* families. Counters and histogram _sum/_count become deltas; from
histogram deltas we derive the server's own mean (e.g. vLLM's mean TTFT over the step), which
can be set beside the client's numbers: the gap is network, gRPC and queueing outside vLLM.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

PREFIXES = ("vllm:", "nv_inference_")
_GAUGES = ("pending", "num_requests", "usage_perc", "cache_usage")  # levels, not counters
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the families we keep (bucket lines dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if not m or not m.group(1).startswith(PREFIXES) or m.group(1).endswith("_bucket"):
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


def scrape(url: str | None, model: str | None = None, timeout_s: float = 2.0) -> dict[str, float] | None:
    """None when there is no metrics URL or nothing answers there (metrics are optional)."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return for_model(parse(resp.read().decode("utf-8", "replace")), model)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _family(key: str) -> str:
    return key.split("{", 1)[0]


def diff(before: dict[str, float] | None, after: dict[str, float] | None) -> dict:
    """Change over the step: counters/sums/counts as deltas, gauges as their value after,
    and a mean for every histogram (delta sum / delta count)."""
    if before is None or after is None:
        return {}
    changes: dict[str, float] = {}
    for key, value in after.items():
        gauge = any(g in _family(key) for g in _GAUGES)
        changes[key] = value if gauge else value - before.get(key, 0.0)
    means = {}
    for key, total in changes.items():
        fam = _family(key)
        if fam.endswith("_sum"):
            count_key = fam[:-4] + "_count" + key[len(fam):]
            n = changes.get(count_key)
            if n:
                means[fam[:-4] + key[len(fam):]] = total / n
    return {"delta": {k: v for k, v in changes.items() if v}, "histogram_means": means}

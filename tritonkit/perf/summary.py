"""The run's answer as one JSON-ready document: setup, each step, the best step, cost. Pure."""

from __future__ import annotations

from tritonkit.perf import cost as cost_mod
from tritonkit.perf import slo as slo_mod
from tritonkit.perf.definitions import LATENCY_FROM, METRICS


def best_step(steps, bounds):
    """The highest load that met the SLO (sweeps are ordered by load); without an SLO, the step
    with the most successful requests/s. None when no step qualifies."""
    ok = [s for s in steps if s.ok > 0]
    if bounds:
        # The highest load that met it (--rate auto bisects, so not always the last step; its
        # closed-loop probe steps count only when no open-loop step met it).
        met = [s for s in ok if s.slo_met]
        return max(met, key=lambda s: (s.kind != "concurrency", s.value), default=None)
    return max(ok, key=lambda s: s.rps, default=None)


def build(result, meta: dict, bounds: list, price: dict | None, api_prices: list) -> dict:
    """meta: model, url, protocol, workload, load..., price: {price_per_hour, source} or None."""
    steps = result.steps
    best = best_step(steps, bounds)
    doc = {
        "status": result.status,
        "message": result.message,
        "stop_reason": result.stop_reason,
        "started_at": result.started_at,
        **meta,
        "slo": slo_mod.describe(bounds),
        "definitions": {**METRICS, "latency origin": LATENCY_FROM},
        "percentile_method": steps[0].percentile_method if steps else None,
        "steps": [s.to_dict(result.t0, with_samples=False) for s in steps],
        "client_limited": any(s.client_limited for s in steps),
        "best_step": best.label if best else None,
        "best_step_basis": ("highest load meeting the SLO" if bounds else "highest throughput"),
        "cost": None,
    }
    if best is not None and price and price.get("price_per_hour"):
        at = f"{best.label}" + (f", meeting SLO {slo_mod.describe(bounds)}" if bounds else " (no SLO given)")
        c = cost_mod.cost(price["price_per_hour"], price.get("source", ""), best.rps,
                          best.mean_input_tokens, best.mean_output_tokens, api_prices, at)
        doc["cost"] = c.to_dict()
    return doc

"""One picture of a comparison: p90 end-to-end latency against achieved req/s, a line per method run."""

from __future__ import annotations

from pathlib import Path

from tritonkit.compare.methods import METHODS
from tritonkit.compare.results import MethodRun, Setup
from tritonkit.compare.table import bounds_of


def compare_plot(setup: Setup, runs: list[MethodRun], path: Path) -> Path | None:
    """PNG at `path`; None when no run measured anything."""
    if not any(r.steps for r in runs):
        return None
    try:
        import matplotlib
    except ImportError:  # the table is the result; the picture is a convenience
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    colors = {}
    for r in sorted(runs, key=lambda r: (setup.methods.index(r.method) if r.method in setup.methods else 99, r.run)):
        color = colors.setdefault(r.method, f"C{len(colors)}")
        label = METHODS[r.method].label if r.method in METHODS else r.method
        for kind, style in (("rate", "o-"), ("concurrency", "s--")):
            steps = r.sweeps.get(kind, {}).get("steps", [])
            points = [(s["requests_per_s"], s["latency_s"]["e2e"]["p90"]) for s in steps
                      if s["latency_s"]["e2e"]["p90"] is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, [y * 1000 for y in ys], style, color=color, alpha=1.0 if r.run == 1 else 0.5,
                    label=f"{label}, {'open loop' if kind == 'rate' else 'closed loop'}, run {r.run}")
            for s in steps:
                if s.get("client_limited") and s["latency_s"]["e2e"]["p90"] is not None:
                    ax.plot(s["requests_per_s"], s["latency_s"]["e2e"]["p90"] * 1000, "x", color="black", ms=9)
    for b in bounds_of(setup.slo):
        if b.metric == "e2e":
            ax.axhline(b.limit_s * 1000, color="red", lw=0.8, ls=":", label=f"SLO {b}")
    ax.set_xlabel("achieved successful requests/s")
    ax.set_ylabel("p90 end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{setup.model}: delivery methods (x: client-limited step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

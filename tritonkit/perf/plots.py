"""PNG plots (matplotlib, Agg): latency vs throughput across a sweep, and the TTFT distribution."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def latency_vs_throughput(steps, path: Path, slo_bounds=()) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [s.rps for s in steps]
    for metric, stat, style in (("e2e", "p50", "o-"), ("e2e", "p90", "s-"), ("e2e", "p99", "^-"), ("ttft", "p90", "d--")):
        y = [s.summaries[metric].get(stat) for s in steps]
        ax.plot(x, [v * 1000 if v is not None else float("nan") for v in y], style, label=f"{metric.upper()} {stat}")
    for s in steps:
        v = s.summaries["e2e"].p90
        if v is not None:
            ax.annotate(s.label, (s.rps, v * 1000), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for b in slo_bounds:
        ax.axhline(b.limit_s * 1000, color="red", lw=0.8, ls=":", label=f"SLO {b}")
    ax.set_xlabel("throughput (successful requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def ttft_distribution(steps, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    drew = False
    for s in steps:
        values = [r.ttft * 1000 for r in s.samples if r.ok and r.ttft is not None]
        if values:
            ax.hist(values, bins=min(50, max(5, len(values) // 5)), alpha=0.5, label=s.label)
            drew = True
    if not drew:
        ax.text(0.5, 0.5, "no successful requests", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("requests")
    ax.set_title("Time to first token")
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""What a person watches: a live progress bar on stderr, and the summary table on stdout (rich).

On a terminal: a progress bar per step. Otherwise (CI, pipes, soak runs): one progress line on
stderr every `every_s` seconds.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tritonkit.perf.report import step_table


class Live:
    def __init__(self, quiet: bool = False, every_s: float = 10.0, force_lines: bool = False):
        self.err = Console(stderr=True)
        self.quiet = quiet
        self.lines = force_lines or not self.err.is_terminal
        self.every_s = every_s
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._task = None
        self._step = None

    def __enter__(self) -> "Live":
        if not self.quiet and not self.lines:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                                      TimeElapsedColumn(), console=self.err, transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, info: dict) -> None:
        if self.quiet:
            return
        stats = (f"sent {info['sent']} ok {info['ok']} failed {info['failed']} "
                 f"in flight {info['inflight']}")
        desc = f"step {info['step'] + 1}/{info['steps']} {info['label']}"
        if self._progress is not None:
            total = info["planned_s"] or None
            if self._step != info["step"]:
                self._step = info["step"]
                self._task = self._progress.add_task(desc, total=total, stats=stats)
            self._progress.update(self._task, completed=min(info["elapsed_s"], total or info["elapsed_s"]),
                                  total=total, stats=stats)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s or self._step != info["step"]:
            self._last_line, self._step = now, info["step"]
            print(f"[perf] {desc} {info['elapsed_s']:.0f} s: {stats}", file=sys.stderr, flush=True)


COMPACT = ("load", "sent", "ok", "failed", "req/s", "out tok/s", "TTFT p50", "TTFT p90", "ITL p50",
           "E2E p50", "E2E p90", "E2E p99", "lag p99", "SLO")


def print_summary(doc: dict, files: dict | None = None, console: Console | None = None) -> None:
    out = console or Console(width=None if Console().is_terminal else 160)
    head, rows = step_table(doc)
    keep = [head.index(h) for h in COMPACT]
    table = Table(title=f"tritonkit perf: {doc.get('model', '')} ({doc.get('protocol', '')}), latencies in ms",
                  title_justify="left")
    for i in keep:
        table.add_column(head[i], justify="left" if head[i] == "load" else "right")
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    out.print(table)
    for s in doc["steps"]:
        if s["client_limited"]:
            out.print(f"[bold red]{s['label']}: {s['client_note']}[/]")
        if s["errors"]:
            out.print(f"[yellow]{s['label']}: errors: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()) + "[/]")
    if doc.get("best_step"):
        out.print(f"best step ({doc['best_step_basis']}): [bold]{doc['best_step']}[/]")
    elif doc.get("slo") not in (None, "none"):
        out.print("[bold red]no step met the SLO[/] " + doc["slo"])
    c = doc.get("cost")
    if c:
        out.print(f"cost at {c['at']}: ${c['price_per_hour']:.3f}/h -> "
                  f"[bold]${c['per_1k_tokens']:.6f} per 1K tokens[/], ${c['per_1m_requests']:.2f} per 1M requests")
        for a in c["api"]:
            out.print(f"  {a['name']:>20}: ${a['per_1m_requests']:.2f} per 1M requests ({a['set']} prices, {a['date']})")
    if doc["status"] != "ok":
        out.print(f"[bold red]run {doc['status']}: {doc['message']}[/]")
    if files:
        out.print("wrote " + ", ".join(str(p) for p in files.values()))

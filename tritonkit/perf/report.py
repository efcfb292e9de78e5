"""Files for a run: JSON (with per-request samples), CSV, Markdown, PNG plots, one HTML report."""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
from pathlib import Path

from tritonkit.perf import faults, plots, readiness
from tritonkit.perf.journal import write_atomic


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def step_table(doc: dict) -> tuple[list[str], list[list[str]]]:
    head = ["load", "sent", "ok", "failed", "req/s", "out tok/s", "TTFT p50", "TTFT p90", "TTFT p99",
            "ITL p50", "ITL p90", "TPOT mean", "E2E p50", "E2E p90", "E2E p99", "lag p99", "goodput/s",
            "SLO", "stable"]
    rows = []
    for s in doc["steps"]:
        lat = s["latency_s"]
        rows.append([s["label"], str(s["sent"]), str(s["ok"]), str(s["failed"]), _num(s["requests_per_s"]),
                     _num(s["output_tokens_per_s"], "{:.1f}"), _ms(lat["ttft"]["p50"]), _ms(lat["ttft"]["p90"]),
                     _ms(lat["ttft"]["p99"]), _ms(lat["itl"]["p50"]), _ms(lat["itl"]["p90"]),
                     _ms(lat["tpot"]["mean"]), _ms(lat["e2e"]["p50"]), _ms(lat["e2e"]["p90"]),
                     _ms(lat["e2e"]["p99"]), _ms(lat["send_lag"]["p99"]), _num(s["goodput_requests_per_s"]),
                     {True: "met", False: "missed", None: "-"}[s["slo_met"]],
                     {True: "yes", False: "no", None: "-"}[s["stable"]]])
    return head, rows


def cost_tables(doc: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    c = doc.get("cost")
    if not c:
        return []
    own = ("Cost on your server", ["$/hour", "req/s", "mean in tok", "mean out tok", "$/1K tokens", "$/1K output tokens", "$/1M requests"],
           [[f"{c['price_per_hour']:.3f}", f"{c['rps']:.2f}", f"{c['mean_input_tokens']:.1f}", f"{c['mean_output_tokens']:.1f}",
             _num(c["per_1k_tokens"], "{:.6f}"), _num(c["per_1k_output_tokens"], "{:.6f}"), _num(c["per_1m_requests"], "{:.2f}")]])
    api = ("The same 1M requests at API prices", ["model", "$/1M in", "$/1M out", "$ per 1M requests", "x self-hosted", "prices from"],
           [[a["name"], f"{a['usd_per_1m_input_tokens']:.2f}", f"{a['usd_per_1m_output_tokens']:.2f}", f"{a['per_1m_requests']:.2f}",
             _num(a["times_self_hosted"], "{:.1f}x"), f"{a['source']} ({a['date']})"] for a in c["api"]])
    return [own, api]


def _md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _setup_lines(doc: dict) -> list[tuple[str, str]]:
    keys = ["model", "url", "protocol", "load", "workload", "slo", "gpu", "price", "percentile_method", "status", "message", "stop_reason"]
    lines = []
    for k in keys:
        v = doc.get(k)
        if v in (None, "", {}):
            continue
        lines.append((k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
    return lines


def _notes(doc: dict) -> list[str]:
    notes = faults.describe(doc.get("faults")) + readiness.describe(doc.get("readiness"))
    for s in doc["steps"]:
        if s["client_note"]:
            notes.append(f"{s['label']}: {s['client_note']}")
        if s["errors"]:
            notes.append(f"{s['label']}: errors by kind: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()))
        if s["output_tokens_mismatch"]:
            notes.append(f"{s['label']}: {s['output_tokens_mismatch']} requests returned a different number of tokens than max_tokens")
    if doc.get("best_step"):
        notes.append(f"best step ({doc['best_step_basis']}): {doc['best_step']}")
    elif doc.get("slo") != "none":
        notes.append("no step met the SLO")
    return notes


def markdown(doc: dict, images: dict[str, str]) -> str:
    title = f"# tritonkit perf: {doc.get('model', '')}\n"
    parts = [title, f"Run {datetime.datetime.fromtimestamp(doc['started_at']).isoformat(timespec='seconds')}, "
                    f"status **{doc['status']}**" + (f": {doc['message']}" if doc['message'] else "") + "\n"]
    parts.append("## Setup\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in _setup_lines(doc)) + "\n")
    parts.append("## Results (latencies in ms)\n\n" + _md_table(*step_table(doc)) + "\n")
    notes = _notes(doc)
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    for title_, head, rows in cost_tables(doc):
        parts.append(f"## {title_}\n\nAt {doc['cost']['at']}.\n\n" + _md_table(head, rows) + "\n")
    for name, file in images.items():
        parts.append(f"![{name}]({file})\n")
    parts.append("## Definitions\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in doc["definitions"].items())
                 + f"\n- **percentiles**: {doc['percentile_method']}\n")
    return "\n".join(parts)


def _html_table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f3f3}td:first-child{text-align:left}.failed{color:#b00;font-weight:bold}img{max-width:100%}")


def html_report(doc: dict, images: dict[str, bytes]) -> str:
    e = html.escape
    status = f"<span class='{'failed' if doc['status'] != 'ok' else ''}'>{e(doc['status'])}</span>"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tritonkit perf: {e(str(doc.get('model', '')))}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>tritonkit perf: {e(str(doc.get('model', '')))}</h1>",
             f"<p>Run {e(datetime.datetime.fromtimestamp(doc['started_at']).isoformat(timespec='seconds'))}, status {status}"
             + (f": {e(doc['message'])}" if doc["message"] else "") + "</p>",
             "<h2>Setup</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in _setup_lines(doc)) + "</ul>",
             "<h2>Results (latencies in ms)</h2>" + _html_table(*step_table(doc))]
    notes = _notes(doc)
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    for title, head, rows in cost_tables(doc):
        parts.append(f"<h2>{e(title)}</h2><p>At {e(doc['cost']['at'])}.</p>" + _html_table(head, rows))
    for name, png in images.items():
        parts.append(f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("<h2>Definitions</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in doc["definitions"].items())
                 + f"<li><b>percentiles</b>: {e(str(doc['percentile_method']))}</li></ul></body></html>")
    return "\n".join(parts)


def write(out_dir: Path, doc: dict, result, bounds=()) -> dict[str, Path]:
    """Write every file, each whole or not at all (journal.write_atomic: a full disk raises a
    one-line ResultsWriteError and leaves the files already written valid); returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    full = dict(doc)
    full["steps"] = [s.to_dict(result.t0, with_samples=True) for s in result.steps]
    files["json"] = out_dir / "results.json"
    write_atomic(files["json"], json.dumps(full, indent=1, default=str) + "\n")
    head, rows = step_table(doc)
    files["csv"] = out_dir / "steps.csv"
    write_atomic(files["csv"], _csv([head, *rows]))
    files["requests_csv"] = out_dir / "requests.csv"
    cols = ["step", "index", "intended_s", "sent_s", "done_s", "ttft_s", "e2e_s", "tpot_s", "send_lag_s",
            "prompt_tokens", "input_tokens", "output_tokens", "max_tokens", "finish_reason", "error_kind", "error"]
    write_atomic(files["requests_csv"], _csv([cols] + [[step["label"]] + [r.get(c) for c in cols[1:]]
                                                       for step in full["steps"] for r in step["samples"]]))
    images: dict[str, bytes] = {}
    if result.steps:
        for key, name, draw in (("png_latency", "latency_vs_throughput.png",
                                 lambda p: plots.latency_vs_throughput(result.steps, p, bounds)),
                                ("png_ttft", "ttft_distribution.png", lambda p: plots.ttft_distribution(result.steps, p))):
            buf = io.BytesIO()
            draw(buf)
            files[key] = out_dir / name
            write_atomic(files[key], buf.getvalue())
        images = {"Latency vs throughput": files["png_latency"].read_bytes(), "TTFT distribution": files["png_ttft"].read_bytes()}
    files["md"] = out_dir / "report.md"
    write_atomic(files["md"], markdown(doc, {k: p.name for k, p in zip(images, [files.get("png_latency"), files.get("png_ttft")]) if p}))
    files["html"] = out_dir / "report.html"
    write_atomic(files["html"], html_report(doc, images))
    return files


def _csv(rows: list) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()

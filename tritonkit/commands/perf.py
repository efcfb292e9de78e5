"""`tritonkit perf` (click only; the work is in tritonkit.perf)."""

from __future__ import annotations

import json

import click

from tritonkit.errors import Interrupted, ServerError


@click.command()
@click.option("--repository", "-r", default=None, help="Model repository from `tritonkit build`; its build.json gives the model, GPU price and tokenizer "
                   "[default: the running server's, else ./model_repository].")
@click.option("--model", "-m", default=None, help="Model name on the server [default: the build's, or the server's only model].")
@click.option("--url", default=None, help="Server address [default: the running tritonkit server's, else 127.0.0.1:8001 "
                                          "for grpc, 127.0.0.1:8000 for http and openai].")
@click.option("--name", default=None, help="Which running tritonkit server (see `tritonkit status`).")
@click.option("--protocol", type=click.Choice(["grpc", "http", "openai"]), default=None,
              help="grpc: Triton's streaming gRPC; http: Triton's /generate_stream; openai: /v1/completions "
                   "[default: the server's API: openai for the vllm and ray runtimes, else grpc].")
@click.option("--preset", default=None, help="Workload preset (classification, chat: shipped from perf/presets/) or a JSON file of that shape.")
@click.option("--rate", default=None, help="Constant request rate (req/s); a list (1,2,4) or range (2:10:2) sweeps; "
              "'auto' searches for the highest rate meeting the SLO (a closed-loop probe, then bisection to 5%).")
@click.option("--poisson", default=None, help="Poisson arrivals at this mean rate; a list or range sweeps.")
@click.option("--concurrency", default=None, help="Closed loop: users sending back to back; a list or range sweeps.")
@click.option("--duration", "duration_s", type=float, default=None, help="Seconds measured (single runs) [default: the preset's, else 30].")
@click.option("--requests", type=int, default=None, help="Send this many requests instead of running for a duration.")
@click.option("--warmup", "warmup_s", type=float, default=None, help="Seconds of load before measuring [default: 0; 2 for sweeps].")
@click.option("--window", "window_s", type=float, default=5.0, show_default=True, help="Sweep stability window (s).")
@click.option("--max-step", "max_step_s", type=float, default=60.0, show_default=True, help="Sweep step time cap (s).")
@click.option("--input-tokens", type=int, default=None, help="Prompt length in tokens [default: the preset's, else 100].")
@click.option("--output-tokens", default=None, help="max_tokens: N, uniform:A:B or normal:MEAN:SD [default: the preset's, else 16].")
@click.option("--prompts", default=None, help="Your prompts: JSONL ({\"prompt\":..., \"max_tokens\":...}) or CSV.")
@click.option("--tokenizer", default=None, help="Tokenizer folder for exact token counts [default: the build's model].")
@click.option("--ignore-eos/--stop-at-eos", default=None, help="Send ignore_eos so outputs are exactly max_tokens [default: the preset's, else on].")
@click.option("--lora", default=None, help="LoRA adapter name to send with each request.")
@click.option("--slo", default=None, help="Latency SLO, e.g. 'e2e:p90<=1s,ttft:p99<=500ms'; sweeps stop when missed.")
@click.option("--gpu", default=None, help="GPU profile for the price [default: the build's].")
@click.option("--price", type=float, default=None, help="Server price in USD per hour [default: --gpu's or the build's profile].")
@click.option("--api-prices", default=None, help="JSON file of API prices to compare with [default: tritonkit/data/api_prices.json].")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="Per-request timeout (s).")
@click.option("--metrics-url", default=None, help="Prometheus endpoint scraped before and after ('none' to skip) [default: the server's metrics port].")
@click.option("--soak", is_flag=True, help="Long run in constant memory (histograms, last 1000 samples kept).")
@click.option("--out", default=None, help="Output folder [default: perf-results/<model>-<time>].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of prompts, output lengths and Poisson arrivals.")
@click.option("--on-error", type=click.Choice(["continue", "stop"]), default="continue", show_default=True,
              help="On a failed request: count it by kind and go on, or stop the run (results kept).")
@click.option("--workers", default=None, help="Load generator processes: a number, or auto [default: auto: 1 for light "
              "loads, up to half the cores for heavy ones].")
def perf(as_json: bool, **options) -> None:
    """Load-test a running server over streaming; report latency, throughput and cost."""
    from tritonkit.perf import session
    from tritonkit.perf.live import Live, print_summary

    plan = session.resolve(session.Options(**options))
    with Live(quiet=False, every_s=30.0 if plan.spec.soak else 10.0) as live:
        doc, files, result = session.execute(plan, live)
    if as_json:
        click.echo(json.dumps(doc, indent=1, default=str))
    else:
        print_summary(doc, files)
        from tritonkit.perf import faults, readiness

        for line in faults.describe(doc.get("faults")) + readiness.describe(doc.get("readiness")):
            click.echo(line)
    if doc.get("results_error"):
        from tritonkit.perf.journal import ResultsWriteError

        raise ResultsWriteError(doc["results_error"]["message"], doc["results_error"]["hint"])
    where = f"partial results in {plan.out_dir}" if files else "nothing was measured"
    if result.status == "interrupted":
        raise Interrupted(f"run interrupted: {result.message}", where)
    if result.status == "failed":
        raise ServerError(f"run failed: {result.message}", where)


COMMANDS = [perf]

"""`tritonkit generate` (stream one answer from a running server) and `tritonkit demo` (click only)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from tritonkit.errors import UsageError


def _target(url: str | None, model: str | None, name: str | None, protocol: str) -> tuple[str | None, str]:
    """URL and model: as given, else from the recorded server (its only model)."""
    if url and model:
        return url, model
    from tritonkit.runtime import state
    from tritonkit.serving import record_alive

    try:
        record = state.find(name, alive=record_alive)
    except UsageError as err:
        if (url is None and model is None) or isinstance(err, state.CorruptRecord):
            raise
        record = None
    if record is not None:
        url = url or (record.grpc_url if protocol == "grpc" else record.http_url)
        if model is None:
            if len(record.models) != 1:
                raise UsageError(f"server {record.name} serves several models ({', '.join(record.models)})",
                                 "pick one with --model")
            model = record.models[0]
    if model is None:
        raise UsageError("no model given", "pass --model NAME")
    return url, model


@click.command()
@click.argument("prompt")
@click.option("--model", "-m", default=None, help="Model name (default: the running server's only model).")
@click.option("--url", default=None, help="Server address (default: the running tritonkit server).")
@click.option("--name", default=None, help="Which running tritonkit server (see `tritonkit status`).")
@click.option("--protocol", type=click.Choice(["grpc", "http", "openai"]), default="grpc", show_default=True)
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=None, type=click.FloatRange(min=0.0))
@click.option("--top-p", default=None, type=click.FloatRange(0.0, 1.0, min_open=True))
@click.option("--top-k", default=None, type=int)
@click.option("--seed", default=None, type=int)
@click.option("--ignore-eos", is_flag=True, help="Generate exactly --max-tokens tokens.")
@click.option("--lora", "lora_name", default=None, help="LoRA adapter name (multi-LoRA repositories).")
def generate(prompt, model, url, name, protocol, max_tokens, temperature, top_p, top_k, seed, ignore_eos, lora_name):
    """Stream the answer to PROMPT token by token, then a one-line timing summary."""
    from tritonkit.generation import generate as run

    if not prompt.strip():
        raise UsageError("the prompt is empty", "pass some text to complete")
    url, model = _target(url, model, name, protocol)
    sampling = {"max_tokens": max_tokens}
    for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed)):
        if value is not None:
            sampling[key] = value
    if ignore_eos:
        sampling["ignore_eos"] = True

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    summary = asyncio.run(run(protocol, url, model, prompt, sampling, lora_name, on_text=show))
    click.echo()
    click.echo(summary.line(), err=True)


COMMANDS = [generate]


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default="tritonkit-demo",
              show_default=True, help="Where the repository and the report go.")
@click.option("--duration", default=20.0, show_default=True, type=click.FloatRange(min=1), help="Seconds of load.")
@click.option("--rate", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests per second (constant rate, open loop).")
def demo(workdir, duration, rate):
    """Build the tiny built-in model, serve it locally, load-test it, print the report, stop."""
    from tritonkit.demo import run_demo

    run_demo(workdir.resolve(), duration, rate, echo=click.echo)


COMMANDS.append(demo)

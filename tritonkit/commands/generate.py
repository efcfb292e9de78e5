"""`tritonkit generate` (stream one answer from a running server) and `tritonkit demo` (click only)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from tritonkit.errors import UsageError


def _target(url: str | None, model: str | None, name: str | None, protocol: str):
    """(Target, model): as given, else from the tritonkit server they point at (tritonkit.target)."""
    from tritonkit import target

    found = target.resolve(protocol, name=name, url=url)
    model = model or found.only_model()
    if model is None:
        if found.record is None and url is None:
            raise UsageError("no tritonkit server is running",
                             "start one with `tritonkit serve --detach`, or pass --url and --model")
        raise UsageError(f"{url} is not a server tritonkit started, so its model is unknown", "pass --model NAME")
    return found, model


def _random_weights(found, model: str) -> bool:
    """Whether the served build is a random-weight model (its answers are gibberish by design)."""
    from tritonkit import buildrecord

    build_dir = found.repository / model if found.repository else None
    if build_dir is None or not (build_dir / buildrecord.BUILD_FILE).is_file():
        return False
    try:
        return buildrecord.load_dir(build_dir).model.random_weights
    except UsageError:
        return False


@click.command()
@click.argument("prompt")
@click.option("--model", "-m", default=None, help="Model name [default: the server's only model].")
@click.option("--url", default=None, help="Server address [default: the running tritonkit server's].")
@click.option("--name", default=None, help="Which running tritonkit server (see `tritonkit status`).")
@click.option("--protocol", type=click.Choice(["grpc", "http", "openai"]), default=None,
              help="grpc: Triton's streaming gRPC; http: Triton's /generate_stream; openai: /v1/completions "
                   "[default: the server's API: openai for the vllm and ray runtimes, else grpc].")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most tokens to generate (fewer where the model ends its answer).")
@click.option("--temperature", default=None, type=click.FloatRange(min=0.0),
              help="Sampling temperature; 0 is greedy [default: the server's, 1.0 for vLLM].")
@click.option("--top-p", default=None, type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Sample from the smallest set of tokens whose probabilities add up to this [default: 1.0].")
@click.option("--top-k", default=None, type=int, help="Sample from the K most likely tokens [default: all].")
@click.option("--seed", default=None, type=int, help="Sampling seed, for repeatable answers.")
@click.option("--ignore-eos", is_flag=True, help="Generate exactly --max-tokens tokens.")
@click.option("--lora", "lora_name", default=None, help="LoRA adapter name (multi-LoRA repositories).")
def generate(prompt, model, url, name, protocol, max_tokens, temperature, top_p, top_k, seed, ignore_eos, lora_name):
    """Stream the answer to PROMPT token by token, then a one-line timing summary."""
    from tritonkit.generation import generate as run

    if not prompt.strip():
        raise UsageError("the prompt is empty", "pass some text to complete")
    found, model = _target(url, model, name, protocol)
    sampling = {"max_tokens": max_tokens}
    for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed)):
        if value is not None:
            sampling[key] = value
    if ignore_eos:
        sampling["ignore_eos"] = True

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    summary = asyncio.run(run(found.protocol, found.url, model, prompt, sampling, lora_name, on_text=show))
    click.echo()
    if _random_weights(found, model):
        click.echo(f"note: {model} has RANDOM weights, so its text is gibberish by design; "
                   "its timings are those of the real architecture", err=True)
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

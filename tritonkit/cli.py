"""The command line: one click group; each command lives in tritonkit/commands/ and calls the library.

Errors from the library (TritonkitError) become one line on stderr and a non-zero exit;
Ctrl-C exits 130. Heavy imports (torch, vllm, tritonclient) happen inside commands, so
`tritonkit --help` stays fast.
"""

from __future__ import annotations

import sys

import click

from tritonkit import __version__
from tritonkit.errors import TritonkitError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tritonkit")
def cli() -> None:
    """Fine-tuned LLM -> Triton (vLLM backend) -> measured latency, throughput and cost."""


def _register() -> None:
    from tritonkit.commands import build, generate, image, perf, serve

    for module in (build, serve, generate, perf, image):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def report_error(err: TritonkitError) -> None:
    # One line: what went wrong, then what to do about it.
    line = f"error: {err.message}" + (f" -- {err.hint}" if err.hint else "")
    click.secho(line, fg="red", err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="tritonkit", standalone_mode=False)
    except TritonkitError as err:
        report_error(err)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)

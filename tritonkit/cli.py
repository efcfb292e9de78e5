"""The command line: one click group; each command lives in tritonkit/commands/ and calls the library.

Every failure is one line on stderr, `error: what went wrong -- what to do`, and a non-zero exit:
the library's TritonkitError with its own code, click's usage errors (a missing option, a bad
value) with 2, Ctrl-C with 130. Heavy imports (torch, vllm, tritonclient) happen inside
commands, so `tritonkit --help` stays fast.
"""

from __future__ import annotations

import sys

import click

from tritonkit import __version__
from tritonkit.errors import TritonkitError, UsageError

# The order a user goes through them; `tritonkit --help` lists them so.
WORKFLOW = ("build", "serve", "generate", "perf", "compare", "plan-capacity", "status", "stop", "models", "gpus",
            "image", "runtime", "demo")

EPILOG = """\b
$TRITONKIT_HOME, what tritonkit keeps for you [default: ~/.cache/tritonkit]:
  runtime/                 the local Triton runtime
  models/                  built-in and random-weight models
  servers/                 records of the servers it started
  models.json, gpus.json   your own catalog entries (optional)
Exit codes: 2 bad input, 3 does not fit, 4 server failure, 130 interrupted."""


class WorkflowGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in WORKFLOW if name in self.commands]
        return known + sorted(set(self.commands) - set(known))


@click.group(cls=WorkflowGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tritonkit")
def cli() -> None:
    """Fine-tuned LLM -> Triton (vLLM backend) -> measured latency, throughput and cost."""


def _register() -> None:
    from tritonkit.commands import build, compare, generate, image, perf, serve

    for module in (build, serve, generate, perf, image, compare):
        for command in module.COMMANDS:
            # The listing shows the docstring's whole first line (click would cut it at ~45 characters).
            command.short_help = command.short_help or (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
            cli.add_command(command)


_register()


def report_error(err: TritonkitError) -> None:
    # One line: what went wrong, then what to do about it; a list of options goes one per line below.
    if err.hint and "\n" in err.hint:
        click.secho(f"error: {err.message}", fg="red", err=True)
        click.echo(err.hint, err=True)
        return
    click.secho(f"error: {err.message}" + (f" -- {err.hint}" if err.hint else ""), fg="red", err=True)


def _usage_error(err: click.ClickException) -> TritonkitError:
    """click's own errors ("Missing option '--gpu'.") in tritonkit's style."""
    message = err.format_message().rstrip(".")
    ctx = getattr(err, "ctx", None)
    hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `tritonkit --help`"
    error = UsageError(message[:1].lower() + message[1:], hint)
    error.exit_code = err.exit_code  # 2 for usage errors, as tritonkit's own
    return error


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="tritonkit", standalone_mode=False)
    except TritonkitError as err:
        report_error(err)
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        error = _usage_error(err)
        report_error(error)
        sys.exit(error.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)

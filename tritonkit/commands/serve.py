"""`tritonkit serve`, `status`, `stop`, `runtime` and `generate` (click only; the work is in the library)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tritonkit.errors import Interrupted


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.option("--repository", "-r", type=click.Path(file_okay=False, path_type=Path), default="model_repository",
              show_default=True, help="Model repository written by `tritonkit build`.")
@click.option("--runtime", default="auto", show_default=True,
              help="auto (docker where an engine answers, else local), local, docker, or another runtime of "
                   "tritonkit.runtime.base.RUNTIMES.")
@click.option("--name", default="tritonkit", show_default=True, help="Server name, for status/stop and several servers on one host.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the ports are bound to.")
@click.option("--http-port", default=8000, show_default=True, help="Triton's HTTP/REST port (health, /generate_stream).")
@click.option("--grpc-port", default=8001, show_default=True, help="Triton's gRPC port (streaming inference).")
@click.option("--metrics-port", default=8002, show_default=True, help="Prometheus metrics port (Triton's and vLLM's).")
@click.option("--detach", "-d", is_flag=True, help="Return once ready and leave the server running.")
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, help="Seconds to wait for the models to load.")
@click.option("--image", default=None, help="Docker image [default: tritonkit's pinned NGC vLLM image, see `tritonkit image`].")
@click.option("--gpus", default="all", show_default=True, help="Docker --gpus value.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="Ray: model replicas (each a vLLM engine).")
@click.option("--autoscale", default=None, metavar="MIN:MAX", help="Ray: autoscale replicas within this range.")
@click.option("--address", default=None,
              help="Ray: deploy onto this running cluster (dashboard URL, http://HEAD:8265) instead of a local head.")
@click.option("--stream-batching-ms", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Ray: pass streamed tokens between Ray's actors in batches every N ms (Ray's own default: 50; "
                   "0: each token as it comes, so TTFT and ITL compare with Triton's and vLLM's).")
def serve(repository, runtime, name, host, http_port, grpc_port, metrics_port, detach, timeout_s, image, gpus,
          replicas, autoscale, address, stream_batching_ms):
    """Start Triton on a model repository and wait until every model is ready."""
    from rich.console import Console

    from tritonkit import serving
    from tritonkit.runtime.base import RuntimeOptions
    from tritonkit.runtime.spec import ServerSpec

    spec = ServerSpec(repository=repository.resolve(), name=name, host=host, http_port=http_port,
                      grpc_port=grpc_port, metrics_port=metrics_port)
    console = Console(stderr=True)
    server = None
    try:
        with console.status("starting Triton") as status:
            def progress(phase: str, elapsed: float) -> None:
                status.update(f"{phase} ({elapsed:.0f} s)")

            options = RuntimeOptions(detach=detach, image=image, gpus=gpus, replicas=replicas,
                                     autoscale=_autoscale(autoscale), address=address,
                                     stream_batching_ms=stream_batching_ms, say=_say)
            server, record = serving.start(spec, runtime, timeout_s, options, on_progress=progress)
        click.echo(f"ready in {record.ready_s:.1f} s ({record.runtime} runtime): models {', '.join(record.models)}")
        if record.api == "openai":
            click.echo(f"  openai  http://{record.http_url}/v1  (generate/perf: --protocol openai)")
        else:
            click.echo(f"  grpc    {record.grpc_url}\n  http    http://{record.http_url}")
        if not record.address:  # a cluster's metrics are where the cluster exports them
            click.echo(f"  metrics http://{host}:{metrics_port}/metrics")
        if record.runtime == "ray":
            from tritonkit.runtime.ray import config_path

            click.echo(f"  serve config {config_path(name)}")
        if record.log_path:
            click.echo(f"  log     {record.log_path}")
        if detach:
            click.echo(f"running in the background; stop it with `tritonkit stop --name {name}`")
            return
        click.echo("serving in the foreground; Ctrl-C stops the server", err=True)
        serving.follow(server, record, lambda text: click.echo(text, err=True))
    except KeyboardInterrupt:
        if server is not None:  # a start that was interrupted cleaned up after itself
            _say("stopping the server...")
            server.stop()
            from tritonkit.runtime import state

            state.remove(name)
        raise Interrupted("interrupted: the server was stopped", "run `tritonkit serve` again to restart it")


def _autoscale(text: str | None) -> tuple[int, int] | None:
    from tritonkit.runtime.ray_config import parse_autoscale

    return parse_autoscale(text)


def _ready(record) -> tuple[bool, str]:
    """Triton: every model's own ready endpoint (an engine restarting unloads its model), with the
    repository index's reason for one that is down; an OpenAI server: its model list."""
    from tritonkit.runtime.health import http_status, model_states

    if record.api == "openai":
        return http_status(f"http://{record.http_url}/v1/models") == 200, ""
    down = [m for m in record.models if http_status(f"http://{record.http_url}/v2/models/{m}/ready") != 200]
    if not down:
        return True, ""
    states = model_states(record.http_url)
    return False, "; ".join(f"{m}: {states.get(m, 'not in the repository index')}" for m in down)


@click.command()
@click.option("--name", default=None, help="Only this server.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name, as_json):
    """Show the servers tritonkit started, and whether they answer."""
    import json

    from tritonkit import serving
    from tritonkit.runtime import state

    records = [state.find(name)] if name else state.all_records()
    rows = []
    for r in records:
        alive = serving.record_alive(r)
        ready, why = _ready(r) if alive else (False, "")
        rows.append({"name": r.name, "runtime": r.runtime, "api": r.api, "alive": alive, "ready": ready, "why": why,
                     "pid": r.pid,
                     "grpc": r.grpc_url, "http": r.http_url, "models": r.models, "repository": r.repository,
                     "uptime_s": round(time.time() - r.started_at, 1), "log": r.log_path})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no tritonkit server is running")
        return
    for row in rows:
        health = "ready" if row["ready"] else (f"alive, not ready ({row['why'] or 'starting'})" if row["alive"]
                                               else "dead (stale record)")
        click.echo(f"{row['name']}: {health}, {row['runtime']} runtime, grpc {row['grpc']}, http {row['http']}, "
                   f"models {', '.join(row['models'])}, up {row['uptime_s']:.0f} s")


@click.command()
@click.option("--name", default=None, help="The server to stop [default: the only one running].")
@click.option("--all", "stop_all", is_flag=True, help="Stop every server tritonkit started.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing what is left.")
def stop(name, stop_all, timeout_s):
    """Stop a server and every process it started."""
    from tritonkit import serving
    from tritonkit.runtime import state

    if not name and not state.all_records():
        click.echo("no tritonkit server is running; nothing to stop")  # the goal is reached: not an error
        return
    records = state.all_records() if stop_all else [state.find(name)]
    for record in records:
        serving.stop(record, timeout_s)
        click.echo(f"stopped {record.name}")


@click.command()
@click.option("--install", "do_install", is_flag=True, help="Download and install the local Triton runtime now.")
@click.option("--remove", "do_remove", is_flag=True, help="Remove the local Triton runtime.")
@click.option("--from-wheel", "from_wheel", type=click.Path(path_type=Path), default=None,
              help="Install from this nvidia-pytriton wheel (or a folder holding it and the stub's numpy "
                   "wheel) instead of downloading; implies --install. Env: TRITONKIT_PYTRITON_WHEEL.")
def runtime(do_install, do_remove, from_wheel):
    """Show (or install/remove) the local Triton runtime."""
    from tritonkit.runtime import install

    if do_remove:
        click.echo("removed" if install.remove_triton() else "nothing to remove")
        return
    if from_wheel is not None and install.find_triton() is not None:
        _say("the local Triton runtime is already installed; --from-wheel not used "
             "(`tritonkit runtime --remove` first to reinstall)")
    if from_wheel is not None:
        install.local_wheel(from_wheel)  # a bad path is an error even when already installed
    found = install.ensure_triton(_say, wheel=from_wheel) if (do_install or from_wheel) else install.find_triton()
    if found is None:
        click.echo(f"local Triton runtime: not installed (it will be installed in {install.runtime_root()} "
                   "on the first `tritonkit serve`, or now with `tritonkit runtime --install`)")
        return
    info = found.info
    click.echo(f"local Triton runtime: Triton {info['triton_version']} from {info['wheel']}"
               + (f" ({info['from']})" if info.get("from") else ""))
    click.echo(f"  root          {found.root}\n  server        {found.server_bin}\n"
               f"  python stub   Python {info['python']} (stub numpy: {info['stub_numpy']})\n"
               f"  engine python {sys.executable}")


COMMANDS = [serve, status, stop, runtime]

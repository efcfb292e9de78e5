"""Start, watch and stop Triton servers on a model repository, with either runtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import state
from tritonkit.runtime.local import LocalServer, group_alive, log_tail, stop_group
from tritonkit.runtime.spec import ServerSpec

RUNTIMES = ("auto", "docker", "local")


def models_in(repository: Path) -> list[str]:
    if not repository.is_dir():
        raise UsageError(f"model repository {repository} does not exist", "run `tritonkit build` first, or pass --repository")
    models = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise UsageError(f"{repository} holds no model (no <name>/config.pbtxt)", "run `tritonkit build` into it first")
    return models


def runtime_env(built: list[dict]) -> dict[str, str]:
    """Environment the engines need, as `tritonkit build` recorded it (e.g. the CPU KV-cache size)."""
    env: dict[str, str] = {}
    for build in built:
        env.update({k: str(v) for k, v in build.get("runtime_env", {}).items()})
    return env


def builds(repository: Path, models: list[str]) -> list[dict]:
    """The build.json records of the models that `tritonkit build` wrote (a hand-written model has none)."""
    from tritonkit.repository import load_build

    return [load_build(repository, m) for m in models if (repository / m / "build.json").is_file()]


def choose_runtime(requested: str) -> str:
    if requested not in RUNTIMES:
        raise UsageError(f"unknown runtime {requested!r}", f"use one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        return requested
    from tritonkit.runtime.docker import docker_available

    return "docker" if docker_available() else "local"


def make_server(spec: ServerSpec, runtime: str, say: Callable[[str], None], image: str | None = None,
                gpus: str = "all", build: dict | None = None):
    if runtime == "docker":
        from tritonkit.runtime.docker import DockerServer

        return DockerServer(spec, image, gpus=gpus, build=build)
    return LocalServer(spec, say=say)


def start(spec: ServerSpec, runtime: str, timeout_s: float, say: Callable[[str], None] = lambda m: None,
          on_progress: Callable[[str, float], None] | None = None, detach: bool = False,
          image: str | None = None, gpus: str = "all"):
    """Start a server, wait until every model is ready, record it; return (server, record)."""
    previous = state.load(spec.name)
    if previous is not None and record_alive(previous):
        raise UsageError(f"a server named {spec.name!r} is already running",
                         "stop it with `tritonkit stop`, or give this one another --name")
    models = models_in(spec.repository)
    built = builds(spec.repository, models)
    spec.env = {**runtime_env(built), **spec.env}
    runtime = choose_runtime(runtime)
    server = make_server(spec, runtime, say, image, gpus, build=built[0] if len(built) == 1 else None)
    started = time.time()
    if runtime == "docker":
        server.start(detach=detach)
    else:
        server.start()
    ready_s = server.wait_ready(models, timeout_s, on_progress)
    record = state.ServerRecord(
        name=spec.name, runtime=runtime, repository=str(spec.repository), models=models, host=spec.host,
        http_port=spec.http_port, grpc_port=spec.grpc_port, metrics_port=spec.metrics_port,
        pid=getattr(server, "pid", None), container=getattr(server, "name", None) if runtime == "docker" else None,
        log_path=str(getattr(server, "log_path", "")) or None, started_at=started, ready_s=ready_s,
    )
    state.save(record)
    return server, record


def follow(server, record: state.ServerRecord, emit: Callable[[str], None], poll_s: float = 0.3) -> None:
    """Foreground mode: print the server's log as it grows until the server exits."""
    path = Path(record.log_path) if record.log_path else None
    offset = path.stat().st_size if path and path.exists() else 0
    while server.is_alive():
        if path and path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
            if chunk:
                emit(chunk.decode("utf-8", "replace").rstrip("\n"))
        time.sleep(poll_s)
    state.remove(record.name)
    raise ServerError(f"the server exited; last log lines:\n{log_tail(path) if path else ''}",
                      "see the log above, then serve again")


def _docker_command(record: state.ServerRecord, *args: str, timeout: float = 30):
    from tritonkit.runtime.docker import run_docker

    return run_docker(["docker", *args, record.container], timeout=timeout)


def record_alive(record: state.ServerRecord) -> bool:
    if record.runtime == "local":
        return record.pid is not None and group_alive(record.pid)
    res = _docker_command(record, "inspect", "-f", "{{.State.Running}}")
    return res.returncode == 0 and res.stdout.strip() == "true"


def stop(record: state.ServerRecord, timeout_s: float = 30) -> None:
    """Stop a recorded server and everything it started; forget it."""
    if record.runtime == "local":
        if record.pid is not None:
            stop_group(record.pid, timeout_s)
    else:
        _docker_command(record, "stop", "-t", str(int(timeout_s)), timeout=timeout_s + 30)
        _docker_command(record, "rm", "-f")
    state.remove(record.name)

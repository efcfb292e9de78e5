"""Start, find and stop servers on a model repository, whichever runtime runs them.

Every runtime implements `runtime.base.Server`; this module is the one place that starts one
(cleaning up a failed start), records it, and turns a record back into a handle.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tritonkit import buildrecord
from tritonkit.buildrecord import BuildRecord
from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import state
from tritonkit.runtime.base import RUNTIMES, Progress, RuntimeOptions, Server, server_class
from tritonkit.runtime.spec import ServerSpec


def runtimes() -> tuple[str, ...]:
    return ("auto", *RUNTIMES)


def models_in(repository: Path) -> list[str]:
    if not repository.is_dir():
        raise UsageError(f"model repository {repository} does not exist", "run `tritonkit build` first, or pass --repository")
    models = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
    if not models:
        raise UsageError(f"{repository} holds no model (no <name>/config.pbtxt)", "run `tritonkit build` into it first")
    return models


def runtime_env(built: list[BuildRecord]) -> dict[str, str]:
    """Environment the engines need, as `tritonkit build` recorded it (e.g. the CPU KV-cache size)."""
    env: dict[str, str] = {}
    for build in built:
        env.update({k: str(v) for k, v in build.runtime_env.items()})
    return env


def choose_runtime(requested: str, builds: list[BuildRecord] = ()) -> str:
    """auto: the container runtime where an engine answers and the builds' image (the CPU image
    for cpu-profile builds, else NGC's) is on the machine; else local."""
    if requested != "auto":
        server_class(requested)  # an unknown name is a UsageError here
        return requested
    from tritonkit.runtime.docker import docker_available

    return "docker" if docker_available(builds) else "local"


def make_server(spec: ServerSpec, runtime: str, options: RuntimeOptions | None = None) -> Server:
    """A not-yet-started server for spec.repository, with its builds and their environment."""
    models = models_in(spec.repository)
    built = buildrecord.load_all(spec.repository, models)
    spec.env = {**runtime_env(built), **spec.env}
    return server_class(choose_runtime(runtime, built))(spec, built, options or RuntimeOptions())


def start(spec: ServerSpec, runtime: str, timeout_s: float, options: RuntimeOptions | None = None,
          on_progress: Progress | None = None) -> tuple[Server, state.ServerRecord]:
    """Start a server, wait until every model is ready, record it; return (server, record).
    A start that fails or is interrupted leaves nothing running and no record. Only one start of a
    given name runs at a time (state.start_lock)."""
    with state.start_lock(spec.name):
        return _start(spec, runtime, timeout_s, options, on_progress)


def _start(spec: ServerSpec, runtime: str, timeout_s: float, options: RuntimeOptions | None,
           on_progress: Progress | None) -> tuple[Server, state.ServerRecord]:
    previous = state.load(spec.name)
    if previous is not None and record_alive(previous):
        raise UsageError(f"a server named {spec.name!r} is already running",
                         "stop it with `tritonkit stop`, or give this one another --name")
    server = make_server(spec, runtime, options)
    models = models_in(spec.repository)
    started = time.time()
    try:
        server.start()
        ready_s = server.wait_ready(models, timeout_s, on_progress)
    except BaseException:
        with contextlib.suppress(Exception):  # the start's own error is the one to report
            server.stop()
        raise
    record = state.ServerRecord(
        name=spec.name, runtime=server.runtime, api=server.api, repository=str(spec.repository), models=models,
        host=spec.host, http_port=spec.http_port, grpc_port=spec.grpc_port, metrics_port=spec.metrics_port,
        log_path=server.log_path(), started_at=started, ready_s=ready_s, **server.handle(),
    )
    state.save(record)
    return server, record


def attach(record: state.ServerRecord) -> Server:
    return server_class(record.runtime).attach(record)


def follow(server: Server, record: state.ServerRecord, emit, poll_s: float = 0.3) -> None:
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
    tail = server.logs()
    server.stop()  # a container kept for its log, a Ray head: nothing outlives the server
    state.remove(record.name)
    raise ServerError(f"the server exited; last log lines:\n{tail}", "see the log above, then serve again")


def record_alive(record: state.ServerRecord) -> bool:
    return attach(record).is_alive()


def stop(record: state.ServerRecord, timeout_s: float = 30) -> None:
    """Stop a recorded server and everything it started; forget it."""
    attach(record).stop(timeout_s)
    state.remove(record.name)

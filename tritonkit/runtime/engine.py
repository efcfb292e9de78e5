"""Which container engine answers here (Docker or podman), and the flags that engine accepts.

Every call to a container client goes through one `Runner` (default: `run_engine`), which tests
replace. `detect` looks once per process: $TRITONKIT_CONTAINER_ENGINE (docker or podman) picks
the client; else a Docker CLI whose engine answers, else podman. A Docker CLI may talk to a
podman service (DOCKER_HOST): the flags are those of the engine behind it, not of the client.

Why the flags differ: Docker's daemon runs as root with every capability, so NGC's recommended
`--ulimit memlock=-1` works. Podman sets the container's limits from the caller's side, which
cannot raise a hard limit without CAP_SYS_RESOURCE; there tritonkit passes no --ulimit (an
explicit one replaces all of podman's configured defaults) and says so. Podman ignores `--gpus`; it gives GPUs through CDI (`--device nvidia.com/gpu=...`),
which needs the NVIDIA CDI spec (`nvidia-ctk cdi generate`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tritonkit.errors import ServerError, UsageError

Runner = Callable[..., "subprocess.CompletedProcess[str] | subprocess.Popen"]

NO_ENGINE_HINT = ("install Docker and the NVIDIA Container Toolkit (or podman: "
                  "scripts/install_container_engine.sh), or use --runtime local")
ENGINE_ENV = "TRITONKIT_CONTAINER_ENGINE"
CDI_SPECS = (Path("/etc/cdi"), Path("/var/run/cdi"))

# NGC's recommended limits; memlock -1 is "unlimited".
DOCKER_ULIMITS = ("memlock=-1", "stack=67108864")
# podman's built-in defaults, restated because an explicit --ulimit replaces them.
PODMAN_DEFAULT_ULIMITS = ("nofile=1048576:1048576", "nproc=4194304:4194304")


def run_engine(argv: list[str], *, stream: bool = False, timeout: float | None = None,
               env: dict[str, str] | None = None):
    """The one place that runs a container client.

    stream=True starts it with the terminal's stdout/stderr and returns the Popen;
    otherwise waits and returns a CompletedProcess with text stdout/stderr.
    """
    try:
        if stream:
            return subprocess.Popen(argv, env=env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise ServerError(f"the {argv[0]} client is not installed (no `{argv[0]}` on PATH)", NO_ENGINE_HINT) from None


@dataclass(frozen=True)
class Engine:
    """A container engine that answered: the client tritonkit runs, and who applies the flags."""

    client: str  # the command run: "docker" or "podman"
    kind: str  # the engine behind it: "docker" or "podman"
    version: str = ""
    ulimits: tuple[str, ...] = DOCKER_ULIMITS
    cdi_gpus: bool = False  # podman: an NVIDIA CDI spec is installed
    healthchecks: bool = True  # podman runs an image's HEALTHCHECK through systemd timers only
    notes: tuple[str, ...] = field(default=())  # what was left out, and why

    def describe(self) -> str:
        via = f" through the {self.client} client" if self.client != self.kind else ""
        return f"{self.kind} {self.version}{via}".strip()


DOCKER = Engine(client="docker", kind="docker")


def has_cap_sys_resource() -> bool:
    """True when this process may raise hard limits (CAP_SYS_RESOURCE, bit 24 of CapEff)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 24 & 1)
    except (OSError, ValueError):
        pass
    return False


def podman_ulimits(may_raise: bool | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(--ulimit values, notes) for podman.

    An explicit --ulimit replaces all of podman's default_ulimits, and the container's limits are
    set from the caller's side: without CAP_SYS_RESOURCE no hard limit can be raised (measured:
    memlock=-1, nofile above the configured default, even nproc below the caller's own hard limit
    fail). So: with the capability, NGC's limits plus podman's own nofile/nproc defaults; without
    it, no --ulimit at all (podman's configured defaults apply), said.
    """
    if may_raise is None:
        may_raise = has_cap_sys_resource()
    if may_raise:
        return DOCKER_ULIMITS + PODMAN_DEFAULT_ULIMITS, ()
    return (), ("limits: podman's defaults (containers.conf default_ulimits), not NGC's memlock=-1 and "
                "stack=67108864: without CAP_SYS_RESOURCE podman cannot raise a hard limit",)


def _is_podman_shim(path: str | None) -> bool:
    """podman-docker's `docker` is a small script that runs podman."""
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"podman" in head


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ask(runner: Runner, argv: list[str], timeout_s: float) -> tuple[str | None, str | None]:
    """(stdout, None) when the command succeeds, else (None, why)."""
    try:
        res = runner(argv, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(argv[:2])}` did not answer within {timeout_s:.0f} s"
    except ServerError as err:
        return None, err.message
    if res.returncode != 0:
        return None, _last_line(res.stderr) or _last_line(res.stdout) or f"exit {res.returncode}"
    return res.stdout.strip(), None


def _podman_engine(client: str, version: str) -> Engine:
    ulimits, notes = podman_ulimits()
    cdi = any(spec.name.startswith("nvidia") for folder in CDI_SPECS if folder.is_dir() for spec in folder.iterdir())
    systemd = Path("/run/systemd/system").is_dir()
    return Engine(client=client, kind="podman", version=version, ulimits=ulimits, cdi_gpus=cdi, notes=notes,
                  healthchecks=systemd)


def probe(runner: Runner = run_engine, timeout_s: float = 10.0) -> tuple[Engine | None, str | None]:
    """(engine, None) for the first engine that answers, else (None, what went wrong)."""
    wanted = os.environ.get(ENGINE_ENV, "").strip().lower()
    if wanted and wanted not in ("docker", "podman"):
        raise UsageError(f"{ENGINE_ENV}={wanted!r} is not an engine tritonkit knows", "use docker or podman")
    problems = []
    docker_path = shutil.which("docker")
    if wanted in ("", "docker") and docker_path and not (wanted == "" and _is_podman_shim(docker_path)):
        out, why = _ask(runner, ["docker", "version", "--format",
                                 "{{.Server.Version}}|{{range .Server.Components}}{{.Name}},{{end}}"], timeout_s)
        if out is not None:
            version, _, components = out.partition("|")
            if "podman" in components.lower() or _is_podman_shim(docker_path):
                return _podman_engine("docker", version), None
            return Engine(client="docker", kind="docker", version=version), None
        problems.append(f"no Docker engine answers ({why})")
    elif wanted in ("", "docker") and not docker_path:
        problems.append("the docker client is not installed (no `docker` on PATH)")
    if wanted in ("", "podman") and shutil.which("podman"):
        out, why = _ask(runner, ["podman", "version", "--format", "{{.Client.Version}}"], timeout_s)
        if out is not None:
            return _podman_engine("podman", out), None
        problems.append(f"podman does not work ({why})")
    elif wanted == "podman":
        problems.append("podman is not installed (no `podman` on PATH)")
    return None, "; ".join(problems) or "no container engine is installed"


_detected: dict[tuple, Engine] = {}


def detect(runner: Runner = run_engine) -> Engine:
    """The engine to use (asked once per runner and environment); ServerError when none answers."""
    key = (runner, *(os.environ.get(k) for k in ("PATH", ENGINE_ENV, "DOCKER_HOST")))
    if key not in _detected:
        engine, problem = probe(runner)
        if engine is None:
            raise ServerError(f"no container engine is usable here: {problem}", NO_ENGINE_HINT)
        _detected[key] = engine
    return _detected[key]


def available(runner: Runner = run_engine) -> bool:
    try:
        return probe(runner, timeout_s=5.0)[0] is not None
    except UsageError:
        return False


def gpu_args(engine: Engine, gpus: str) -> tuple[list[str], str | None]:
    """(flags, note) giving the container `gpus` ('all', '0,1', or 'none') on this engine."""
    gpus = str(gpus).strip()
    if gpus == "none":
        return [], None
    if gpus != "all" and not re.fullmatch(r"\d+(,\d+)*", gpus):
        raise UsageError(f"--gpus {gpus!r} is not understood", "use 'all', 'none' or device indices such as 0 or 0,1")
    if engine.kind == "docker":
        # Docker parses --gpus as CSV, so a device list needs the inner quotes.
        return ["--gpus", "all" if gpus == "all" else f'"device={gpus}"'], None
    if not engine.cdi_gpus:
        return [], ("no GPUs: podman gives GPUs through CDI and no NVIDIA CDI spec is installed "
                    "(`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`)")
    devices = ["all"] if gpus == "all" else gpus.split(",")
    return [x for d in devices for x in ("--device", f"nvidia.com/gpu={d}")], None


def run_flags(engine: Engine, gpus: str) -> tuple[list[str], list[str]]:
    """(flags, notes): --init, GPUs and limits as this engine accepts them."""
    flags = ["--init"]  # a PID 1 that forwards SIGTERM: without it, stop waits then kills
    gpu_flags, gpu_note = gpu_args(engine, gpus)
    flags += gpu_flags
    for value in engine.ulimits:
        flags += ["--ulimit", value]
    notes = list(engine.notes) + ([gpu_note] if gpu_note else [])
    if not engine.healthchecks:  # else podman logs errors on every start
        flags.append("--no-healthcheck")
        notes.append("no HEALTHCHECK: podman runs it through systemd, which is not running here")
    return flags, notes

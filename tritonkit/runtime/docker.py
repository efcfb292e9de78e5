"""The docker runtime: Triton with the vLLM backend in NVIDIA's NGC container.

What tritonkit hands to Docker is built by pure functions (`build_image_args`, `run_args`), so
the exact argument lists can be checked without an engine. Every call to the `docker` client
goes through one `runner` (default: `run_docker`), which tests replace.

Paths: model.json holds absolute paths, so the container sees the repository, every absolute
model/adapter path it references and the Hugging Face cache at the *same* absolute paths as the
host. The container runs as the calling user, so what it writes to the cache stays theirs.
Secrets (HF_TOKEN and secret-looking keys of spec.env) are passed by name only: their values go
to the docker client through its environment and never appear in an argument, a file or a layer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import health
from tritonkit.runtime.base import Progress, RuntimeOptions, Server
from tritonkit.runtime.spec import ServerSpec

# The one pin of the NGC release (the Dockerfile's ARG default must match; a test checks it).
NGC_RELEASE = "25.12"
BASE_IMAGE = f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-vllm-python-py3"
DEFAULT_IMAGE = f"tritonkit-vllm:{NGC_RELEASE}"

SHM_SIZE = "4g"  # a limit, not a reservation: the Python backend and NCCL use /dev/shm
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PATH_KEYS = ("model", "tokenizer")  # model.json values that may name a local path
PASSTHROUGH = ("HF_TOKEN",)  # forwarded by name when set in the caller's environment
NO_ENGINE_HINT = "install Docker and the NVIDIA Container Toolkit, or use --runtime local"

Runner = Callable[..., "subprocess.CompletedProcess[str] | subprocess.Popen"]


def base_image() -> str:
    return os.environ.get("TRITONKIT_BASE_IMAGE") or BASE_IMAGE


def default_image() -> str:
    return os.environ.get("TRITONKIT_IMAGE") or DEFAULT_IMAGE


def dockerfiles_dir() -> Path:
    """The build context holding the Dockerfile: $TRITONKIT_DOCKERFILES, else the one tritonkit ships."""
    from tritonkit.paths import shipped

    folder = Path(os.environ.get("TRITONKIT_DOCKERFILES") or shipped("dockerfiles"))
    if not (folder / "Dockerfile").is_file():
        raise UsageError(f"no Dockerfile in {folder}", "set TRITONKIT_DOCKERFILES to a folder holding one, or unset it")
    return folder


def run_docker(argv: list[str], *, stream: bool = False, timeout: float | None = None,
               env: dict[str, str] | None = None):
    """The one place that runs the docker client.

    stream=True starts it with the terminal's stdout/stderr and returns the Popen;
    otherwise waits and returns a CompletedProcess with text stdout/stderr.
    """
    try:
        if stream:
            return subprocess.Popen(argv, env=env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise ServerError("the docker client is not installed (no `docker` on PATH)", NO_ENGINE_HINT) from None


# -- engine ---------------------------------------------------------------------------------

def docker_available(runner: Runner = run_docker, timeout_s: float = 5.0) -> bool:
    """True when a docker client is on PATH and its engine answers `docker info`."""
    return _engine_problem(runner, timeout_s) is None


def _engine_problem(runner: Runner, timeout_s: float) -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed (no `docker` on PATH)"
    try:
        res = runner(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"the Docker engine did not answer `docker info` within {timeout_s:.0f} s"
    if res.returncode != 0:
        detail = _last_line(res.stderr) or _last_line(res.stdout)
        return "no Docker engine answers" + (f" ({detail})" if detail else "")
    return None


def require_docker(runner: Runner = run_docker) -> None:
    problem = _engine_problem(runner, 5.0)
    if problem:
        raise ServerError(f"Docker is not usable here: {problem}", NO_ENGINE_HINT)


# -- image ----------------------------------------------------------------------------------

def build_image_args(context_dir: Path, tag: str, base_image: str, repository: Path | None = None) -> list[str]:
    """`docker build` for dockerfiles/Dockerfile: mount mode, or the repository baked in at its path."""
    context_dir = Path(context_dir)
    argv = ["docker", "build", "-f", str(context_dir / "Dockerfile"), "-t", tag,
            "--build-arg", f"BASE_IMAGE={base_image}", "--label", "tritonkit=1"]
    if repository is None:
        argv += ["--target", "runtime"]
    else:
        repository = Path(repository).absolute()
        if not any(repository.glob("*/config.pbtxt")):
            raise UsageError(f"{repository} is not a model repository (no <model>/config.pbtxt)",
                             "pass the folder that `tritonkit build` wrote")
        argv += ["--target", "baked", "--build-context", f"repository={repository}",
                 "--build-arg", f"REPOSITORY={repository}", "--label", f"tritonkit.repository={repository}"]
    return argv + [str(context_dir)]


def build_image(argv: list[str], runner: Runner = run_docker) -> None:
    require_docker(runner)
    code = runner(argv, stream=True).wait()
    if code != 0:
        raise ServerError(f"docker build failed (exit {code})", "see the build output above")


# -- run ------------------------------------------------------------------------------------

def container_name(spec: ServerSpec) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", spec.name):
        raise UsageError(f"server name {spec.name!r} is not usable as a container name",
                         "use letters, digits, '.', '_' and '-'")
    return f"tritonkit-{spec.name}"


def hf_cache_dir() -> Path:
    return Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser().absolute()


def referenced_paths(repository: Path) -> list[Path]:
    """Absolute local paths named by the repository's model.json / multi_lora.json files."""
    found: list[Path] = []
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        version = model_dir / "1"
        values: list = []
        if (version / "model.json").is_file():
            engine = _read_json(version / "model.json")
            values += [engine.get(key) for key in PATH_KEYS]
        if (version / "multi_lora.json").is_file():
            values += list(_read_json(version / "multi_lora.json").values())
        for value in values:
            if isinstance(value, str) and os.path.isabs(value):
                path = Path(value)
                if not path.exists():
                    raise UsageError(f"{model_dir.name} refers to {path}, which does not exist on this machine",
                                     "fix the path, or rebuild the repository")
                found.append(path)
    return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}", "rebuild the repository with `tritonkit build`") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object", "rebuild the repository with `tritonkit build`")
    return data


def _is_secret(key: str) -> bool:
    return bool(re.search(r"TOKEN|SECRET|PASSWORD|PASSWD|_KEY$", key.upper()))


def _bind(path: Path, read_only: bool) -> list[str]:
    # --mount fails on a missing source (-v would create it, owned by root); same path inside.
    fields = ["type=bind", f"source={path}", f"target={path}"] + (["readonly"] if read_only else [])
    return ["--mount", ",".join(_csv_field(f) for f in fields)]


def _csv_field(field: str) -> str:
    """Docker reads --mount as one CSV record: quote a field that holds a comma or a quote."""
    if "," in field or '"' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def _gpus_arg(gpus: str) -> str:
    gpus = str(gpus).strip()
    if gpus == "all":
        return "all"
    if re.fullmatch(r"\d+(,\d+)*", gpus):
        # Docker parses --gpus as CSV, so a device list needs the inner quotes.
        return f'"device={gpus}"'
    raise UsageError(f"--gpus {gpus!r} is not understood", "use 'all' or device indices such as 0 or 0,1")


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def tritonserver_command(spec: ServerSpec, repository: Path) -> list[str]:
    cmd = ["tritonserver", f"--model-repository={repository}",
           f"--exit-timeout-secs={spec.exit_timeout_s}",
           f"--backend-config=python,shm-region-prefix-name={spec.shm_prefix}",
           "--metrics-config=histogram_latencies=true"]
    if spec.log_verbose:
        cmd.append(f"--log-verbose={spec.log_verbose}")
    return cmd


def run_args(spec: ServerSpec, image: str, model_name: str | None = None, gpus: str = "all",
             detach: bool = False) -> list[str]:
    """The exact `docker run` argument list for serving spec.repository.

    `model_name` (the build's, for a repository of one tritonkit build) only adds a label.
    Detached containers are kept after they exit (no --rm) so a crash's log stays readable;
    `DockerServer.stop` removes them.
    """
    repository = Path(spec.repository).absolute()
    if not repository.is_dir():
        raise UsageError(f"model repository {repository} does not exist", "run `tritonkit build` first")
    name = container_name(spec)
    hf_home = hf_cache_dir()
    host = f"[{spec.host}]" if ":" in spec.host else spec.host

    argv = ["docker", "run", "-d" if detach else "--rm", "--name", name, "--init",
            "--gpus", _gpus_arg(gpus), "--shm-size", SHM_SIZE,
            "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
            "--user", f"{os.getuid()}:{os.getgid()}"]
    for what, port in spec.ports.items():
        argv += ["-p", f"{host}:{port}:{CONTAINER_PORTS[what]}"]

    argv += _bind(hf_home, read_only=False)
    argv += _bind(repository, read_only=True)
    mounted = [hf_home, repository]
    for path in referenced_paths(repository):
        if not _inside(path, mounted):
            argv += _bind(path, read_only=True)
            mounted.append(path)

    argv += ["-e", f"HF_HOME={hf_home}"]
    argv += [x for key in PASSTHROUGH if key not in spec.env for x in ("-e", key)]
    for key, value in spec.env.items():
        argv += ["-e", key if _is_secret(key) else f"{key}={value}"]

    labels = {"tritonkit.server": spec.name, "tritonkit.repository": str(repository),
              "tritonkit.http_port": str(spec.http_port)}
    if model_name:
        labels["tritonkit.model"] = model_name
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]

    return argv + [image] + tritonserver_command(spec, repository)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class DockerServer(Server):
    """One Triton server in a container: start, wait_ready, logs, stop."""

    runtime = "docker"

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None,
                 runner: Runner = run_docker):
        super().__init__(spec, list(builds), options or RuntimeOptions())
        self.image = self.options.image or default_image()
        self.gpus = self.options.gpus
        self.runner = runner
        self.name = container_name(spec)
        self.process: subprocess.Popen | None = None  # the attached `docker run` in the foreground

    @classmethod
    def attach(cls, record) -> "DockerServer":
        spec = ServerSpec(repository=Path(record.repository), name=record.name, host=record.host,
                          http_port=record.http_port, grpc_port=record.grpc_port, metrics_port=record.metrics_port)
        server = cls(spec)
        server.name = record.container or server.name
        return server

    def handle(self) -> dict:
        return {"container": self.name}

    def _docker(self, *args: str, timeout: float = 30):
        return self.runner(["docker", *args], timeout=timeout)

    def _state(self) -> str | None:
        """'true' / 'false' for an existing container (running or not), None when there is none."""
        res = self._docker("inspect", "-f", "{{.State.Running}}", self.name)
        return res.stdout.strip() if res.returncode == 0 else None

    def start(self) -> None:
        detach = self.options.detach
        require_docker(self.runner)
        model_name = self.builds[0].model_name if len(self.builds) == 1 else None
        argv = run_args(self.spec, self.image, model_name, self.gpus, detach)
        if self._docker("image", "inspect", self.image).returncode != 0:
            raise ServerError(f"the image {self.image} is not on this machine",
                              "build it with `tritonkit image` (or `docker pull` it)")
        state = self._state()
        if state == "true":
            raise UsageError(f"a server named {self.spec.name} is already running (container {self.name})",
                             "stop it with `tritonkit stop`, or pick another --name")
        if state is not None:  # a stopped leftover of an earlier detached run
            self._docker("rm", "-f", self.name)
        hf_cache_dir().mkdir(parents=True, exist_ok=True)  # else the mount fails
        env = {**os.environ, **{k: v for k, v in self.spec.env.items() if _is_secret(k)}}
        if not detach:
            self.process = self.runner(argv, stream=True, env=env)
            return
        res = self.runner(argv, timeout=300, env=env)
        if res.returncode != 0:
            self._docker("rm", "-f", self.name)
            detail = _last_line(res.stderr)
            hint = ("install the NVIDIA Container Toolkit so Docker can give containers GPUs, or use --runtime local"
                    if "gpu" in detail.lower() else "see the message above")
            raise ServerError(f"docker run failed: {detail or f'exit {res.returncode}'}", hint)

    def is_alive(self) -> bool:
        if self.process is not None:  # attached: the client lives as long as the container
            return self.process.poll() is None
        return self._state() == "true"

    def logs(self, lines: int | None = 30) -> str:
        args = ["logs"] + (["--tail", str(lines)] if lines else []) + [self.name]
        res = self._docker(*args)
        if res.returncode != 0:
            return "(no log: the container is gone" + ("; its output is above)" if self.process else ")")
        return (res.stdout or "") + (res.stderr or "")

    def wait_ready(self, models: list[str], timeout_s: float, on_progress: Progress | None = None) -> float:
        return health.wait_ready(self.spec.http_url, models, timeout_s, self.is_alive,
                                 lambda: self.logs(30), on_progress)

    def wait(self) -> int:
        """Block until an attached server exits; its exit code."""
        return self.process.wait() if self.process is not None else 0

    def stop(self, timeout_s: float | None = None) -> None:
        grace = int(timeout_s) if timeout_s else self.spec.exit_timeout_s + 5
        self._docker("stop", "-t", str(grace), self.name, timeout=grace + 30)
        self._docker("rm", "-f", self.name)  # detached containers have no --rm; ignore "no such container"
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> "DockerServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

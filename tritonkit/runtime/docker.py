"""The docker runtime: Triton with the vLLM backend in a container, on Docker or podman.

What tritonkit hands to the engine is built by pure functions (`run_args`, and image.py's build
arguments), so the exact argument lists can be checked without an engine. Every call to the
client goes through one `runner` (default: `engine.run_engine`), which tests replace; which
engine answers and the flags it accepts are engine.py's.

Paths: model.json holds absolute paths, so the container sees the repository, every absolute
model/adapter path it references and the Hugging Face cache at the *same* absolute paths as the
host. The container runs as the calling user, so what it writes to the cache stays theirs.
Secrets (HF_TOKEN and secret-looking keys of spec.env) are passed by name only: their values go
to the client through its environment and never appear in an argument, a file or a layer.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tritonkit import buildrecord
from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import engine as engines
from tritonkit.runtime import health
from tritonkit.runtime.base import Progress, RuntimeOptions, Server
from tritonkit.runtime.engine import DOCKER, Engine, Runner, run_engine
from tritonkit.runtime.image import (  # noqa: F401  (re-exported: the image's names live in image.py)
    BASE_IMAGE, CPU_IMAGE, DEFAULT_IMAGE, DEVICE_LABEL, NGC_RELEASE, base_image, build_image_args, default_image,
    dockerfiles_dir, image_labels)
from tritonkit.runtime.local import relevant_log_lines, server_dir
from tritonkit.runtime.spec import ServerSpec

SHM_SIZE = "4g"  # a limit, not a reservation: the Python backend and NCCL use /dev/shm
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PATH_KEYS = ("model", "tokenizer")  # model.json values that may name a local path
PASSTHROUGH = ("HF_TOKEN",)  # forwarded by name when set in the caller's environment

run_docker = run_engine  # the default runner (older name)


def docker_available(builds=(), runner: Runner = run_engine) -> bool:
    """For `--runtime auto`: an engine answers and the image these builds would run is on the machine."""
    engine, _ = engines.probe(runner, timeout_s=5.0)
    if engine is None:
        return False
    return image_labels(runner, engine.client, image_for(list(builds), RuntimeOptions())) is not None


def require_docker(runner: Runner = run_engine) -> Engine:
    return engines.detect(runner)


def image_for(builds, options: RuntimeOptions) -> str:
    """--image, else $TRITONKIT_IMAGE, else the CPU image for builds of the cpu profile, else NGC's."""
    if options.image or os.environ.get("TRITONKIT_IMAGE"):
        return options.image or default_image()
    if builds and all(b.gpu.profile == "cpu" for b in builds):
        return CPU_IMAGE
    return DEFAULT_IMAGE


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
        values: list = []
        if (model_dir / "1" / buildrecord.ENGINE_FILE).is_file():
            engine = buildrecord.engine_args(model_dir)
            values += [engine.get(key) for key in PATH_KEYS]
        values += list(buildrecord.multi_lora(model_dir).values())
        for value in values:
            if isinstance(value, str) and os.path.isabs(value):
                path = Path(value)
                if not path.exists():
                    raise UsageError(f"{model_dir.name} refers to {path}, which does not exist on this machine",
                                     "fix the path, or rebuild the repository")
                found.append(path)
    return found


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
             detach: bool = False, engine: Engine = DOCKER) -> list[str]:
    """The exact `run` argument list for serving spec.repository on `engine`.

    `model_name` (the build's, for a repository of one tritonkit build) only adds a label.
    Containers are kept after they exit (no --rm) so a crash's log stays readable;
    `DockerServer.stop` removes them.
    """
    repository = Path(spec.repository).absolute()
    if not repository.is_dir():
        raise UsageError(f"model repository {repository} does not exist", "run `tritonkit build` first")
    name = container_name(spec)
    hf_home = hf_cache_dir()
    host = f"[{spec.host}]" if ":" in spec.host else spec.host

    flags, _ = engines.run_flags(engine, gpus)
    argv = [engine.client, "run"] + (["-d"] if detach else []) + ["--name", name, *flags,
                                                                 "--shm-size", SHM_SIZE,
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


def with_continuations(picked: str, log: list[str]) -> str:
    """Each picked root-cause line with the indented line after it in the log: multi-line errors
    (pydantic's "1 validation error for ModelConfig" / "  Value error, <the cause>") keep their cause."""
    out = []
    for line in picked.splitlines():
        out.append(line)
        at = next((i for i, full in enumerate(log) if line and line in full), None)
        following = log[at + 1] if at is not None and at + 1 < len(log) else ""
        if following[:1] in (" ", "\t") and following.strip() and not following.strip().startswith("File "):
            out.append(following.strip())
    return "\n".join(out)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


class DockerServer(Server):
    """One Triton server in a container: start, wait_ready, logs, stop."""

    runtime = "docker"

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None,
                 runner: Runner = run_engine):
        super().__init__(spec, list(builds), options or RuntimeOptions())
        self.image = image_for(self.builds, self.options)
        self.gpus = self.options.gpus
        self.runner = runner
        self.name = container_name(spec)
        self.process: subprocess.Popen | None = None  # the attached client in the foreground
        self.log_file = server_dir(spec.name) / "container.log"  # the container's log, kept for its root cause

    @classmethod
    def attach(cls, record) -> "DockerServer":
        spec = ServerSpec.from_record(record)
        server = cls(spec)
        server.name = record.container or server.name
        return server

    @property
    def engine(self) -> Engine:
        return engines.detect(self.runner)

    def handle(self) -> dict:
        return {"container": self.name}

    def _docker(self, *args: str, timeout: float = 60):
        return self.runner([self.engine.client, *args], timeout=timeout)

    def _state(self) -> str | None:
        """'true' / 'false' for an existing container (running or not), None when there is none."""
        res = self._docker("inspect", "-f", "{{.State.Running}}", self.name)
        return res.stdout.strip() if res.returncode == 0 else None

    def start(self) -> None:
        detach = self.options.detach
        engine = self.engine
        labels = image_labels(self.runner, engine.client, self.image)
        if labels is None:
            raise ServerError(f"the image {self.image} is not on this machine",
                              "build it with `tritonkit image`" + (" --cpu" if self.image == CPU_IMAGE else "")
                              + f" (or `{engine.client} pull` it)")
        gpus = "none" if labels.get(DEVICE_LABEL) == "cpu" else self.gpus
        model_name = self.builds[0].model_name if len(self.builds) == 1 else None
        argv = run_args(self.spec, self.image, model_name, gpus, detach, engine)
        flags, notes = engines.run_flags(engine, gpus)
        if gpus == "none" and self.gpus != "none":
            notes.append(f"no GPUs: {self.image} is the CPU image")
        self.options.say(f"container engine: {engine.describe()}; image {self.image}; "
                         f"flags: {' '.join(flags)}" + "".join(f"\n  {note}" for note in notes))
        state = self._state()
        if state == "true":
            raise UsageError(f"a server named {self.spec.name} is already running (container {self.name})",
                             "stop it with `tritonkit stop`, or pick another --name")
        if state is not None:  # a stopped leftover of an earlier run
            self._docker("rm", "-f", self.name)
        hf_cache_dir().mkdir(parents=True, exist_ok=True)  # else the mount fails
        env = {**os.environ, **{k: v for k, v in self.spec.env.items() if _is_secret(k)}}
        if not detach:
            self.process = self.runner(argv, stream=True, env=env)
            return
        try:
            res = self.runner(argv, timeout=300, env=env)
        except subprocess.TimeoutExpired:
            raise ServerError(f"`{engine.client} run` did not return within 300 s", "check the engine") from None
        if res.returncode != 0:
            detail = _last_line(res.stderr)
            hint = ("install the NVIDIA Container Toolkit so Docker can give containers GPUs, or use --runtime local"
                    if "gpu" in detail.lower() else "see the message above")
            raise ServerError(f"{engine.client} run failed: {detail or f'exit {res.returncode}'}", hint)

    def is_alive(self) -> bool:
        if self.process is not None:  # attached: the client lives as long as the container (and costs no call)
            return self.process.poll() is None
        return self._state() == "true"

    def logs(self, lines: int | None = 30) -> str:
        """The root-cause lines of the container's log (its whole log is kept in log_file)."""
        res = self._docker("logs", self.name)
        if res.returncode != 0:
            if self.log_file.is_file():
                return relevant_log_lines(self.log_file, lines or 30)
            return "(no log: the container is gone" + ("; its output is above)" if self.process else ")")
        text = (res.stdout or "") + (res.stderr or "")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.write_text(text)
        return with_continuations(relevant_log_lines(self.log_file, lines or 30), text.splitlines())

    def log_path(self) -> str | None:
        return None  # a foreground container writes to the terminal; `logs` reads the engine's log

    def wait_ready(self, models: list[str], timeout_s: float, on_progress: Progress | None = None) -> float:
        return health.wait_ready(self.spec.http_url, models, timeout_s, self.is_alive,
                                 lambda: self.logs(30), on_progress)

    def wait(self) -> int:
        """Block until an attached server exits; its exit code."""
        return self.process.wait() if self.process is not None else 0

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop and remove the container; safe after a failed or partial start and more than once."""
        grace = int(timeout_s) if timeout_s else self.spec.exit_timeout_s + 5
        try:
            engine = self.engine
        except ServerError:
            return  # no engine answers: no container of ours can be running
        for args, timeout in ((["stop", "-t", str(grace), self.name], grace + 30), (["rm", "-f", self.name], 60)):
            try:
                self.runner([engine.client, *args], timeout=timeout)  # "no such container" is fine
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._state() is not None:
            raise ServerError(f"the container {self.name} could not be removed",
                              f"remove it by hand: {engine.client} rm -f {self.name}")

    def __enter__(self) -> "DockerServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""Run Triton locally (no Docker): the server from the runtime install plus tritonkit's vllm backend."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from tritonkit.errors import ServerError
from tritonkit.paths import home
from tritonkit.runtime.base import Progress, RuntimeOptions, Server
from tritonkit.runtime.health import wait_ready as wait_http_ready
from tritonkit.runtime.install import TritonInstall, ensure_triton, python_libdir
from tritonkit.runtime.spec import ServerSpec, check_ports_free

BACKEND_SOURCE = Path(__file__).resolve().parent.parent / "backend" / "vllm"


def server_dir(name: str) -> Path:
    return home() / "servers" / name


def install_vllm_backend(install: TritonInstall) -> Path:
    """Copy tritonkit's Python-based `vllm` backend (model.py and the modules it imports, which
    the stub finds beside it) next to the Python backend."""
    target = install.backends_dir / "vllm"
    target.mkdir(parents=True, exist_ok=True)
    # model.py last: a stub loading meanwhile finds the modules a new model.py imports.
    for src in sorted(BACKEND_SOURCE.glob("*.py"), key=lambda p: p.name == "model.py"):
        tmp = target / f".{src.name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, target / src.name)  # atomic: another server may be loading it
    return target


def server_command(spec: ServerSpec, install: TritonInstall, models: list[str] | None = None) -> list[str]:
    """`models`: load exactly these under explicit model control, which the backend's supervision
    needs (Triton 2.51 lets a Python model report not ready only by being unloaded, then reloaded)."""
    explicit = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)] if models else []
    return [
        str(install.server_bin),
        f"--model-repository={spec.repository}",
        f"--backend-directory={install.backends_dir}",
        f"--http-address={spec.host}", f"--http-port={spec.http_port}",
        f"--grpc-address={spec.host}", f"--grpc-port={spec.grpc_port}",
        f"--metrics-address={spec.host}", f"--metrics-port={spec.metrics_port}",
        "--allow-cpu-metrics=false", "--allow-gpu-metrics=false",
        "--metrics-config=histogram_latencies=true",
        f"--exit-timeout-secs={spec.exit_timeout_s}",
        f"--backend-config=python,shm-region-prefix-name={spec.shm_prefix}",
        f"--log-verbose={spec.log_verbose}",
        *explicit,
    ]


def server_env(spec: ServerSpec, install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    # The stub links libpython3.X.so: the running interpreter's LIBDIR must come first, or the
    # system's libpython is picked and extension modules fail with undefined symbols.
    libs = [python_libdir(), str(install.lib_dir), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    # torch (imported by vLLM) reads files without an explicit encoding.
    env["LC_ALL"] = env["LANG"] = "C.UTF-8"
    env.pop("PYTHONPATH", None)
    env["TRITONKIT_ENGINE_PYTHON"] = sys.executable
    # The engine runs this very tritonkit (a checkout or worktree may differ from the installed one).
    env["TRITONKIT_ENGINE_PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.update(spec.env)
    return env


class ProcessGroupServer(Server):
    """A server that is one process leading its own process group, logging to one file: found
    again by its pid (local Triton, vLLM's OpenAI server)."""

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None):
        super().__init__(spec, list(builds), options or RuntimeOptions())
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.log_file = server_dir(spec.name) / "server.log"

    @classmethod
    def attach(cls, record):
        server = cls(ServerSpec.from_record(record))
        server.pid = record.pid
        if record.log_path:
            server.log_file = Path(record.log_path)
        return server

    def handle(self) -> dict:
        return {"pid": self.pid}

    def log_path(self) -> str | None:
        return str(self.log_file)

    def is_alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and group_alive(self.pid)


class LocalServer(ProcessGroupServer):
    """One tritonserver process (and its process group: stubs and vLLM engines)."""

    runtime = "local"

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None,
                 install: TritonInstall | None = None):
        super().__init__(spec, builds, options)
        self.install = install

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if not self.spec.repository.is_dir():
            raise ServerError(f"model repository {self.spec.repository} does not exist",
                              "run `tritonkit build` first, or pass --repository")
        check_ports_free(self.spec)
        self.install = self.install or ensure_triton(self.options.say)
        install_vllm_backend(self.install)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "wb")
        # The stub embeds Python in isolated mode (PYTHONPATH is ignored) with the working
        # directory first on sys.path: running the server in stub-site gives the stub numpy<2.
        self.proc = subprocess.Popen(
            server_command(self.spec, self.install, repository_models(self.spec.repository)), env=server_env(self.spec, self.install),
            cwd=self.install.stub_site, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches every child
        )
        log.close()
        self.pid = self.proc.pid

    def wait_ready(self, models: list[str], timeout_s: float = 600, on_progress: Progress | None = None) -> float:
        return wait_http_ready(self.spec.http_url, models, timeout_s, self.is_alive, self.logs, on_progress)

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left."""
        if self.pid is None:
            return
        timeout_s = self.spec.exit_timeout_s + 15 if timeout_s is None else timeout_s
        stop_group(self.pid, timeout_s, self.proc)

    def logs(self, lines: int = 12) -> str:
        return relevant_log_lines(self.log_file, lines)

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def repository_models(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state_of(pid) != "Z"  # a zombie is not alive for our purposes


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group: a server and everything it started."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    return [p for p in pids if _pgid_of(p) == pgid and _state_of(p) != "Z"]


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _pgid_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None


def _state_of(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else "?"


def stop_group(pgid: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap our child so it does not linger as a zombie
        if not group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        proc.wait()


# Python exceptions ("ValueError: ...") name root causes; vLLM prefixes its lines with
# "(Proc pid=N) ERROR <date> [file]"; Triton's own error lines start with E<mmdd>.
_VLLM_PREFIX = re.compile(r"^\(\S+ pid=\d+\) \w+ [\d-]+ [\d:]+ \[[^\]]+\] ?")
_EXCEPTION = re.compile(r"^((\w+\.)*\w*(Error|Exception): |tritonkit engine: could not).+")
_TRITON_ERROR = re.compile(r"^E\d{4} .*(failed to load|error)", re.IGNORECASE)


def relevant_log_lines(path: Path, lines: int = 8) -> str:
    """The root-cause lines of a failed start (Triton prints a long table after them), else the tail."""
    picked: list[str] = []
    for raw in log_tail(path, 1000).splitlines():
        line = _VLLM_PREFIX.sub("", raw).strip()
        if (_EXCEPTION.match(line) or _TRITON_ERROR.match(line)) and line not in picked:
            picked.append(line)
    return "\n".join(picked[-lines:]) if picked else log_tail(path, lines)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            tail = deque(f, maxlen=lines)
    except OSError:
        return "(no log)"
    return b"".join(tail).decode("utf-8", "replace").rstrip()

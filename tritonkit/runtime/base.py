"""The one interface every runtime implements (local Triton, Triton in a container, Ray Serve,
standalone vLLM), and the table that maps a runtime's name to its class.

`serving.start` is the only caller of `start`/`wait_ready` and cleans up a failed start in one
place: whatever `start` began, `stop` removes (it must be safe to call after a partial start and
more than once). `status`, `stop`, `generate` and `perf` find a running server again through its
ServerRecord and `attach`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

from tritonkit.errors import UsageError
from tritonkit.runtime.spec import ServerSpec

if TYPE_CHECKING:
    from tritonkit.buildrecord import BuildRecord
    from tritonkit.runtime.state import ServerRecord

Progress = Callable[[str, float], None]


@dataclass
class RuntimeOptions:
    """What the user chose beyond the spec; each runtime reads the fields it knows."""

    detach: bool = False  # docker: `run -d` (else attached to the terminal)
    image: str | None = None  # docker: the image to run
    gpus: str = "all"  # docker: the --gpus value
    replicas: int = 1  # ray: fixed replica count...
    autoscale: tuple[int, int] | None = None  # ...or a (min, max) range
    address: str | None = None  # ray: an existing cluster to deploy onto (None: a local head)
    stream_batching_ms: float = 0.0  # ray: token batching between Ray's actors (0: each token as it comes)
    say: Callable[[str], None] = lambda message: None  # one-line progress notes for the user


class Server(ABC):
    """One running server of some runtime, from start to stop."""

    runtime: ClassVar[str]  # the name users pass to --runtime and records store
    api: ClassVar[str] = "triton"  # what clients speak to it: "triton" (gRPC + HTTP /v2) or "openai"

    def __init__(self, spec: ServerSpec, builds: list[BuildRecord], options: RuntimeOptions):
        self.spec = spec
        self.builds = builds  # the build.json records of the repository's models (may be empty)
        self.options = options

    @abstractmethod
    def start(self) -> None:
        """Launch the server and return without waiting for readiness."""

    @abstractmethod
    def wait_ready(self, models: list[str], timeout_s: float, on_progress: Progress | None = None) -> float:
        """Block until every model answers requests; seconds waited. Raises ServerError with the
        root cause from the log when the server dies or the time runs out (no cleanup here)."""

    @abstractmethod
    def is_alive(self) -> bool:
        """True while the server's processes (or container, or deployment) are running."""

    @abstractmethod
    def stop(self, timeout_s: float | None = None) -> None:
        """Stop and remove everything this server started. Idempotent; safe after a failed start."""

    @abstractmethod
    def logs(self, lines: int = 30) -> str:
        """The last lines of the server's log (root-cause lines first where the runtime can tell)."""

    def log_path(self) -> str | None:
        """A file a foreground `serve` can follow, where the runtime writes one."""
        return None

    @abstractmethod
    def handle(self) -> dict:
        """What `attach` needs to find this server again: ServerRecord fields (pid, container, address...)."""

    @classmethod
    @abstractmethod
    def attach(cls, record: ServerRecord) -> Server:
        """A handle on a recorded server, for status and stop (no builds, default options)."""


# name -> "module:Class"; imported on use, so a runtime's heavy imports cost nothing elsewhere.
RUNTIMES: dict[str, str] = {
    "local": "tritonkit.runtime.local:LocalServer",
    "docker": "tritonkit.runtime.docker:DockerServer",
    "vllm": "tritonkit.runtime.vllm_server:VllmServer",
    "ray": "tritonkit.runtime.ray:RayServer",
}


def server_class(runtime: str) -> type[Server]:
    target = RUNTIMES.get(runtime)
    if target is None:
        raise UsageError(f"unknown runtime {runtime!r}", f"use one of: auto, {', '.join(RUNTIMES)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)

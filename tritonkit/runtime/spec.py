"""What a runtime needs to start Triton on a model repository, whichever runtime it is."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tritonkit.errors import UsageError


@dataclass
class ServerSpec:
    """One Triton server: its repository, ports and name, as the user asked for them."""

    repository: Path  # absolute path of the model repository
    name: str = "tritonkit"  # names the server for status/stop and its shared-memory prefix
    host: str = "127.0.0.1"  # where ports are published (docker) / the clients connect
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # Extra environment for the server (e.g. VLLM_CPU_KVCACHE_SPACE from build.json).
    env: dict[str, str] = field(default_factory=dict)
    # Seconds Triton waits for in-flight requests on shutdown (its default of 30 s is long).
    exit_timeout_s: int = 5
    log_verbose: int = 0

    @classmethod
    def from_record(cls, record) -> "ServerSpec":
        """The spec of a recorded server (runtime.state.ServerRecord), for Server.attach."""
        return cls(repository=Path(record.repository), name=record.name, host=record.host,
                   http_port=record.http_port, grpc_port=record.grpc_port, metrics_port=record.metrics_port)

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    @property
    def shm_prefix(self) -> str:
        # Several servers on one host must not share the Python backend's shm regions.
        return f"tritonkit_{self.name}_{self.http_port}_"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` (at `host` or on all addresses)."""
    for address in {host, "0.0.0.0"}:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers do: connections of a stopped server in TIME_WAIT do not hold the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def check_ports_free(spec: ServerSpec) -> None:
    seen = set()
    for what, port in spec.ports.items():
        if not 0 < port < 65536:
            raise UsageError(f"{what} port {port} is out of range", "use a port between 1 and 65535")
        if port in seen:
            raise UsageError(f"port {port} is given twice", "give the http, grpc and metrics ports different numbers")
        seen.add(port)
        if not port_is_free(port, spec.host):
            raise UsageError(
                f"{what} port {port} is already in use",
                f"stop what listens there, or pick another port with --{what}-port",
            )


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free port below Linux's ephemeral range (32768+), where the OS hands out ports to
    outgoing connections and to vLLM's internal sockets, so it stays free until the server binds."""
    for _ in range(200):
        port = random.randint(low, high)
        if port_is_free(port):
            return port
    raise UsageError(f"no free port found between {low} and {high}", "free some ports or pass them explicitly")

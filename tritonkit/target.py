"""Which server am I talking to? One answer, shared by `generate` and `perf`.

In order: --name is that recorded server; --url is the live tritonkit server listening on that
port (none: a server tritonkit did not start); --repository is the live server serving it; with
none of them, the one live tritonkit server (none running: the protocol's default address).
The model repository behind it is --repository, else the server's, else (no --url) ./model_repository
where `tritonkit build` and `tritonkit serve` put it by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tritonkit.errors import UsageError
from tritonkit.runtime import state

DEFAULT_REPOSITORY = "model_repository"  # build's -o and serve's -r default


@dataclass(frozen=True)
class Target:
    record: state.ServerRecord | None  # the tritonkit server, when it is one
    protocol: str                      # what the client speaks to it: grpc, http or openai
    url: str | None                    # where the client connects (None: the protocol's default)
    repository: Path | None            # the model repository behind it, when known

    def only_model(self) -> str | None:
        """The server's model when it serves exactly one."""
        if self.record is None:
            return None
        if len(self.record.models) != 1:
            raise UsageError(f"server {self.record.name} serves several models ({', '.join(self.record.models)})",
                             "pick one with --model")
        return self.record.models[0]


def url_host_port(url: str | None) -> tuple[str, int | None]:
    parsed = urlparse("//" + (url or "").split("://")[-1])
    return parsed.hostname or "127.0.0.1", parsed.port


def _alive(record: state.ServerRecord) -> bool:
    from tritonkit.serving import record_alive

    return record_alive(record)


def _live_records() -> list[state.ServerRecord]:
    return [r for r in state.all_records() if _alive(r)]


def find_server(name: str | None, url: str | None, repository: str | Path | None) -> state.ServerRecord | None:
    """The tritonkit-started server these options point at (rules in the module's docstring)."""
    if name:
        record = state.find(name)
        if not _alive(record):
            raise UsageError(f"server {name!r} is not running (its record is stale)",
                             "start it again with `tritonkit serve`, or see `tritonkit status`")
        return record
    if url:
        _, port = url_host_port(url)
        return next((r for r in _live_records() if port in (r.grpc_port, r.http_port)), None)
    if repository:
        wanted = Path(repository).expanduser().resolve()
        return next((r for r in _live_records() if Path(r.repository).resolve() == wanted), None)
    live = _live_records()
    if len(live) > 1:
        raise UsageError(f"several servers are running ({', '.join(r.name for r in live)})", "pick one with --name")
    return live[0] if live else None


def server_url(record: state.ServerRecord, protocol: str) -> str:
    if protocol == "grpc":
        return record.grpc_url
    return record.http_url if protocol == "http" else f"http://{record.http_url}"


def resolve(protocol: str | None, name: str | None = None, url: str | None = None,
            repository: str | Path | None = None) -> Target:
    """protocol None: the server's own API (openai for the vllm and ray runtimes), else grpc."""
    record = find_server(name, url, repository)
    if protocol is None:
        protocol = "openai" if record is not None and record.api == "openai" else "grpc"
    if not url and record is not None:
        url = server_url(record, protocol)
    if repository:
        repo = Path(repository).expanduser()
    elif record is not None:
        repo = Path(record.repository)
    elif url:
        repo = None  # a server tritonkit did not start: ./model_repository says nothing about it
    else:
        repo = Path(DEFAULT_REPOSITORY) if Path(DEFAULT_REPOSITORY).is_dir() else None
    return Target(record, protocol, url, repo)

"""Records of running servers, so `status`, `stop`, `generate` and `perf` can find them again."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from tritonkit.errors import UsageError
from tritonkit.paths import home


@dataclass
class ServerRecord:
    name: str
    runtime: str  # "local" or "docker"
    repository: str
    models: list[str]
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    pid: int | None = None  # local: the server's pid, which is also its process group
    container: str | None = None  # docker: container name
    log_path: str | None = None
    started_at: float = 0.0
    ready_s: float | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"


def _records_dir() -> Path:
    return home() / "servers"


def record_path(name: str) -> Path:
    return _records_dir() / name / "server.json"


def save(record: ServerRecord) -> None:
    path = record_path(record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)


def load(name: str) -> ServerRecord | None:
    path = record_path(name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in fields(ServerRecord)}  # records from other tritonkit versions may differ
    return ServerRecord(**{k: v for k, v in data.items() if k in known})


def remove(name: str) -> None:
    record_path(name).unlink(missing_ok=True)


def all_records() -> list[ServerRecord]:
    root = _records_dir()
    if not root.is_dir():
        return []
    found = (load(p.name) for p in sorted(root.iterdir()) if (p / "server.json").is_file())
    return [r for r in found if r is not None]


def find(name: str | None, alive: Callable[[ServerRecord], bool] | None = None) -> ServerRecord:
    """The named server, or the only one running (judged by `alive`, where given, so records of
    servers that died are passed over); a clear error otherwise."""
    if name:
        record = load(name)
        if record is None:
            raise UsageError(f"no server named {name!r} is recorded", "see `tritonkit status`")
        return record
    records = [r for r in all_records() if alive is None or alive(r)]
    if len(records) == 1:
        return records[0]
    if not records:
        raise UsageError("no tritonkit server is running", "start one with `tritonkit serve --detach`, or pass --url")
    names = ", ".join(r.name for r in records)
    raise UsageError(f"several servers are running ({names})", "pick one with --name")

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
    runtime: str  # a name in runtime.base.RUNTIMES
    repository: str
    models: list[str]
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    api: str = "triton"  # what clients speak: "triton" (gRPC + HTTP /v2) or "openai"
    pid: int | None = None  # local: the server's pid, which is also its process group
    container: str | None = None  # docker: container name
    address: str | None = None  # ray: the cluster's address
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
    try:
        tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write the server record {path}: {err.strerror or err}",
                         "free some disk space in $TRITONKIT_HOME") from None


def load(name: str) -> ServerRecord | None:
    path = record_path(name)
    if not path.is_file():
        return None
    fix = f"remove it (rm {path}) and stop the server by hand if it still runs"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"the server record {path} is corrupt or unreadable ({err})", fix) from None
    known = {f.name for f in fields(ServerRecord)}  # records from other tritonkit versions may differ
    try:
        return ServerRecord(**{k: v for k, v in data.items() if k in known})
    except (TypeError, AttributeError) as err:
        raise UsageError(f"the server record {path} is incomplete ({err})", fix) from None


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

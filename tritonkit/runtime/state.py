"""Records of running servers, so `status`, `stop`, `generate` and `perf` can find them again."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from tritonkit.errors import UsageError
from tritonkit.paths import home


class CorruptRecord(UsageError):
    """A server record that cannot be read: never passed over silently, whatever the command."""


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
        raise CorruptRecord(f"the server record {path} is corrupt or unreadable ({err})", fix) from None
    known = {f.name for f in fields(ServerRecord)}  # records from other tritonkit versions may differ
    try:
        record = ServerRecord(**{k: v for k, v in data.items() if k in known})
    except (TypeError, AttributeError) as err:
        raise CorruptRecord(f"the server record {path} is incomplete ({err})", fix) from None
    wrong = [k for k, kinds in _TYPES.items() if not isinstance(getattr(record, k), kinds)
             or isinstance(getattr(record, k), bool)]
    if wrong:
        raise CorruptRecord(f"the server record {path} is corrupt (wrong type for {', '.join(wrong)})", fix)
    return record


# What each field must hold (a hand-edited or damaged record fails here, not deep in a command).
_TYPES = {"name": str, "runtime": str, "repository": str, "models": list, "host": str, "http_port": int,
          "grpc_port": int, "metrics_port": int, "api": str, "pid": (int, type(None)),
          "container": (str, type(None)), "address": (str, type(None)), "log_path": (str, type(None)),
          "started_at": (int, float), "ready_s": (int, float, type(None))}


@contextlib.contextmanager
def start_lock(name: str):
    """Held for the whole start of server `name`: a second `serve --name X` at the same time
    refuses at once instead of racing the first for its ports and record. flock, so a start that
    dies (even by kill -9) releases it."""
    path = _records_dir() / name / "serve.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UsageError(f"cannot create the start lock {path}: {err.strerror or err}",
                         "check that $TRITONKIT_HOME is writable") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"a server named {name!r} is being started by another `tritonkit serve` right now "
                             f"(lock {path})", "wait for it to be ready, or give this one another --name") from None
        yield
    finally:
        os.close(fd)  # releases the lock


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

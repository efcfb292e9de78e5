"""Failed requests counted by kind, across the whole run, and the user's choice on the first one.

Clients name failures after their protocol (server_error, grpc_unavailable, http_503...); a report
about faults wants what happened instead: the connection to the model was lost, the server
answered with an error, a request timed out, was cancelled, was refused as not ready, or was
rejected as bad input. `classify` maps one to the other; `FaultLog` sees every finished request
(warm-up included), rewrites its kind to the category, keeps a count and an example message per
kind, and halts the run on the first failure when the user asked `--on-error stop`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

ON_ERROR = ("continue", "stop")

CONNECTION_LOST = "connection_lost"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
NOT_READY = "not_ready"
BAD_REQUEST = "bad_request"
UNREACHABLE = "unreachable"

# Message patterns, checked in order (the first match wins). The vLLM backend relays a dead
# engine as "Connection lost" / "Broken pipe"; gRPC and HTTP clients add their own wording.
_PATTERNS = [
    (UNREACHABLE, re.compile(r"cannot reach|connection refused|name or service not known", re.I)),
    (CONNECTION_LOST, re.compile(r"connection (lost|reset|closed|aborted)|broken pipe|engine (process )?(died|exited|stopped|is dead)"
                                 r"|stream ended before|server disconnected|EOF|errno 32|errno 104", re.I)),
    (NOT_READY, re.compile(r"not ready|unavailable|\b503\b|is (loading|restarting)", re.I)),
    (TIMEOUT, re.compile(r"timed? ?out|deadline exceeded|no complete answer within", re.I)),
    (CANCELLED, re.compile(r"cancel+ed|still running when the run stopped|aborted", re.I)),
    (BAD_REQUEST, re.compile(r"invalid|unknown (key|lora|adapter)|must be|\b4\d\d\b|bad request", re.I)),
]
_BY_KIND = {"timeout": TIMEOUT, "unfinished": CANCELLED, "grpc_cancelled": CANCELLED, "truncated": CONNECTION_LOST,
            "unreachable": UNREACHABLE, "grpc_deadline_exceeded": TIMEOUT, "grpc_unavailable": NOT_READY,
            "http_503": NOT_READY, "http_504": TIMEOUT, "http_400": BAD_REQUEST, "http_422": BAD_REQUEST}


def classify(kind: str | None, message: str | None) -> str:
    """The fault category of one failed request (its client-given kind, its message)."""
    if kind in _BY_KIND.values():
        return kind  # already a category (classified once before)
    if kind in _BY_KIND:
        return _BY_KIND[kind]
    text = message or ""
    for category, pattern in _PATTERNS:
        if pattern.search(text):
            return category
    generic = kind in (None, "server_error", "RequestError") or str(kind).startswith(("grpc_", "http_5"))
    return SERVER_ERROR if generic else str(kind)


@dataclass
class FaultKind:
    count: int = 0
    example: str = ""  # the first message of this kind
    first: float | None = None  # perf_counter when the first and the last of them ended
    last: float | None = None

    def to_dict(self, t0: float) -> dict:
        rel = (lambda t: None if t is None else round(t - t0, 3))
        return {"count": self.count, "example": self.example, "first_s": rel(self.first), "last_s": rel(self.last)}


class FaultLog:
    """Every request's outcome as the runner finishes it; the failures by kind."""

    def __init__(self, on_error: str = "continue", halt: Callable[[str, str], None] | None = None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.halt = halt or (lambda status, message: None)
        self.finished = self.ok = 0
        self.kinds: dict[str, FaultKind] = {}
        self.stopped_by: str | None = None

    def observe(self, rec) -> None:
        """One finished RequestRecord (its error_kind is rewritten to the fault category)."""
        self.finished += 1
        if rec.ok:
            self.ok += 1
            return
        rec.error_kind = classify(rec.error_kind, rec.error)
        self._count(rec)
        if self.on_error == "stop" and self.stopped_by is None:
            self.stopped_by = f"{rec.error_kind}: {rec.error}"
            self.halt("failed", f"stopped at the first failed request (--on-error stop): {self.stopped_by}")

    def _count(self, rec) -> None:
        fault = self.kinds.setdefault(rec.error_kind, FaultKind(example=rec.error or ""))
        fault.count += 1
        if rec.done is not None:
            fault.first = rec.done if fault.first is None else min(fault.first, rec.done)
            fault.last = rec.done if fault.last is None else max(fault.last, rec.done)

    @property
    def failed(self) -> int:
        return sum(k.count for k in self.kinds.values())

    def to_dict(self, t0: float) -> dict:
        return {"on_error": self.on_error, "finished": self.finished, "ok": self.ok, "failed": self.failed,
                "by_kind": {k: v.to_dict(t0) for k, v in sorted(self.kinds.items(), key=lambda kv: -kv[1].count)},
                "stopped_by": self.stopped_by}


def describe(faults: dict | None) -> list[str]:
    """Report lines: one per kind of failure, with its count and an example."""
    if not faults or not faults.get("failed"):
        return []
    lines = [f"{faults['failed']} of {faults['finished']} requests failed (--on-error {faults['on_error']})"]
    for kind, k in faults["by_kind"].items():
        when = f", {k['first_s']:.1f}-{k['last_s']:.1f} s" if k.get("first_s") is not None else ""
        lines.append(f"{kind}: {k['count']}{when}, e.g. \"{k['example'][:200]}\"")
    if faults.get("stopped_by"):
        lines.append(f"the run stopped at the first failure: {faults['stopped_by'][:200]}")
    return lines

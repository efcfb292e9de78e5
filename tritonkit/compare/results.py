"""A comparison's output folder: its setup and one file per method run, so a run can resume or re-report.

    OUT/compare.json            Setup: model, methods, workload, SLO, price, pinned engine arguments
    OUT/runs/<method>-<n>.json  MethodRun: the summary document of each sweep of that run
    OUT/perf/<method>-<n>-<sweep>/  tritonkit perf's full output (results.json, report.html...)
    OUT/logs/<method>-<n>.log   the server's log
    OUT/compare.md, compare.png, capacity.md, serve-config-*.yaml   written from the above
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tritonkit.buildrecord import read_json, write_json
from tritonkit.errors import UsageError

SETUP_FILE = "compare.json"
# Setup fields that must match for --resume to add runs to an existing folder.
SAME_FOR_RESUME = ("model", "repository", "preset", "rates", "concurrency", "slo", "window_s", "max_step_s",
                   "warmup_s", "duration_s", "price_per_hour", "engine_args")


@dataclass
class Setup:
    """What every method of one comparison shares."""

    model: str  # the Triton model name (the build's folder)
    repository: str
    methods: list[str]
    baseline: str
    repeat: int
    preset: str | None
    rates: str | None  # the open-loop sweep (req/s)
    concurrency: str | None  # the closed-loop sweep (users)
    slo: str | None
    window_s: float
    max_step_s: float
    warmup_s: float
    duration_s: float | None
    price_per_hour: float | None
    price_source: str
    gpu_profile: str | None  # the build's (or --gpu's) profile: seed rows and capacity rows key on it
    gpus_per_replica: int = 1
    random_weights: bool = False
    engine_args: dict = field(default_factory=dict)  # model.json as built
    pinning: dict = field(default_factory=dict)  # tritonkit.compare.pinning.Pinning as JSON
    device: dict = field(default_factory=dict)  # GPU name, memory, driver (or the CPU)
    versions: dict = field(default_factory=dict)
    command: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MethodRun:
    """One method, started once, measured by each sweep, stopped."""

    method: str
    run: int  # 1..repeat
    status: str  # "ok", "failed" (nothing or part measured) or "interrupted"
    message: str = ""
    ready_s: float | None = None
    server_command: str = ""
    server_handle: dict = field(default_factory=dict)  # Server.handle(): pid (its process group), container...
    engine_args: dict = field(default_factory=dict)  # what the method's engine was given (checked against the pins)
    sweeps: dict[str, dict] = field(default_factory=dict)  # "rate"/"concurrency" -> tritonkit perf's summary doc
    started_at: float = 0.0
    elapsed_s: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.method}-{self.run}"

    @property
    def steps(self) -> list[dict]:
        return [s for doc in self.sweeps.values() for s in doc.get("steps", [])]

    def to_json(self) -> dict:
        return asdict(self)


def _load(cls, path: Path):
    data = read_json(path, "comparison record")
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a comparison record", "delete it and run again")
    try:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
    except TypeError as err:
        raise UsageError(f"{path} is an incomplete comparison record ({err})", "delete it and run again") from None


def save_setup(out: Path, setup: Setup) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETUP_FILE, setup.to_json())


def load_setup(out: Path) -> Setup | None:
    path = out / SETUP_FILE
    return _load(Setup, path) if path.is_file() else None


def check_resumable(old: Setup, new: Setup) -> None:
    """--resume adds runs only to a folder that measured the same thing."""
    for name in SAME_FOR_RESUME:
        if getattr(old, name) != getattr(new, name):
            raise UsageError(f"{old.model} comparison in this folder has {name}={getattr(old, name)!r}, "
                             f"this run {getattr(new, name)!r}", "use another --out, or the same options to resume")


def run_path(out: Path, method: str, run: int) -> Path:
    return out / "runs" / f"{method}-{run}.json"


def save_run(out: Path, run: MethodRun) -> None:
    path = run_path(out, run.method, run.run)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, json.loads(json.dumps(run.to_json(), default=str)))


def load_runs(out: Path) -> list[MethodRun]:
    folder = out / "runs"
    if not folder.is_dir():
        return []
    return [_load(MethodRun, p) for p in sorted(folder.glob("*.json"))]


def finished(out: Path, method: str, run: int) -> MethodRun | None:
    """The recorded run of `method` number `run` when it completed (resume skips it)."""
    path = run_path(out, method, run)
    if not path.is_file():
        return None
    found = _load(MethodRun, path)
    return found if found.status == "ok" else None

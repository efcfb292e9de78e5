"""Capacity plan from measurements: replicas, GPUs and monthly cost for a target load at an SLO.

For each delivery method and GPU profile that a comparison measured, the capacity of one replica is
the highest achieved req/s of a step meeting the SLO (recomputed from the stored step percentiles,
so the SLO may differ from the comparison's), taking the lowest over repeated runs. Replicas =
ceil(target / (capacity × (1 − headroom))); cost = replicas × the profile's $/hour × 730 h a month.
A capacity that is a lower bound (no step missed the SLO) gives an upper bound on replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tritonkit.compare import results, table
from tritonkit.compare.methods import METHODS
from tritonkit.errors import TritonkitError, UsageError

HOURS_PER_MONTH = 730


@dataclass
class CapacityRow:
    method: str
    gpu_profile: str | None
    replica_rps: float | None  # one replica's req/s at the SLO (lowest over runs)
    lower_bound: bool  # the sweep never missed the SLO: one replica holds more
    replicas: int | None
    gpus: int | None
    price_per_hour: float | None  # one replica
    monthly_usd: float | None
    source: str  # the comparison folder


def replicas_for(target_rps: float, replica_rps: float, headroom: float = 0.0) -> int:
    if target_rps <= 0:
        raise UsageError(f"--target-rps must be positive, got {target_rps:g}")
    if not 0 <= headroom < 1:
        raise UsageError(f"--headroom must be in [0, 1), got {headroom:g}", "e.g. 0.2 keeps 20% spare")
    return max(1, math.ceil(target_rps / (replica_rps * (1 - headroom)) - 1e-9))


def replica_capacity(runs: list[results.MethodRun], slo: str | None) -> tuple[float | None, bool]:
    """(lowest over completed runs of the highest req/s meeting `slo`, whether that is a lower bound)."""
    bounds = table.bounds_of(slo)
    found, lower = [], False
    for r in runs:
        if r.status != "ok" or not r.steps:
            continue
        good = [s for s in r.steps if table.meets(s, bounds)]
        if not good:
            return None, False  # a run met the SLO at no load: no capacity to plan with
        found.append(max(s["requests_per_s"] for s in good))
        lower = lower or len(good) == len(r.steps)
    return (min(found), lower) if found else (None, False)


def plan(folders: list[Path], target_rps: float, slo: str | None, headroom: float = 0.0) -> list[CapacityRow]:
    replicas_for(target_rps, 1.0, headroom)  # bad --target-rps / --headroom: an error before any reading
    rows = []
    for folder in folders:
        setup = results.load_setup(folder)
        if setup is None:
            raise UsageError(f"{folder} holds no comparison ({results.SETUP_FILE} is missing)",
                             "pass folders written by `tritonkit compare`")
        runs = results.load_runs(folder)
        for method in setup.methods:
            capacity, lower = replica_capacity([r for r in runs if r.method == method], slo or setup.slo)
            n = replicas_for(target_rps, capacity, headroom) if capacity else None
            price = setup.price_per_hour
            rows.append(CapacityRow(method, setup.gpu_profile, capacity, lower, n,
                                    n * setup.gpus_per_replica if n else None, price,
                                    n * price * HOURS_PER_MONTH if n and price else None, str(folder)))
    return rows


def render(rows: list[CapacityRow], target_rps: float, slo: str | None, headroom: float) -> str:
    head = ["method", "GPU profile", "one replica (req/s)", f"replicas for {target_rps:g} req/s", "GPUs",
            "$/hour", f"$/month ({HOURS_PER_MONTH} h)"]
    lines = []
    for r in rows:
        label = METHODS[r.method].label if r.method in METHODS else r.method
        lines.append([label, r.gpu_profile or "-",
                      "-" if r.replica_rps is None else (">= " if r.lower_bound else "") + f"{r.replica_rps:.1f}",
                      "-" if r.replicas is None else ("<= " if r.lower_bound else "") + str(r.replicas),
                      "-" if r.gpus is None else str(r.gpus),
                      "-" if not (r.replicas and r.price_per_hour) else f"{r.replicas * r.price_per_hour:,.2f}",
                      "-" if r.monthly_usd is None else f"{r.monthly_usd:,.0f}"])
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]

    def fmt(x):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(x, widths)) + " |"

    notes = [f"SLO {table.slo_mod.describe(table.bounds_of(slo))}; one replica's capacity is the lowest over "
             f"its runs of the highest measured req/s meeting it; headroom {headroom:.0%}",
             "'>=' / '<=': the sweep never missed the SLO, so one replica holds more and fewer replicas may do",
             "a method with '-' met the SLO at no measured load (or was not measured)"]
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines), ""]
                     + [f"- {n}" for n in notes]) + "\n"


def write_serve_configs(rows: list[CapacityRow], out: Path) -> tuple[list[Path], list[str]]:
    """A Ray Serve config per measured GPU profile with the replica count planned for Ray (else for
    standalone vLLM, the same engine without Ray's proxy): (files, notes for the user)."""
    files, notes = [], []
    try:
        from tritonkit.runtime import ray_config
    except ImportError:
        return [], ["Ray Serve config not written: this tritonkit has no Ray runtime (tritonkit.runtime.ray_config)"]
    from tritonkit import buildrecord

    for profile in sorted({r.gpu_profile or "-" for r in rows}):
        mine = [r for r in rows if (r.gpu_profile or "-") == profile and r.replicas]
        row = next((r for r in mine if r.method == "ray"), None) or next((r for r in mine if r.method == "vllm"), None)
        if row is None:
            notes.append(f"no Ray Serve config for {profile}: neither ray nor vllm met the SLO there")
            continue
        setup = results.load_setup(Path(row.source))
        try:
            build = buildrecord.load(setup.repository, setup.model)
            config, _ = ray_config.serve_config(
                [build], ray_config.RayConfigOptions(replicas=row.replicas),
                {setup.model: (setup.pinning or {}).get("pinned") or setup.engine_args})
            path = out / f"serve-config-{profile}.yaml"
            path.write_text(ray_config.to_yaml(config, ray_config.cluster_header(config)
                                               + f"\nnum_replicas {row.replicas}: planned from {row.method}'s "
                                               f"measured {row.replica_rps:.1f} req/s a replica on {profile}."))
            files.append(path)
        except TritonkitError as err:
            notes.append(f"no Ray Serve config for {profile}: {err.message}")
    return files, notes

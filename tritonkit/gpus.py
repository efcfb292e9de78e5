"""GPU profiles (a shipped data file + an optional user file) and the `cpu` profile of this machine."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tritonkit.errors import UsageError
from tritonkit.names import nearest
from tritonkit.paths import home, shipped

PACKAGE_PROFILES = shipped("tritonkit/data/gpus.json")


@dataclass(frozen=True)
class GpuProfile:
    name: str
    family: str
    gpu: str
    memory_mib: int            # per GPU (for cpu: this machine's RAM)
    bandwidth_gbps: float | None
    bf16: bool
    fp8: bool
    gpus: int
    instance: str
    price_per_hour: float
    kind: str = "gpu"          # "gpu" or "cpu"
    memory_utilization: float | None = None   # cpu: the share of RAM tritonkit plans with

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    def describe(self) -> str:
        if self.is_cpu:
            return f"{self.name} (vLLM CPU backend, {self.memory_mib / 1024:.1f} GiB RAM, ${self.price_per_hour:g}/h)"
        return (f"{self.name} ({self.gpus} × {self.gpu}, {self.instance}, "
                f"${self.price_per_hour:g}/h)")


def user_profiles_path() -> Path:
    return home() / "gpus.json"


def machine_memory_mib() -> int:
    """This machine's RAM, or the container's memory limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total // 2**20


def _load_file(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"GPU profiles file {path} is unreadable: {err}") from None
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(profiles, dict):
        raise UsageError(f"GPU profiles file {path} has no \"profiles\" object",
                         'write {"profiles": {"NAME": {...}}}, like the shipped tritonkit/data/gpus.json')
    return profiles


def load_profiles() -> dict[str, GpuProfile]:
    raw = _load_file(PACKAGE_PROFILES)
    if user_profiles_path().exists():
        raw.update(_load_file(user_profiles_path()))
    fields = {f.name for f in dataclasses.fields(GpuProfile)}
    profiles = {}
    for name, entry in raw.items():
        entry = {k: v for k, v in entry.items() if k in fields}
        if entry.get("kind") == "cpu":
            entry["memory_mib"] = machine_memory_mib()
        try:
            profiles[name] = GpuProfile(name=name, **entry)
        except TypeError as err:
            raise UsageError(f"GPU profile {name!r} is incomplete: {err}") from None
    return profiles


def get_profile(name: str, gpus: int | None = None, price: float | None = None) -> GpuProfile:
    """The named profile, with `--gpus N` and `--price` applied."""
    profiles = load_profiles()
    profile = profiles.get(name) or profiles.get(name.lower())
    if profile is None:
        near = nearest(name, list(profiles))
        raise UsageError(f"unknown GPU profile {name!r}",
                         f"did you mean {', '.join(near)}?" if near else "see `tritonkit gpus`")
    if gpus is not None and gpus != profile.gpus:
        profile = _with_gpus(profile, gpus, profiles.values())
    if price is not None:
        if price < 0:
            raise UsageError(f"--price must be >= 0, got {price}")
        profile = dataclasses.replace(profile, price_per_hour=price)
    return profile


def _with_gpus(profile: GpuProfile, gpus: int, all_profiles) -> GpuProfile:
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {gpus}")
    if profile.is_cpu:
        raise UsageError("the cpu profile runs on one machine: --gpus must be 1")
    for other in all_profiles:  # a listed instance with that many GPUs of the same kind
        if other.family == profile.family and other.gpus == gpus:
            return other
    # No listed instance: scale the price per GPU and say so.
    return dataclasses.replace(
        profile, gpus=gpus, price_per_hour=round(profile.price_per_hour / profile.gpus * gpus, 4),
        instance=f"{gpus} GPUs priced as {gpus}/{profile.gpus} of {profile.instance}")


def others(exclude: GpuProfile) -> list[GpuProfile]:
    """GPU profiles to suggest when a model does not fit `exclude`, cheapest first."""
    return sorted((p for p in load_profiles().values() if not p.is_cpu and p.name != exclude.name),
                  key=lambda p: p.price_per_hour)

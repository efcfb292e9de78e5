"""Workload presets: typed records read from the shipped perf/presets/*.json (or a user's file).

A preset fills what the command line leaves out; NO_PRESET holds the defaults of a run without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from tritonkit.errors import UsageError
from tritonkit.paths import shipped

LOAD_KINDS = ("rate", "poisson", "concurrency")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    input_tokens: int = 100
    output_tokens: str = "16"           # N, uniform:A:B or normal:MEAN:SD
    ignore_eos: bool = True
    load: dict[str, str] = field(default_factory=dict)  # at most one of LOAD_KINDS -> value or sweep text
    duration_s: float = 30.0
    slo: str | None = None


NO_PRESET = Preset(name="")


def presets_dir() -> Path:
    return shipped("perf/presets")


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(presets_dir().glob("*.json"))}


def load(name: str) -> Preset:
    """A shipped preset by name, or a JSON file of the same shape."""
    path = Path(name).expanduser()
    if not path.is_file():
        found = available()
        if name not in found:
            raise UsageError(f"unknown preset {name!r}",
                             f"use one of: {', '.join(found) or 'none found'}, or a JSON file")
        path = found[name]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"preset {path} is not readable JSON: {err}") from None
    return from_dict(path.stem, data, path)


def from_dict(name: str, data: object, where: Path | str) -> Preset:
    if not isinstance(data, dict):
        raise UsageError(f"preset {where} must hold a JSON object")
    known = {f.name for f in fields(Preset)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"preset {where} has unknown keys: {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
    load_given = data.get("load", {})
    if not isinstance(load_given, dict) or len(load_given) > 1 or set(load_given) - set(LOAD_KINDS):
        raise UsageError(f"preset {where}: \"load\" must be one of {', '.join(LOAD_KINDS)} with its value, "
                         "e.g. {\"rate\": \"10\"}")
    try:
        return Preset(
            name=name, description=str(data.get("description", "")),
            input_tokens=int(data.get("input_tokens", NO_PRESET.input_tokens)),
            output_tokens=str(data.get("output_tokens", NO_PRESET.output_tokens)),
            ignore_eos=bool(data.get("ignore_eos", NO_PRESET.ignore_eos)),
            load={k: str(v) for k, v in load_given.items()},
            duration_s=float(data.get("duration_s", NO_PRESET.duration_s)),
            slo=None if data.get("slo") is None else str(data["slo"]))
    except (TypeError, ValueError) as err:
        raise UsageError(f"preset {where} has a value of the wrong type: {err}") from None

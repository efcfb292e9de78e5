"""build.json and the model directory's other records (model.json, multi_lora.json): one typed
record, written and read here only.

`tritonkit build` writes a BuildRecord next to the model's config.pbtxt; serve, the runtimes and
perf read it back with `load`/`load_all`. A corrupt or truncated file is a UsageError naming the
file, never a traceback. Keys this version does not know are ignored, so records written by a
newer tritonkit still load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tritonkit.errors import UsageError

BUILD_FILE = "build.json"
ENGINE_FILE = "model.json"  # in the version folder "1/": vLLM's AsyncEngineArgs
LORA_FILE = "multi_lora.json"  # in "1/": adapter name -> local path
REBUILD = "rebuild it with `tritonkit build --force`"


@dataclass
class ModelInfo:
    name: str  # the catalog name, HF id or folder the build started from
    source: str  # what vLLM loads (a local folder or a HF id)
    hf_id: str | None = None
    origin: str | None = None
    random_weights: bool = False
    random_weights_note: str | None = None
    quantization: str | None = None
    architecture: dict = field(default_factory=dict)


@dataclass
class GpuInfo:
    profile: str
    price_per_hour: float | None = None
    instance: str | None = None
    kind: str | None = None
    gpu: str | None = None
    gpus: int = 1
    memory_gib: float | None = None
    bandwidth_gbps: float | None = None


@dataclass
class LoraInfo:
    mode: str = "none"  # "none", "merge" or "serve"
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path
    max_lora_rank: int | None = None


@dataclass
class BuildRecord:
    """What one `tritonkit build` decided and wrote, as build.json holds it."""

    model_name: str  # the Triton model name (the folder in the repository)
    model: ModelInfo
    gpu: GpuInfo
    engine_args: dict  # exactly what 1/model.json holds
    plan: dict = field(default_factory=dict)
    lora: LoraInfo = field(default_factory=LoraInfo)
    runtime_env: dict[str, str] = field(default_factory=dict)  # environment the engine needs
    inputs: dict[str, str] = field(default_factory=dict)  # path or id -> sha256
    tritonkit_version: str = ""
    created_at: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, path: Path) -> BuildRecord:
        if not isinstance(data, dict):
            raise UsageError(f"{path} is not a build record (not a JSON object)", REBUILD)
        try:
            return cls(**_known(cls, data), model=ModelInfo(**_known(ModelInfo, data["model"])),
                       gpu=GpuInfo(**_known(GpuInfo, data["gpu"])),
                       lora=LoraInfo(**_known(LoraInfo, data.get("lora") or {})))
        except (KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{path} is not a complete build record ({type(err).__name__}: {err})", REBUILD) from None


def _known(cls, data: dict) -> dict:
    """The keys of `data` that are plain fields of `cls` (nested records are built by the caller)."""
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    nested = {"model", "gpu", "lora"} if cls is BuildRecord else set()
    return {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in nested}


def read_json(path: Path, what: str = "file") -> object:
    """A JSON file's content, or a one-line UsageError naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON ({err}): the file is corrupt or truncated", REBUILD) from None


def write_json(path: Path, obj) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def save(model_dir: Path, record: BuildRecord) -> None:
    write_json(Path(model_dir) / BUILD_FILE, record.to_json())


def load_dir(model_dir: Path) -> BuildRecord:
    path = Path(model_dir) / BUILD_FILE
    return BuildRecord.from_json(read_json(path, "build record"), path)


def load(repo_dir: str | os.PathLike, model_name: str | None = None) -> BuildRecord:
    """A build's record; with no name, the repository's only tritonkit-built model."""
    repo = Path(repo_dir).expanduser()
    if not repo.is_dir():
        raise UsageError(f"model repository {repo} not found", "run `tritonkit build` first")
    if model_name is not None:
        if not model_name or "/" in model_name or model_name.startswith("."):
            raise UsageError(f"{model_name!r} is not a model name", "use the name `tritonkit build` printed")
        if not (repo / model_name / BUILD_FILE).is_file():
            raise UsageError(f"no tritonkit build of model {model_name!r} in {repo}", "run `tritonkit build` first")
        return load_dir(repo / model_name)
    found = sorted(repo.glob(f"*/{BUILD_FILE}"))
    if len(found) != 1:
        names = ", ".join(p.parent.name for p in found)
        raise UsageError(f"{repo} holds no tritonkit build" if not found else f"{repo} holds several models ({names})",
                         "run `tritonkit build` first" if not found else "name the model with --model")
    return load_dir(found[0].parent)


def load_all(repo_dir: Path, models: list[str]) -> list[BuildRecord]:
    """The records of those models that `tritonkit build` wrote (a hand-written model has none)."""
    return [load_dir(Path(repo_dir) / m) for m in models if (Path(repo_dir) / m / BUILD_FILE).is_file()]


def engine_args(model_dir: Path) -> dict:
    """1/model.json: vLLM's engine arguments."""
    path = Path(model_dir) / "1" / ENGINE_FILE
    data = read_json(path, "engine arguments")
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object of engine arguments", REBUILD)
    return data


def multi_lora(model_dir: Path) -> dict[str, str]:
    """1/multi_lora.json: adapter name -> path; {} when the model serves no adapters."""
    path = Path(model_dir) / "1" / LORA_FILE
    if not path.is_file():
        return {}
    data = read_json(path, "LoRA adapter list")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"{path} must map adapter names to paths (a JSON object of strings)", REBUILD)
    return data

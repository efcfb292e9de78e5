"""A Triton model repository for the vLLM backend: resolve and plan (`prepare`), then write (`write`).

`prepare` checks everything that can be checked without writing: model, GPU, adapters, plan,
name and output path. `write` renders the templates, validates the rendered files, merges an
adapter when asked, and moves the finished model directory into place in one rename, so a
failed build leaves nothing behind. Its record (build.json) is `tritonkit.buildrecord`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tritonkit
from tritonkit import buildrecord, catalog, gpus, lora, planner
from tritonkit.buildrecord import BuildRecord, GpuInfo, LoraInfo, ModelInfo
from tritonkit.catalog import ModelSpec
from tritonkit.errors import TritonkitError, UsageError
from tritonkit.gpus import GpuProfile
from tritonkit.paths import shipped

TEMPLATES = shipped("model_repo_templates/vllm")
SCHEMA = shipped("tritonkit/data/model_json.schema.json")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DEFAULT_REPOSITORY = "model_repository"
SMALL_CPU_COUNT = 4  # at or below this many cores the cpu profile leaves vLLM's threads unpinned


@dataclass
class BuildSpec:
    """Everything a build decided, before anything is written."""
    name: str
    repository: Path
    model: ModelSpec
    gpu: GpuProfile
    plan: planner.Plan
    lora_mode: str
    adapters: list[lora.Adapter] = field(default_factory=list)
    max_lora_rank: int | None = None
    force: bool = False

    @property
    def target(self) -> Path:
        return self.repository / self.name

    @property
    def model_source(self) -> str:
        """What vLLM loads: the merged copy, a pre-quantised variant, or the base itself."""
        if self.lora_mode == "merge":
            return str(self.target / "1" / "merged")
        q = self.plan.quantization
        if q in ("awq", "gptq") and not self.model.prequantized:
            return self.model.quantized[q]
        return self.model.source

    def engine_args(self) -> dict:
        p = self.plan
        args = {"model": self.model_source, **json.loads((TEMPLATES / "model.json").read_text()),
                "dtype": p.dtype, "tensor_parallel_size": p.tensor_parallel_size,
                "max_model_len": p.max_model_len, "max_num_seqs": p.max_num_seqs}
        if not self.gpu.is_cpu:  # the CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE
            args["gpu_memory_utilization"] = p.gpu_memory_utilization
        elif (os.cpu_count() or 1) <= SMALL_CPU_COUNT:
            # On a small machine, compiling the model (inductor) is most of a start: measured on 2
            # cores, engine init 52 s compiled vs 2.6 s eager, every start, for the same tiny model.
            args["enforce_eager"] = True
            # The worker inside the engine-core process, not a third process that imports vLLM again
            # and polls beside it: measured on 2 cores, tiny model, chat preset at 8 users,
            # 3.7-4.1 req/s against 2.4-2.5, and a start 27 s instead of 39-47 s.
            args["distributed_executor_backend"] = "uni"
        if p.quantization == "fp8":  # AWQ/GPTQ checkpoints say so in their own config.json
            args["quantization"] = "fp8"
        if self.lora_mode == "serve":
            args.update(enable_lora=True, max_lora_rank=self.max_lora_rank,
                        max_loras=len(self.adapters))
        return args

    def runtime_env(self) -> dict[str, str]:
        if self.plan.cpu_kv_cache_space_gib is None:
            return {}
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.plan.cpu_kv_cache_space_gib)}
        if (os.cpu_count() or 1) <= SMALL_CPU_COUNT:
            # vLLM pins its worker to all cores but one by default. On a small machine that leaves
            # one core to the engine's scheduler, Triton, the backend and the client, and streamed
            # responses then reach clients in one burst at the end (measured on 2 cores: first
            # token after 1.1 s instead of 30 ms). Unpinned, decoding is slower but streams.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # vLLM's CPU platform turns "uni" back into "mp" without it
        return env


# ---------------------------------------------------------------- prepare: decide, write nothing

def prepare(model: str, gpu: str, *, gpus_count: int | None = None, adapters: tuple[str, ...] = (),
            lora_mode: str | None = None, name: str | None = None,
            repository: str | os.PathLike = DEFAULT_REPOSITORY, choices: planner.Choices = planner.Choices(),
            max_lora_rank: int | None = None, price: float | None = None,
            force: bool = False, random_weights: bool = False) -> BuildSpec:
    spec = catalog.resolve(model)
    if random_weights:
        from tritonkit import randomweights

        if choices.quantization in ("awq", "gptq"):
            raise UsageError(f"--random-weights builds unquantised weights; --quantization {choices.quantization} "
                             "serves a pre-quantised checkpoint", "use --quantization fp8 (quantised on load), or leave it out")
        spec = randomweights.random_spec(spec)
    profile = gpus.get_profile(gpu, gpus_count, price)
    found = [lora.inspect(*lora.parse_spec(a)) for a in adapters]
    for adapter in found:
        lora.check(adapter, spec, max_lora_rank)
    quant = spec.prequantized or choices.quantization
    mode = lora.choose_mode(found, lora_mode, spec, quant)
    rank = lora.served_rank(found, max_lora_rank) if mode == "serve" else max_lora_rank
    if mode == "serve":
        choices = dataclasses.replace(choices, lora_slots=len(found), lora_rank=rank)
    plan = planner.plan(spec, profile, choices, gpus.others(profile))
    name = check_name(name or spec.name, given=name is not None)
    repo = Path(repository).expanduser().resolve()
    _check_writable(repo, name, force)
    return BuildSpec(name=name, repository=repo, model=spec, gpu=profile, plan=plan,
                     lora_mode=mode, adapters=found, max_lora_rank=rank, force=force)


def check_name(name: str, given: bool = True) -> str:
    if "/" in name or "\\" in name or os.sep in name:
        raise UsageError(f"model name {name!r} must not contain path separators")
    if not NAME.match(name):
        raise UsageError(f"model name {name!r} may only use letters, digits, '_', '.' and '-' "
                         "(and may not start with '.' or '-')",
                         None if given else "choose one with --name")
    return name


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _check_writable(repo: Path, name: str, force: bool) -> None:
    anchor = _existing_ancestor(repo)
    if not anchor.is_dir():
        raise UsageError(f"output path {repo} is not writable: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"output path {repo} is not writable (no write permission on {anchor})")
    if (repo / name).exists() and not force:
        raise UsageError(f"{repo / name} already exists", "pass --force to replace it")


# ---------------------------------------------------------------- rendering and validation

def render_config_pbtxt() -> str:
    template = string.Template((TEMPLATES / "config.pbtxt").read_text())
    return template.substitute(tritonkit_version=tritonkit.__version__)


def validate_config_pbtxt(text: str) -> None:
    """Parse into Triton's ModelConfig and check what the vLLM backend needs."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        cfg = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as err:
        raise TritonkitError(f"config.pbtxt does not parse as a Triton ModelConfig: {err}") from None
    problems = []
    if cfg.backend != "vllm":
        problems.append(f'backend is "{cfg.backend}", not "vllm"')
    if not cfg.instance_group or any(g.kind != mc.ModelInstanceGroup.KIND_MODEL for g in cfg.instance_group):
        problems.append("the instance group must be KIND_MODEL")
    if cfg.input or cfg.output or cfg.max_batch_size:
        problems.append("inputs, outputs and max_batch_size must be left to the backend's auto-complete")
    metrics = cfg.parameters.get("REPORT_CUSTOM_METRICS")
    if metrics is None or metrics.string_value != "true":
        problems.append('parameter REPORT_CUSTOM_METRICS must be "true"')
    if problems:
        raise TritonkitError("config.pbtxt is not a valid vLLM model config: " + "; ".join(problems))


def validate_model_json(args: dict) -> None:
    """The package's JSON Schema, then the installed vLLM's engine arguments where it is importable."""
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(map(str, err.absolute_path)) or "(top level)"
        raise TritonkitError(f"model.json is invalid at {where}: {err.message}") from None
    known = vllm_engine_arg_names()
    if known is not None:
        unknown = sorted(set(args) - known)
        if unknown:
            raise TritonkitError(f"model.json has keys the installed vLLM does not accept: {', '.join(unknown)}")


def vllm_engine_arg_names() -> set[str] | None:
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except Exception:  # a vLLM that cannot load here (other platform): the schema check stands
        return None
    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


# ---------------------------------------------------------------- write: all or nothing

def write(build: BuildSpec, say: Callable[[str], None] = lambda m: None) -> Path:
    """Write the model directory atomically; return its path. A --random-weights build first
    materialises (or reuses) the random model folder that model.json points at."""
    args = build.engine_args()
    validate_model_json(args)
    config = render_config_pbtxt()
    validate_config_pbtxt(config)
    _check_writable(build.repository, build.name, build.force)
    anchor = build.repository if build.repository.is_dir() else _existing_ancestor(build.repository)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".tritonkit-staging-{build.name}-", dir=anchor))
    except OSError as err:
        raise UsageError(f"output path {build.repository} is not writable: {err.strerror}") from None
    try:
        spec = catalog.ensure_available(build.model)
        if spec.random_weights and not spec.builtin:
            from tritonkit import randomweights

            randomweights.build_random_model(spec, build.plan.dtype, say=say)
        model_dir = staging / build.name
        (model_dir / "1").mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(config)
        _write_json(model_dir / "1" / buildrecord.ENGINE_FILE, args)
        if build.lora_mode == "serve":
            _write_json(model_dir / "1" / buildrecord.LORA_FILE, {a.name: str(a.path) for a in build.adapters})
        if build.lora_mode == "merge":
            lora.merge(spec.source, build.adapters[0], model_dir / "1" / "merged")
        buildrecord.save(model_dir, build_record(build, spec, args))
        # Read back what is on disk: the files Triton will load are the ones checked.
        validate_config_pbtxt((model_dir / "config.pbtxt").read_text())
        validate_model_json(json.loads((model_dir / "1" / "model.json").read_text()))
        _commit(model_dir, build.repository, build.target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return build.target


def _commit(model_dir: Path, repo: Path, target: Path, staging: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():  # prepare() refused this unless --force
        old = staging / ".replaced"
        os.rename(target, old)
    try:
        os.rename(model_dir, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- build.json

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _inputs(spec: ModelSpec, adapters: list[lora.Adapter]) -> dict[str, str]:
    """path or id -> sha256 of what the build read (a catalog model: of its catalog entry)."""
    inputs = {}
    config = spec.config_path or (Path(spec.source) / "config.json" if spec.is_local else None)
    if config is not None and config.exists():
        inputs[str(config)] = _sha256(config)
    else:
        entry = json.dumps(dataclasses.asdict(spec.architecture), sort_keys=True).encode()
        inputs[spec.source] = hashlib.sha256(entry).hexdigest()
    for adapter in adapters:
        for f in adapter.files():
            inputs[str(f)] = _sha256(f)
    return inputs


def build_record(build: BuildSpec, spec: ModelSpec, args: dict) -> BuildRecord:
    g = build.gpu
    return BuildRecord(
        tritonkit_version=tritonkit.__version__,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model_name=build.name,
        model=ModelInfo(name=spec.name, hf_id=spec.hf_id, source=spec.source, origin=spec.origin,
                        random_weights=spec.random_weights,
                        random_weights_note=_random_note(spec) if spec.random_weights else None,
                        quantization=build.plan.quantization, architecture=dataclasses.asdict(spec.architecture)),
        gpu=GpuInfo(profile=g.name, kind=g.kind, gpu=g.gpu, gpus=g.gpus, price_per_hour=g.price_per_hour,
                    instance=g.instance, memory_gib=round(g.memory_mib / 1024, 3), bandwidth_gbps=g.bandwidth_gbps),
        plan=build.plan.to_dict(),
        engine_args=args,
        lora=LoraInfo(mode=build.lora_mode, adapters={a.name: str(a.path) for a in build.adapters},
                      max_lora_rank=build.max_lora_rank),
        runtime_env=build.runtime_env(),
        inputs=_inputs(spec, build.adapters),
    )


def _random_note(spec: ModelSpec) -> str:
    from tritonkit.randomweights import WARNING

    return WARNING

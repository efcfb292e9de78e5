"""LoRA adapters: read and check PEFT folders against the base, merge one, or serve several.

Checks read only adapter_config.json and the safetensors header, so a wrong adapter is refused
in milliseconds and before anything is written.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonkit.catalog import RANDOM_WEIGHTS_MARKER, Architecture, ModelSpec
from tritonkit.weightfiles import safetensors_header
from tritonkit.errors import TritonkitError, UsageError

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's allowed max_lora_rank values
SERVE_MODEL_TYPES = ("llama", "mistral", "qwen2")           # vLLM serves LoRA on these natively
LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")
LAYER = re.compile(r"(?:^|\.)layers\.(?P<index>\d+)\.(?P<sub>.+)$")


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path                         # absolute
    rank: int
    target_modules: tuple[str, ...] | str
    base_model: str | None
    use_dora: bool
    weights_file: Path
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape

    def files(self) -> list[Path]:
        return [self.path / "adapter_config.json", self.weights_file]


def parse_spec(text: str) -> tuple[str, Path]:
    """`NAME=PATH` or `PATH` (the folder's name becomes the adapter's name)."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).expanduser().resolve().name, text
    if not NAME.match(name):
        raise UsageError(f"adapter name {name!r} may only use letters, digits, '_', '.' and '-'",
                         "give one with --adapter NAME=PATH")
    return name, Path(path).expanduser().resolve()


def inspect(name: str, path: Path) -> Adapter:
    if not path.is_dir():
        raise UsageError(f"adapter folder {path} not found")
    config_path = path / "adapter_config.json"
    if not config_path.exists():
        raise UsageError(f"{path} is not a PEFT adapter: it has no adapter_config.json")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        raise UsageError(f"{config_path} is not a JSON object")
    if cfg.get("peft_type") != "LORA" or not isinstance(cfg.get("r"), int) or not cfg.get("target_modules"):
        raise UsageError(f"{path} is not a PEFT LoRA adapter: adapter_config.json needs "
                         "peft_type LORA, an integer r and target_modules")
    weights = path / "adapter_model.safetensors"
    if weights.exists():
        try:
            shapes = {k: tuple(v["shape"]) for k, v in safetensors_header(weights).items()}
        except (OSError, ValueError, KeyError):
            raise UsageError(f"{weights} is not a readable safetensors file") from None
    elif (path / "adapter_model.bin").exists():
        import torch

        weights = path / "adapter_model.bin"
        shapes = {k: tuple(v.shape) for k, v in
                  torch.load(weights, map_location="cpu", weights_only=True).items()}
    else:
        raise UsageError(f"{path} is not a PEFT adapter: no adapter_model.safetensors or .bin")
    targets = cfg["target_modules"]
    return Adapter(name=name, path=path, rank=cfg["r"],
                   target_modules=targets if isinstance(targets, str) else tuple(sorted(targets)),
                   base_model=cfg.get("base_model_name_or_path"), use_dora=bool(cfg.get("use_dora")),
                   weights_file=weights, shapes=shapes)


def module_shapes(a: Architecture) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each linear layer inside one decoder layer."""
    h, inter, d = a.hidden_size, a.intermediate_size, a.head_dim
    q, kv = a.num_attention_heads * d, a.num_key_value_heads * d
    if a.model_type == "gpt_neox":
        return {"attention.query_key_value": (3 * q, h), "attention.dense": (h, q),
                "mlp.dense_h_to_4h": (inter, h), "mlp.dense_4h_to_h": (h, inter)}
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, q), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
            "mlp.down_proj": (h, inter)}


def check(adapter: Adapter, spec: ModelSpec, max_lora_rank: int | None = None) -> None:
    """Refuse an adapter that was trained for another base, or that the flags do not allow."""
    if not _same_base(adapter.base_model, spec):
        raise UsageError(
            f"adapter {adapter.name} was trained on {adapter.base_model}, not on {spec.name}"
            f"{f' ({spec.hf_id})' if spec.hf_id else ''}",
            "pass the base it was trained on as MODEL")
    if max_lora_rank is not None and adapter.rank > max_lora_rank:
        raise UsageError(f"adapter {adapter.name} has rank {adapter.rank}, above --max-lora-rank "
                         f"{max_lora_rank}")
    arch = spec.architecture
    expected = module_shapes(arch)
    short = {sub.split(".")[-1] for sub in expected}
    targets = adapter.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        if not any(re.fullmatch(targets, f"layers.0.{sub}") or re.search(targets, sub) for sub in expected):
            raise UsageError(f"adapter {adapter.name} targets {targets!r}, which matches no module of "
                             f"{spec.name} ({arch.model_type})")
    elif isinstance(targets, tuple):
        missing = [t for t in targets if t not in short and t not in expected]
        if missing:
            raise UsageError(f"adapter {adapter.name} targets {', '.join(missing)}, not in "
                             f"{spec.name} ({arch.model_type}: {', '.join(sorted(short))})")
    for tensor, shape in adapter.shapes.items():
        _check_tensor(adapter, spec, tensor, shape, expected)


def _check_tensor(adapter: Adapter, spec: ModelSpec, tensor: str, shape: tuple[int, ...],
                  expected: dict[str, tuple[int, int]]) -> None:
    m = LORA_TENSOR.match(tensor)
    layer = LAYER.search(m["module"]) if m else None
    if not m or not layer or layer["sub"] not in expected:
        raise UsageError(f"adapter {adapter.name} holds {tensor}, which is not a LoRA matrix of a "
                         f"{spec.architecture.model_type} decoder layer")
    if int(layer["index"]) >= spec.architecture.num_hidden_layers:
        raise UsageError(f"adapter {adapter.name} has layer {layer['index']}; {spec.name} has "
                         f"{spec.architecture.num_hidden_layers} layers: it was trained for another base")
    out_f, in_f = expected[layer["sub"]]
    want = (adapter.rank, in_f) if m["ab"] == "A" else (out_f, adapter.rank)
    # rank_pattern lets a module use another rank: check only the base-side dimension then.
    ok = shape == want or (len(shape) == 2 and (shape[1] == in_f if m["ab"] == "A" else shape[0] == out_f))
    if not ok:
        raise UsageError(f"adapter {adapter.name} does not fit {spec.name}: {tensor} has shape "
                         f"{list(shape)}, {spec.name} needs {list(want)}",
                         "it was trained for another base model")


def _same_base(base: str | None, spec: ModelSpec) -> bool:
    if not base:
        return True  # PEFT left it empty: the shapes are the only evidence
    names = {n.lower() for n in (spec.name, spec.hf_id, spec.source) if n}
    if base.lower() in names:
        return True
    path = Path(base).expanduser()
    return path.is_absolute() and spec.is_local and path.resolve() == Path(spec.source).resolve()


# ---------------------------------------------------------------- merge or serve

def choose_mode(adapters: list[Adapter], requested: str | None, spec: ModelSpec,
                quantization: str | None) -> str:
    if requested not in (None, "merge", "serve"):
        raise UsageError(f"--lora-mode must be merge or serve, got {requested!r}")
    if not adapters:
        if requested:
            raise UsageError(f"--lora-mode {requested} needs at least one --adapter")
        return "none"
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise UsageError(f"adapter names must be unique, got {', '.join(names)}")
    mode = requested or ("merge" if len(adapters) == 1 else "serve")
    if mode == "merge":
        if len(adapters) > 1:
            raise UsageError(f"--lora-mode merge takes one adapter, got {len(adapters)}",
                             "use --lora-mode serve to serve several")
        if quantization in ("awq", "gptq"):
            raise UsageError(f"cannot merge an adapter into {quantization}-quantised weights",
                             "use --lora-mode serve, or merge into the unquantised base")
    else:
        if spec.architecture.model_type not in SERVE_MODEL_TYPES:
            raise UsageError(f"tritonkit serves LoRA adapters only on {', '.join(SERVE_MODEL_TYPES)} "
                             f"models, not {spec.architecture.model_type}", "use --lora-mode merge")
        dora = [a.name for a in adapters if a.use_dora]
        if dora:
            raise UsageError(f"vLLM cannot serve DoRA adapters ({', '.join(dora)})", "use --lora-mode merge")
    return mode


def served_rank(adapters: list[Adapter], max_lora_rank: int | None) -> int:
    """vLLM's max_lora_rank: the flag's value, else the smallest allowed one that fits all."""
    if max_lora_rank is not None:
        if max_lora_rank not in VLLM_LORA_RANKS:
            raise UsageError(f"--max-lora-rank {max_lora_rank} is not one vLLM accepts",
                             f"choose one of {', '.join(map(str, VLLM_LORA_RANKS))}")
        return max_lora_rank
    top = max(a.rank for a in adapters)
    for rank in VLLM_LORA_RANKS:
        if rank >= top:
            return rank
    raise UsageError(f"adapter rank {top} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}",
                     "use --lora-mode merge")


def merge(base_source: str, adapter: Adapter, out: Path) -> None:
    """Merge with peft (merge_and_unload) and write safetensors and tokenizer files to `out`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        base = AutoModelForCausalLM.from_pretrained(base_source, dtype="auto")
    except (OSError, ValueError) as err:  # gated, offline, or not a causal LM
        raise TritonkitError(f"cannot load the base model {base_source} to merge into: "
                             f"{str(err).splitlines()[0]}") from None
    merged = PeftModel.from_pretrained(base, str(adapter.path)).merge_and_unload()
    from tritonkit.quiet import no_progress_bars

    with no_progress_bars():
        merged.save_pretrained(out, safe_serialization=True)
    # A fine-tune that added tokens ships its tokenizer with the adapter.
    has_tokenizer = (adapter.path / "tokenizer_config.json").exists()
    AutoTokenizer.from_pretrained(str(adapter.path) if has_tokenizer else base_source).save_pretrained(out)
    marker = Path(base_source) / RANDOM_WEIGHTS_MARKER
    if marker.exists():
        shutil.copy2(marker, out / RANDOM_WEIGHTS_MARKER)

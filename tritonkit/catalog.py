"""Models: the shipped catalog (+ a user file), local folders and Hugging Face ids -> ModelSpec.

Everything the planner needs is read here, offline: from the catalog's numbers, or from a
config.json in a local folder or in the Hugging Face cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tritonkit.errors import UsageError
from tritonkit.names import nearest
from tritonkit.paths import home, shipped
from tritonkit.weightfiles import count_parameters

PACKAGE_CATALOG = shipped("tritonkit/data/models.json")
RANDOM_WEIGHTS_MARKER = "TRITONKIT_RANDOM_WEIGHTS.json"
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    num_parameters: int
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str                      # catalog name, or the folder / repo name
    hf_id: str | None
    source: str                    # what vLLM loads: an HF id or an absolute local path
    architecture: Architecture
    origin: str                    # catalog | user-catalog | builtin | local | hf-cache
    random_weights: bool = False
    quantized: dict[str, str] = field(default_factory=dict)   # method -> pre-quantised HF id
    prequantized: str | None = None                           # this checkpoint's own method
    config_path: Path | None = None

    @property
    def builtin(self) -> bool:
        return self.origin == "builtin"

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()


# ---------------------------------------------------------------- catalog files

def user_catalog_path() -> Path:
    return home() / "models.json"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} must hold a JSON object")
    return data


def load_catalog() -> dict[str, dict]:
    """name -> entry, the shipped file first, then the user's file overriding or adding."""
    entries = {n: {**e, "origin": "builtin" if e.get("builtin") else "catalog"}
               for n, e in _read_json(PACKAGE_CATALOG, "catalog")["models"].items()}
    user = user_catalog_path()
    if user.exists():
        models = _read_json(user, "user catalog").get("models")
        if not isinstance(models, dict):
            raise UsageError(f"user catalog {user} needs a \"models\" object")
        for name, entry in models.items():
            entries[name] = {**entry, "origin": "user-catalog"}
    for name, entry in entries.items():
        _architecture_from_entry(name, entry)  # fail early, naming the entry
    return entries


def _architecture_from_entry(name: str, entry: dict) -> Architecture:
    arch = entry.get("architecture")
    try:
        return Architecture(**arch)
    except TypeError as err:
        raise UsageError(f"catalog entry {name!r} has a bad architecture: {err}") from None


def _spec_from_entry(name: str, entry: dict) -> ModelSpec:
    arch = _architecture_from_entry(name, entry)
    if entry.get("builtin"):
        folder = builtin_dir(name)
        if (folder / "config.json").exists():  # a built folder is the truth (e.g. its vocab)
            arch, _ = architecture_from_config(folder / "config.json")
        return ModelSpec(name=name, hf_id=None, source=str(folder), architecture=arch,
                         origin="builtin", random_weights=True)
    return ModelSpec(name=name, hf_id=entry["hf_id"], source=entry["hf_id"], architecture=arch,
                     origin=entry["origin"], quantized=dict(entry.get("quantized") or {}))


def builtin_dir(name: str) -> Path:
    return home() / "models" / name


def ensure_available(spec: ModelSpec) -> ModelSpec:
    """Make a built-in model's folder on first use (reused afterwards); others are left as is."""
    if not spec.builtin:
        return spec
    folder = Path(spec.source)
    if not (folder / "config.json").exists():
        from tritonkit.tinymodel import build_tiny_llama

        folder.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_llama(folder)
    return _spec_from_entry(spec.name, load_catalog()[spec.name])


# ---------------------------------------------------------------- resolving MODEL

def resolve(model: str) -> ModelSpec:
    """MODEL as the user typed it: a local folder, a catalog name, or a Hugging Face id."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"model {model!r} is a file; give a model folder holding config.json")
        return _spec_from_folder(path.resolve(), origin="local")
    catalog = load_catalog()
    by_name = {n.lower(): n for n in catalog}
    if model.lower() in by_name:
        name = by_name[model.lower()]
        return _spec_from_entry(name, catalog[name])
    for name, entry in catalog.items():
        if (entry.get("hf_id") or "").lower() == model.lower():
            return _spec_from_entry(name, entry)
    if HF_ID.match(model):
        cached = _hf_cached_config(model)
        if cached is not None:
            arch, prequantized = architecture_from_config(cached)
            return ModelSpec(name=model.split("/")[-1], hf_id=model, source=model,
                             architecture=arch, origin="hf-cache", prequantized=prequantized,
                             config_path=cached)
    if model.startswith((".", "/", "~")):
        raise UsageError(f"model folder {model} does not exist")
    near = nearest(model, list(catalog) + [e["hf_id"] for e in catalog.values() if e.get("hf_id")])
    hint = (f"did you mean {', '.join(near)}?" if near else "see `tritonkit models`")
    if HF_ID.match(model):
        hint += (f"; or fetch its config first: `huggingface-cli download {model} config.json`,"
                 f" or add it to {user_catalog_path()}")
    raise UsageError(f"unknown model {model!r}: not in the catalog, not a local folder, "
                     f"and no config.json for it in the Hugging Face cache", hint)


def _hf_cached_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found) if isinstance(found, str) else None


def _spec_from_folder(folder: Path, origin: str) -> ModelSpec:
    config = folder / "config.json"
    if not config.exists():
        raise UsageError(f"{folder} has no config.json; a Hugging Face model folder needs one")
    arch, prequantized = architecture_from_config(config)
    if prequantized is None:
        counted = count_parameters(folder)
        if counted:
            arch = Architecture(**{**arch.__dict__, "num_parameters": counted})
    return ModelSpec(name=folder.name, hf_id=None, source=str(folder), architecture=arch,
                     origin=origin, random_weights=(folder / RANDOM_WEIGHTS_MARKER).exists(),
                     prequantized=prequantized, config_path=config)


# ---------------------------------------------------------------- config.json

_KEYS = {  # our name -> the names different model families use in config.json
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "vocab_size": ("vocab_size",),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "max_sequence_length",
                                "seq_length"),
}


def architecture_from_config(path: Path) -> tuple[Architecture, str | None]:
    """The planner's numbers from a config.json, and its quantisation method if pre-quantised."""
    cfg = _read_json(path, "model config")
    cfg = {**cfg.get("text_config", {}), **cfg} if "text_config" in cfg else cfg

    def need(ours: str) -> int:
        for key in _KEYS[ours]:
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
        raise UsageError(f"{path} has no usable {ours} (looked for {', '.join(_KEYS[ours])})")

    layers, hidden = need("num_hidden_layers"), need("hidden_size")
    heads, vocab = need("num_attention_heads"), need("vocab_size")
    context = need("max_position_embeddings")
    kv_heads = cfg.get("num_key_value_heads") or cfg.get("num_kv_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    intermediate = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden
    model_type = str(cfg.get("model_type") or "unknown")
    tied = bool(cfg.get("tie_word_embeddings", False))
    arch = Architecture(model_type, layers, hidden, intermediate, heads, kv_heads, head_dim,
                        vocab, context, 0, tied)
    arch = Architecture(**{**arch.__dict__, "num_parameters": estimate_parameters(arch)})
    quant = cfg.get("quantization_config") or {}
    prequantized = quant.get("quant_method") if isinstance(quant, dict) else None
    return arch, prequantized


def estimate_parameters(a: Architecture) -> int:
    """Weights of a decoder from its numbers (exact for the catalog's families)."""
    h, d, inter = a.hidden_size, a.head_dim, a.intermediate_size
    q_dim, kv_dim = a.num_attention_heads * d, a.num_key_value_heads * d
    if a.model_type == "gpt_neox":  # fused QKV with biases, 2-matrix MLP, LayerNorms with bias
        per_layer = 3 * h * h + 3 * h + h * h + h + 2 * h * inter + inter + h + 4 * h
        final_norm = 2 * h
    else:  # Llama family: q, k, v, o, gate, up, down, two RMSNorms
        per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * inter + 2 * h
        if a.model_type == "qwen2":  # Qwen2 has biases on q, k and v
            per_layer += q_dim + 2 * kv_dim
        final_norm = h
    embeddings = a.vocab_size * h * (1 if a.tie_word_embeddings else 2)
    return a.num_hidden_layers * per_layer + embeddings + final_norm


def describe(spec: ModelSpec) -> str:
    return spec.name if spec.hf_id is None else f"{spec.name} ({spec.hf_id})"

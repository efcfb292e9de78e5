"""A model's exact architecture with random weights: capacity and cost before the real weights.

`tritonkit build MODEL --random-weights` writes, into `home()/models/<name>-random/`, a Hugging Face
model folder that vLLM and transformers load like the real one:

- config.json: the architecture's numbers (the catalog's, or a local/cached config.json verbatim),
- model-0000k-of-0000n.safetensors + index: every weight of that architecture, in the serving
  dtype, filled with random numbers (normal, std 0.02; norms 1, biases 0). The architecture is
  instantiated on the meta device (no memory), then each shard is filled and written in turn, so
  a 7B model (~13.5 GB in bf16) never needs more than one shard (<= 2 GiB) in memory,
- a byte-level BPE tokenizer trained on tritonkit's shipped corpus (as tritonkit.tinymodel does),
  padded with filler tokens to exactly the model's vocab_size: every id the tokenizer produces is
  an embedding row, and every id the random model samples decodes to text,
- TRITONKIT_RANDOM_WEIGHTS.json: says the weights are random, and how they were made.

The outputs are meaningless text. With the output length fixed (max_tokens + ignore_eos, as the
perf presets do) the work per request -- and so throughput and latency -- is the real model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from tritonkit.catalog import RANDOM_WEIGHTS_MARKER, Architecture, ModelSpec
from tritonkit.errors import TritonkitError, UsageError
from tritonkit.paths import home

SHARD_BYTES = 2 * 2**30
INIT_STD = 0.02
FAMILIES = ("llama", "mistral", "qwen2", "gpt_neox")
MARKER_VERSION = 1
WARNING = ("RANDOM WEIGHTS: this model's weights are random numbers, not the trained model's; "
           "its text is meaningless. Use it to measure capacity and cost (fixed output length: "
           "max_tokens + ignore_eos), never for quality.")


def random_dir(name: str) -> Path:
    return home() / "models" / f"{name}-random"


# ---------------------------------------------------------------- the configuration

def hf_config_dict(spec: ModelSpec, vocab_size: int | None = None) -> dict:
    """config.json for the architecture: a local/cached config.json as it is, else the catalog's numbers."""
    if spec.config_path is not None and Path(spec.config_path).is_file():
        cfg = json.loads(Path(spec.config_path).read_text())
        cfg.pop("quantization_config", None)
        return cfg
    a = spec.architecture
    if a.model_type not in FAMILIES:
        raise UsageError(f"--random-weights does not know the {a.model_type!r} family",
                         f"it builds {', '.join(FAMILIES)} models")
    cfg: dict = {"model_type": a.model_type, "num_hidden_layers": a.num_hidden_layers,
                 "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
                 "num_attention_heads": a.num_attention_heads, "vocab_size": a.vocab_size,
                 "max_position_embeddings": a.max_position_embeddings,
                 "tie_word_embeddings": a.tie_word_embeddings}
    if a.model_type == "gpt_neox":
        if a.head_dim * a.num_attention_heads != a.hidden_size:
            raise UsageError(f"{spec.name}: GPT-NeoX needs head_dim × heads = hidden_size")
        cfg["architectures"] = ["GPTNeoXForCausalLM"]
    else:
        cfg["num_key_value_heads"] = a.num_key_value_heads
        cfg["head_dim"] = a.head_dim
        cfg["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                 "qwen2": "Qwen2ForCausalLM"}[a.model_type]]
    return cfg


def _config(cfg: dict, dtype: str, tokenizer):
    from transformers import AutoConfig

    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model_type = cfg.pop("model_type")
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(model_type, **{**cfg, **special})
    # What the weights are stored in: `dtype` since transformers 5, `torch_dtype` before.
    setattr(config, "dtype" if _transformers_major() >= 5 else "torch_dtype", dtype)
    return config


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def check_architecture(config, arch: Architecture) -> list[str]:
    """The catalog's numbers that the written config.json does not match (empty: all equal)."""
    text = getattr(config, "text_config", None) or config
    got = {"num_hidden_layers": text.num_hidden_layers, "hidden_size": text.hidden_size,
           "intermediate_size": text.intermediate_size, "num_attention_heads": text.num_attention_heads,
           "vocab_size": text.vocab_size, "max_position_embeddings": text.max_position_embeddings,
           "num_key_value_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
           "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
           "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False))}
    want = dataclasses.asdict(arch)
    return [f"{k}: config {v}, catalog {want[k]}" for k, v in got.items() if want.get(k) != v]


# ---------------------------------------------------------------- the tokenizer

def padded_tokenizer(vocab_size: int):
    """tinymodel's byte-level BPE (trained on the shipped corpus), its vocabulary padded with
    never-produced filler tokens to exactly `vocab_size`, so that len(tokenizer) == vocab_size."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tritonkit.tinymodel import train_tokenizer

    trained = train_tokenizer(vocab_size=vocab_size)
    if len(trained) > vocab_size:
        raise UsageError(f"vocab_size {vocab_size} is smaller than a byte-level tokenizer ({len(trained)} tokens)")
    data = json.loads(trained.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"<|filler_{i}|>"] = i
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>")


# ---------------------------------------------------------------- the weights

def _meta_parameters(config, dtype: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight a checkpoint of this config holds, without allocating any."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        kw = "dtype" if _transformers_major() >= 5 else "torch_dtype"
        model = AutoModelForCausalLM.from_config(config, **{kw: getattr(torch, dtype)})
    # named_parameters drops a tied lm_head (it is the embedding), as save_pretrained does.
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def _fill_kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return "zeros"
    if "norm" in name.lower() and leaf == "weight":
        return "ones"
    return "normal"


def _shards(params: list[tuple[str, tuple[int, ...]]], bytes_per: int, limit: int) -> list[list[tuple[str, tuple]]]:
    shards, current, size = [], [], 0
    for name, shape in params:
        n = bytes_per
        for d in shape:
            n *= d
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    if current:
        shards.append(current)
    return shards


def _device(requested: str):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def write_weights(config, out: Path, dtype: str, seed: int = 0, device: str = "auto",
                  shard_bytes: int = SHARD_BYTES, say: Callable[[str], None] = lambda m: None) -> int:
    """Write random safetensors shards + index for `config` into `out`; return the parameter count."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    bytes_per = torch.tensor([], dtype=torch_dtype).element_size()
    params = _meta_parameters(config, dtype)
    shards = _shards(params, bytes_per, shard_bytes)
    dev = _device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    weight_map, total_bytes, total_params = {}, 0, 0
    n = len(shards)
    started = time.monotonic()
    for i, shard in enumerate(shards, start=1):
        fname = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            kind = _fill_kind(name)
            if kind == "zeros":
                t = torch.zeros(shape, dtype=torch_dtype)
            elif kind == "ones":
                t = torch.ones(shape, dtype=torch_dtype)
            else:
                t = torch.empty(shape, dtype=torch_dtype, device=dev).normal_(0.0, INIT_STD, generator=gen).cpu()
            tensors[name] = t.contiguous()
            weight_map[name] = fname
            total_params += t.numel()
            total_bytes += t.numel() * bytes_per
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors  # one shard in memory at a time
        say(f"  wrote {fname} ({i}/{n}, {total_bytes / 1e9:.2f} GB, {time.monotonic() - started:.0f} s)")
    if n > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total_params


# ---------------------------------------------------------------- the folder

def _marker(spec: ModelSpec, dtype: str, seed: int, num_parameters: int, tokenizer_size: int,
            seconds: float) -> dict:
    return {
        "random_weights": True,
        "warning": WARNING,
        "marker_version": MARKER_VERSION,
        "model": spec.name,
        "hf_id": spec.hf_id,
        "architecture_from": str(spec.config_path) if spec.config_path else f"tritonkit catalog ({spec.origin})",
        "architecture": dataclasses.asdict(spec.architecture),
        "dtype": dtype,
        "seed": seed,
        "init": f"normal(0, {INIT_STD}); norm weights 1, biases 0",
        "num_parameters": num_parameters,
        "tokenizer": f"byte-level BPE trained on tritonkit's corpus, padded with filler tokens to "
                     f"{tokenizer_size} (model vocab_size {spec.architecture.vocab_size})",
        "build_seconds": round(seconds, 1),
    }


def existing(folder: Path, spec: ModelSpec, dtype: str, seed: int) -> bool:
    """A finished random folder for this very architecture, dtype and seed is reused."""
    marker = folder / RANDOM_WEIGHTS_MARKER
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return (info.get("marker_version") == MARKER_VERSION and info.get("dtype") == dtype
            and info.get("seed") == seed and info.get("architecture") == dataclasses.asdict(spec.architecture))


def build_random_model(spec: ModelSpec, dtype: str, out_dir: Path | None = None, seed: int = 0,
                       device: str = "auto", shard_bytes: int = SHARD_BYTES,
                       say: Callable[[str], None] = lambda m: None) -> Path:
    """Materialise `spec`'s architecture with random weights (see the module docstring); return the folder.

    Written beside the target and renamed into place, so an interrupted build leaves nothing half-done.
    """
    folder = Path(out_dir) if out_dir else random_dir(spec.name)
    if existing(folder, spec, dtype, seed):
        say(f"random weights: reusing {folder}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    need = spec.architecture.num_parameters * {"float32": 4}.get(dtype, 2)
    if need > free:
        raise TritonkitError(f"random weights for {spec.name} need {need / 1e9:.1f} GB; "
                             f"{folder.parent} has {free / 1e9:.1f} GB free",
                             "free disk space, or set TRITONKIT_HOME to a larger disk")
    started = time.monotonic()
    say(f"random weights: {spec.name}, {spec.architecture.num_parameters / 1e9:.2f}B parameters in {dtype} "
        f"(~{need / 1e9:.1f} GB) -> {folder}")
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as tmp:
        staged = Path(tmp) / folder.name
        staged.mkdir()
        tokenizer = padded_tokenizer(spec.architecture.vocab_size)
        config = _config(hf_config_dict(spec), dtype, tokenizer)
        if spec.config_path is None:
            wrong = check_architecture(config, spec.architecture)
            if wrong:
                raise TritonkitError(f"the random {spec.name} would not match its catalog entry: {'; '.join(wrong)}")
        config.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        count = write_weights(config, staged, dtype, seed, device, shard_bytes, say)
        seconds = time.monotonic() - started
        marker = _marker(spec, dtype, seed, count, len(tokenizer), seconds)
        (staged / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        (staged / "README.md").write_text(f"# {spec.name} with random weights\n\n{WARNING}\n\n"
                                          f"Made by `tritonkit build --random-weights`; see {RANDOM_WEIGHTS_MARKER}.\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staged, folder)
    say(f"random weights: {count:,} parameters written in {time.monotonic() - started:.0f} s")
    return folder


def random_spec(spec: ModelSpec) -> ModelSpec:
    """The ModelSpec that a --random-weights build serves: same architecture, random folder."""
    if spec.builtin:
        return spec  # the built-in models are random already
    if spec.prequantized:
        raise UsageError(f"{spec.name} is a pre-quantised ({spec.prequantized}) checkpoint",
                         "--random-weights builds the unquantised architecture: give the base model")
    return dataclasses.replace(spec, source=str(random_dir(spec.name)), random_weights=True,
                               quantized={})

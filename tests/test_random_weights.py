"""`tritonkit build MODEL --random-weights`: a catalog architecture with random weights, on CPU.

Small catalog-like entries (a user catalog in $TRITONKIT_HOME) stand in for llama2-7b: the same code
path, with numbers a CPU handles in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonkit import catalog, randomweights, weightfiles
from tritonkit.catalog import Architecture, estimate_parameters

MINI_LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 344,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 1200,
              "max_position_embeddings": 2048, "tie_word_embeddings": False}
MINI_NEOX = {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 512,
             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 1000,
             "max_position_embeddings": 2048, "tie_word_embeddings": False}


def _entry(arch: dict, hf_id: str) -> dict:
    params = estimate_parameters(Architecture(**{**arch, "num_parameters": 0}))
    return {"hf_id": hf_id, "description": "test entry", "architecture": {**arch, "num_parameters": params}}


@pytest.fixture
def user_catalog(tritonkit_home):
    models = {"mini-llama": _entry(MINI_LLAMA, "example/mini-llama"),
              "mini-neox": _entry(MINI_NEOX, "example/mini-neox")}
    (tritonkit_home / "models.json").write_text(json.dumps({"models": models}))
    return models


def _cli(workdir: Path, *args: str):
    proc = subprocess.run([sys.executable, "-m", "tritonkit", *args], cwd=workdir, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_padded_tokenizer_has_the_models_vocab_and_decodes_every_id():
    tok = randomweights.padded_tokenizer(32000)
    assert len(tok) == 32000
    ids = tok("Classify the sentiment of this review: great.")["input_ids"]
    assert ids and max(ids) < 32000
    assert tok.decode(ids) == "Classify the sentiment of this review: great."
    assert "filler_31999" in tok.decode([31999])  # what a random model samples still decodes


def test_build_random_weights_cli_writes_the_catalog_architecture(user_catalog, tritonkit_home, tmp_path):
    code, out, err = _cli(tmp_path, "build", "mini-llama", "--gpu", "cpu", "--random-weights")
    assert code == 0, err
    assert "RANDOM WEIGHTS" in out and "RANDOM WEIGHTS" in err and "weights: RANDOM" in out
    target = tmp_path / "model_repository" / "mini-llama"
    folder = tritonkit_home / "models" / "mini-llama-random"
    args = json.loads((target / "1" / "model.json").read_text())
    assert args["model"] == str(folder)
    record = json.loads((target / "build.json").read_text())
    assert record["model"]["random_weights"] is True and "RANDOM WEIGHTS" in record["model"]["random_weights_note"]
    assert record["model"]["hf_id"] == "example/mini-llama"

    # config.json carries exactly the catalog's numbers; the weights are exactly its parameter count.
    want = user_catalog["mini-llama"]["architecture"]
    arch, _ = catalog.architecture_from_config(folder / "config.json")
    for key, value in want.items():
        if key != "num_parameters":
            assert getattr(arch, key) == value, key
    assert weightfiles.count_parameters(folder) == want["num_parameters"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config.get("dtype") or config.get("torch_dtype")) == args["dtype"]
    header = weightfiles.safetensors_header(next(folder.glob("*.safetensors")))
    assert {v["dtype"] for v in header.values()} == {"BF16" if args["dtype"] == "bfloat16" else "F32"}
    marker = json.loads((folder / catalog.RANDOM_WEIGHTS_MARKER).read_text())
    assert marker["random_weights"] is True and marker["num_parameters"] == want["num_parameters"]

    # A folder resolved by path says it is random too (serve/perf read it from there).
    assert catalog.resolve(str(folder)).random_weights

    # transformers loads it and generates; the tokenizer covers the vocabulary.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == want["vocab_size"]
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    ids = tok("the model is random", return_tensors="pt")["input_ids"]
    out_ids = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert out_ids.shape[1] == ids.shape[1] + 4
    assert isinstance(tok.decode(out_ids[0]), str)

    # A second build reuses the folder (same architecture, dtype, seed).
    stamp = (folder / "config.json").stat().st_mtime_ns
    code, out, err = _cli(tmp_path, "build", "mini-llama", "--gpu", "cpu", "--random-weights", "--force")
    assert code == 0, err
    assert "reusing" in err and (folder / "config.json").stat().st_mtime_ns == stamp


def test_shards_and_index_without_two_copies(user_catalog, tmp_path):
    spec = randomweights.random_spec(catalog.resolve("mini-neox"))
    folder = randomweights.build_random_model(spec, "float32", out_dir=tmp_path / "neox", shard_bytes=300_000)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 3
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    # No shard above the limit unless one tensor alone is larger (the embedding is 1000 × 128 × 4 B).
    for shard in shards:
        assert shard.stat().st_size < 300_000 + 1000 * 128 * 4 + 10_000
    assert weightfiles.count_parameters(folder) == user_catalog["mini-neox"]["architecture"]["num_parameters"]
    assert index["metadata"]["total_size"] == 4 * user_catalog["mini-neox"]["architecture"]["num_parameters"]

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert model.config.hidden_size == 128 and model.config.vocab_size == 1000
    norms = [p for n, p in model.named_parameters() if "layernorm.weight" in n]
    assert norms and all(torch.all(p == 1) for p in norms)


def test_catalog_llama2_7b_architecture_is_exact_on_the_meta_device(tritonkit_home):
    """The 7B config the device build writes has the catalog's 6,738,415,616 weights (no memory used)."""
    spec = randomweights.random_spec(catalog.resolve("llama2-7b"))
    tok = randomweights.padded_tokenizer(spec.architecture.vocab_size)
    config = randomweights._config(randomweights.hf_config_dict(spec), "bfloat16", tok)
    assert randomweights.check_architecture(config, spec.architecture) == []
    params = randomweights._meta_parameters(config, "bfloat16")
    assert sum(_numel(s) for _, s in params) == spec.architecture.num_parameters == 6_738_415_616
    shards = randomweights._shards(params, 2, randomweights.SHARD_BYTES)
    assert len(shards) == 7  # ~13.5 GB in <= 2 GiB pieces
    assert spec.source == str(tritonkit_home / "models" / "llama2-7b-random") and spec.random_weights


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("args, message", [
    (["--quantization", "awq"], "--random-weights builds unquantised weights"),
])
def test_random_weights_refuses_prequantised_variants(user_catalog, tmp_path, args, message):
    code, out, err = _cli(tmp_path, "build", "llama2-7b", "--gpu", "a10", "--random-weights", *args)
    assert code != 0 and message in err
    assert not (tmp_path / "model_repository").exists()


@pytest.mark.slow
def test_vllm_serves_the_random_model(user_catalog, tritonkit_home, tmp_path):
    """vLLM (the CPU build here) loads the random folder from model.json and generates max_tokens tokens."""
    code, out, err = _cli(tmp_path, "build", "mini-llama", "--gpu", "cpu", "--random-weights")
    assert code == 0, err
    args = json.loads((tmp_path / "model_repository" / "mini-llama" / "1" / "model.json").read_text())
    script = (
        "import json, sys\n"
        "from vllm import LLM, SamplingParams\n"
        "args = json.loads(sys.argv[1])\n"
        "args.pop('disable_log_stats', None)\n"
        "llm = LLM(**args)\n"
        "out = llm.generate(['classify this text please'], SamplingParams(max_tokens=6, ignore_eos=True))\n"
        "print('TOKENS', len(out[0].outputs[0].token_ids), len(out[0].prompt_token_ids))\n"
    )
    # One process: the engine core and the model in this one (no vLLM import in two spawned processes;
    # ~20 s less here). What is checked, vLLM loading the folder model.json names, is the same.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    args["distributed_executor_backend"] = "uni"
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TOKENS 6 " in proc.stdout

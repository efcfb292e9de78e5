"""The model catalog and GPU profiles: real numbers, resolution rules, clear errors."""

from __future__ import annotations

import json

import pytest

from tritonkit import catalog, gpus, weightfiles
from tritonkit.errors import UsageError

SEED_MODELS = ("llama2-7b", "llama2-13b", "redpajama-3b", "redpajama-7b")
CURRENT_MODELS = ("llama3.1-8b", "mistral-7b", "qwen2.5-7b")


def _meta_parameter_count(arch: catalog.Architecture) -> int:
    """Instantiate the architecture with transformers on the meta device (no memory) and count."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
                    "gpt_neox": GPTNeoXConfig}[arch.model_type]
    kwargs = dict(num_hidden_layers=arch.num_hidden_layers, hidden_size=arch.hidden_size,
                  intermediate_size=arch.intermediate_size, num_attention_heads=arch.num_attention_heads,
                  vocab_size=arch.vocab_size, max_position_embeddings=arch.max_position_embeddings,
                  tie_word_embeddings=arch.tie_word_embeddings)
    if arch.model_type != "gpt_neox":
        kwargs.update(num_key_value_heads=arch.num_key_value_heads, head_dim=arch.head_dim)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_class(**kwargs))
    return sum(p.numel() for p in model.parameters())


def test_catalog_holds_the_seed_and_current_models(tritonkit_home):
    entries = catalog.load_catalog()
    for name in SEED_MODELS + CURRENT_MODELS:
        assert entries[name]["hf_id"], name
    assert entries["tiny-llama"]["builtin"] is True


@pytest.mark.parametrize("name", SEED_MODELS + CURRENT_MODELS + ("tiny-llama",))
def test_catalog_parameter_counts_match_the_architecture(name, tritonkit_home):
    arch = catalog.Architecture(**catalog.load_catalog()[name]["architecture"])
    assert arch.head_dim * arch.num_attention_heads == arch.hidden_size
    assert _meta_parameter_count(arch) == arch.num_parameters
    assert catalog.estimate_parameters(arch) == arch.num_parameters


def test_tiny_llama_entry_matches_a_fresh_build(tiny_model, tritonkit_home):
    built, _ = catalog.architecture_from_config(tiny_model / "config.json")
    built = catalog.Architecture(**{**built.__dict__, "num_parameters": weightfiles.count_parameters(tiny_model)})
    assert built == catalog.Architecture(**catalog.load_catalog()["tiny-llama"]["architecture"])


def test_resolve_by_name_and_by_hf_id(tritonkit_home):
    by_name = catalog.resolve("LLAMA2-7B")
    assert (by_name.name, by_name.source, by_name.origin) == ("llama2-7b", "meta-llama/Llama-2-7b-hf", "catalog")
    assert catalog.resolve("meta-llama/Llama-2-13b-hf").name == "llama2-13b"
    assert by_name.quantized["awq"] == "TheBloke/Llama-2-7B-AWQ"


def test_resolve_builtin_points_into_tritonkit_home(tritonkit_home):
    spec = catalog.resolve("tiny-llama")
    assert spec.builtin and spec.random_weights
    assert spec.source == str(tritonkit_home / "models" / "tiny-llama")


def test_resolve_local_folder_reads_config_and_counts_weights(tiny_model, tritonkit_home):
    spec = catalog.resolve(str(tiny_model))
    assert spec.origin == "local" and spec.random_weights and spec.hf_id is None
    assert spec.source == str(tiny_model.resolve())
    assert spec.architecture.num_parameters == 507008  # from the safetensors headers
    assert spec.architecture.num_key_value_heads == 2 and spec.architecture.head_dim == 64


def test_resolve_hf_id_from_the_hf_cache(tmp_path, tritonkit_home, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--small-llm" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--acme--small-llm" / "refs").mkdir()
    (cache / "models--acme--small-llm" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 512,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "max_position_embeddings": 2048, "tie_word_embeddings": True}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    spec = catalog.resolve("acme/small-llm")
    assert (spec.origin, spec.source, spec.name) == ("hf-cache", "acme/small-llm", "small-llm")
    a = spec.architecture
    assert (a.head_dim, a.num_key_value_heads) == (64, 2)
    # embeddings tied: 1000*256 once; per layer q,o 256*256, k,v 256*128, mlp 3*256*512, 2 norms
    assert a.num_parameters == 1000 * 256 + 4 * (2 * 65536 + 2 * 32768 + 3 * 131072 + 512) + 256


def test_unknown_model_suggests_nearest_names(tritonkit_home):
    with pytest.raises(UsageError, match="unknown model 'llama2-7'") as err:
        catalog.resolve("llama2-7")
    assert "unknown model 'llama2-7'" in str(err.value) and "llama2-7b" in err.value.hint


def test_unknown_hf_id_says_how_to_fetch_its_config(tritonkit_home):
    with pytest.raises(UsageError, match="unknown model 'nobody/nothing-7b'") as err:
        catalog.resolve("nobody/nothing-7b")
    assert "huggingface-cli download nobody/nothing-7b config.json" in err.value.hint


@pytest.mark.parametrize("content, message", [
    (None, "has no config.json"),
    ("{not json", "is not valid JSON"),
    (json.dumps({"model_type": "llama", "hidden_size": 64}), "has no usable num_hidden_layers"),
])
def test_bad_local_config(tmp_path, tritonkit_home, content, message):
    folder = tmp_path / "model"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_text(content)
    with pytest.raises(UsageError, match=message):
        catalog.resolve(str(folder))


def test_user_catalog_adds_models_and_a_broken_one_is_named(tritonkit_home):
    entry = catalog.load_catalog()["llama2-7b"]
    user = {"models": {"my-llama": {"hf_id": "me/my-llama", "architecture": entry["architecture"]}}}
    (tritonkit_home / "models.json").write_text(json.dumps(user))
    assert catalog.resolve("my-llama").origin == "user-catalog"
    (tritonkit_home / "models.json").write_text('{"models": {"x": {"hf_id": "a/b", "architecture": {}}}}')
    with pytest.raises(UsageError, match="catalog entry 'x' has a bad architecture"):
        catalog.load_catalog()


# ---------------------------------------------------------------- GPU profiles

def test_profiles_cover_the_issue_and_state_their_source(tritonkit_home):
    profiles = gpus.load_profiles()
    for name in ("t4", "a10", "l4", "a100-40gb", "a100-80gb", "h100", "h200", "a10x4", "cpu"):
        assert name in profiles
    a10 = profiles["a10"]
    assert (a10.instance, a10.price_per_hour, a10.memory_mib, a10.bf16, a10.fp8) == \
        ("AWS g5.4xlarge", 1.624, 23028, True, False)
    assert profiles["a10x4"].instance == "AWS g5.12xlarge" and profiles["a10x4"].gpus == 4
    about = json.loads(gpus.PACKAGE_PROFILES.read_text())["_about"]
    assert about["recorded"] and "prices" in about


@pytest.mark.parametrize("content, message", [
    ('{"profiles": ["a10"]}', 'has no "profiles" object'), ("[]", 'has no "profiles" object'),
    ("{}", 'has no "profiles" object'), ('{"profiles": ', "is unreadable"),
])
def test_a_broken_user_profiles_file_is_named(tritonkit_home, content, message):
    (tritonkit_home / "gpus.json").write_text(content)
    with pytest.raises(UsageError, match=f"GPU profiles file {tritonkit_home / 'gpus.json'} {message}"):
        gpus.load_profiles()


def test_cpu_profile_is_this_machine(tritonkit_home):
    import os

    cpu = gpus.get_profile("cpu")
    ram_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert cpu.is_cpu and 0 < cpu.memory_mib <= ram_mib


def test_gpus_flag_picks_the_listed_instance_or_scales_the_price(tritonkit_home):
    assert gpus.get_profile("a10", gpus=4).name == "a10x4"
    two = gpus.get_profile("a10", gpus=2)
    assert (two.gpus, two.price_per_hour) == (2, 3.248) and "2/1 of AWS g5.4xlarge" in two.instance
    assert gpus.get_profile("a10", price=2.0).price_per_hour == 2.0
    with pytest.raises(UsageError, match="--gpus must be 1"):
        gpus.get_profile("cpu", gpus=2)


def test_unknown_gpu_suggests_nearest(tritonkit_home):
    with pytest.raises(UsageError, match="unknown GPU profile 'a100'") as err:
        gpus.get_profile("a100")
    assert "unknown GPU profile 'a100'" in str(err.value) and "a100-40gb" in err.value.hint

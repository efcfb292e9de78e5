"""LoRA: PEFT folders checked against the base, merged with peft, modes and ranks for vLLM."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tritonkit import catalog, lora
from tritonkit.errors import UsageError


@pytest.fixture
def base_spec(tiny_model, tritonkit_home):
    return catalog.resolve(str(tiny_model))


def _copy_adapter(src, dst, **config_changes):
    shutil.copytree(src, dst)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(config_changes)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def test_parse_spec(tmp_path):
    assert lora.parse_spec(f"sql={tmp_path}") == ("sql", tmp_path.resolve())
    assert lora.parse_spec(str(tmp_path / "my-adapter")) == ("my-adapter", (tmp_path / "my-adapter").resolve())
    with pytest.raises(UsageError, match="adapter name 'a b'"):
        lora.parse_spec(f"a b={tmp_path}")


def test_inspect_and_check_the_fixture_adapters(tiny_adapters, base_spec):
    a = lora.inspect("a", tiny_adapters["a"])
    b = lora.inspect("b", tiny_adapters["b"])
    assert (a.rank, a.target_modules, b.rank) == (8, ("q_proj", "v_proj"), 16)
    assert a.shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (8, 128)
    lora.check(a, base_spec)
    lora.check(b, base_spec, max_lora_rank=16)


def test_merged_logits_equal_the_peft_model_and_differ_from_the_base(tiny_model, tiny_adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = lora.inspect("a", tiny_adapters["a"])
    out = tmp_path / "merged"
    lora.merge(str(tiny_model), adapter, out)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not any(p.name.startswith("adapter_") for p in out.iterdir())
    assert (out / catalog.RANDOM_WEIGHTS_MARKER).exists()

    tokens = AutoTokenizer.from_pretrained(out)("The quick brown fox jumps over the lazy dog",
                                                return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
        base_logits = base(tokens).logits
        peft_logits = PeftModel.from_pretrained(base, tiny_adapters["a"]).eval()(tokens).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(tokens).logits
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-2


def test_adapter_for_another_base_by_name(tiny_adapters, base_spec, tmp_path):
    other = _copy_adapter(tiny_adapters["a"], tmp_path / "x", base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    with pytest.raises(UsageError, match="trained on meta-llama/Llama-2-7b-hf, not on tiny-llama"):
        lora.check(lora.inspect("x", other), base_spec)


def test_adapter_for_another_base_by_shape(tiny_adapters, base_spec, tmp_path):
    from safetensors.torch import load_file, save_file

    other = _copy_adapter(tiny_adapters["a"], tmp_path / "x")
    tensors = load_file(other / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(8, 256)  # trained on a model with hidden size 256
    save_file(tensors, other / "adapter_model.safetensors")
    with pytest.raises(UsageError, match=r"q_proj.lora_A.weight has shape \[8, 256\], tiny-llama needs \[8, 128\]"):
        lora.check(lora.inspect("x", other), base_spec)


def test_target_module_not_in_the_architecture(tiny_adapters, base_spec, tmp_path):
    other = _copy_adapter(tiny_adapters["a"], tmp_path / "x", target_modules=["c_attn", "q_proj"])
    with pytest.raises(UsageError, match="targets c_attn, not in tiny-llama"):
        lora.check(lora.inspect("x", other), base_spec)


def test_rank_above_the_flag(tiny_adapters, base_spec):
    with pytest.raises(UsageError, match="adapter b has rank 16, above --max-lora-rank 8"):
        lora.check(lora.inspect("b", tiny_adapters["b"]), base_spec, max_lora_rank=8)


@pytest.mark.parametrize("damage, message", [
    ("missing", "adapter folder .* not found"),
    ("no-config", "is not a PEFT adapter: it has no adapter_config.json"),
    ("corrupt-config", "is not a JSON object"),
    ("not-lora", "is not a PEFT LoRA adapter"),
    ("no-weights", "no adapter_model.safetensors or .bin"),
])
def test_not_a_peft_adapter(tiny_adapters, tmp_path, damage, message):
    path = tmp_path / "x"
    if damage != "missing":
        shutil.copytree(tiny_adapters["a"], path)
    if damage == "no-config":
        (path / "adapter_config.json").unlink()
    elif damage == "corrupt-config":
        (path / "adapter_config.json").write_text("{")
    elif damage == "not-lora":
        _copy_adapter(tiny_adapters["a"], tmp_path / "y", peft_type="PREFIX_TUNING")
        path = tmp_path / "y"
    elif damage == "no-weights":
        (path / "adapter_model.safetensors").unlink()
    with pytest.raises(UsageError, match=message):
        lora.inspect("x", path)


def test_modes_and_ranks(tiny_adapters, base_spec):
    a, b = lora.inspect("a", tiny_adapters["a"]), lora.inspect("b", tiny_adapters["b"])
    assert lora.choose_mode([], None, base_spec, None) == "none"
    assert lora.choose_mode([a], None, base_spec, None) == "merge"
    assert lora.choose_mode([a, b], None, base_spec, None) == "serve"
    assert lora.choose_mode([a], "serve", base_spec, None) == "serve"
    assert lora.served_rank([a, b], None) == 16
    assert lora.served_rank([a], None) == 8
    assert lora.served_rank([a], 64) == 64
    with pytest.raises(UsageError, match="--lora-mode merge takes one adapter"):
        lora.choose_mode([a, b], "merge", base_spec, None)
    with pytest.raises(UsageError, match="--lora-mode serve needs at least one --adapter"):
        lora.choose_mode([], "serve", base_spec, None)
    with pytest.raises(UsageError, match="cannot merge an adapter into awq-quantised weights"):
        lora.choose_mode([a], "merge", base_spec, "awq")
    with pytest.raises(UsageError, match="adapter names must be unique"):
        lora.choose_mode([a, a], None, base_spec, None)
    with pytest.raises(UsageError, match="--max-lora-rank 12 is not one vLLM accepts"):
        lora.served_rank([a], 12)


def test_serving_needs_a_lora_capable_architecture(tiny_adapters, tritonkit_home):
    redpajama = catalog.resolve("redpajama-3b")
    with pytest.raises(UsageError, match="only on llama, mistral, qwen2 models, not gpt_neox"):
        lora.choose_mode([lora.inspect("a", tiny_adapters["a"])], "serve", redpajama, None)

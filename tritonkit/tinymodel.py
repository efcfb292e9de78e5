"""Build small random-weight Llama models with a tokenizer trained on the spot.

They are real Hugging Face model folders (config.json, safetensors, tokenizer files) that vLLM
loads like any other Llama, so the built-in demo and the tests run the whole chain without a hub
download. head_dim is 64 because vLLM's CPU attention rejects smaller heads.
"""

from __future__ import annotations

import json
from pathlib import Path

from tritonkit.paths import shipped

CORPUS = shipped("tritonkit/data/corpus.txt")

TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 64
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the shipped corpus (a few seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny_llama(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random-weight Llama (float32) and its tokenizer to `out_dir`; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    arch = {**TINY_LLAMA, **overrides}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    from tritonkit.quiet import no_progress_bars

    with no_progress_bars():  # a blink-long 'Writing model shards' bar says nothing
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Random weights: say so where a person (and tritonkit's own output) will look.
    (out / "TRITONKIT_RANDOM_WEIGHTS.json").write_text(
        json.dumps({"random_weights": True, "seed": seed, "architecture": arch}, indent=2) + "\n"
    )
    return out


def build_tiny_lora(base_dir: str | Path, out_dir: str | Path, seed: int = 1, rank: int = 8,
                    target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """Write a PEFT LoRA adapter for the model in `base_dir` with random, non-zero B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: an adapter that changes nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    out = Path(out_dir)
    model.save_pretrained(out)
    # Record the base by its local path, as a fine-tuning run against this folder would.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out

"""The plan shown: every number the planner derived, with how it was reached (`tritonkit build`'s table)."""

from __future__ import annotations

from tritonkit.catalog import Architecture
from tritonkit.planner import DTYPE_BYTES, GiB, Plan


def _exact(n: int) -> str:
    return f"{n / GiB:.2f} GiB ({n:,} B)"


def rows(p: Plan, a: Architecture) -> list[tuple[str, str, str]]:
    """(quantity, value, how it was reached) for every number, in the order they are derived."""
    tp, b = p.tensor_parallel_size, DTYPE_BYTES[p.dtype]
    cpu = p.cpu_kv_cache_space_gib is not None
    out = [
        ("dtype", p.dtype, p.dtype_reason),
        ("quantization", p.quantization or "none", ""),
        ("tensor_parallel_size", str(tp), p.tp_reason),
        ("machine memory" if cpu else "memory per GPU", _exact(p.gpu_memory_bytes), ""),
        ("memory vLLM gets", _exact(p.budget_bytes),
         f"× {'share of RAM planned for vLLM' if cpu else 'gpu_memory_utilization'} "
         f"{p.gpu_memory_utilization:g}"),
        ("weights" if cpu else "weights per GPU", _exact(p.weight_bytes_per_gpu), p.weight_formula + f" / tp {tp}"),
        ("  activations", _exact(p.activation_bytes),
         f"{p.step_tokens} tokens a step × (2 × {a.intermediate_size}/{tp} + 4 × {a.hidden_size}) × {b} B"),
        ("  sampler logits", _exact(p.logits_bytes),
         f"{p.reserve_num_seqs} seqs × {a.vocab_size} vocab × 4 B × 2"),
    ]
    if p.lora_bytes:
        out.append(("  LoRA slots", _exact(p.lora_bytes), "max_loras × max_lora_rank × layers × Σ(in+out)"))
    out += [
        ("  fixed overhead", _exact(p.overhead_bytes),
         "Python, torch and the engine process" if cpu else "CUDA context, graphs, workspaces"),
        ("reserve", _exact(p.reserve_bytes), "sum of the indented rows"),
        ("KV cache" if cpu else "KV cache per GPU", _exact(p.kv_cache_bytes),
         "VLLM_CPU_KVCACHE_SPACE" if cpu else "memory vLLM gets − weights − reserve"),
        ("KV bytes per token", f"{p.kv_bytes_per_token:,} B",
         f"2 × {a.num_hidden_layers} layers × {a.num_key_value_heads} KV heads × {a.head_dim} head_dim "
         f"× {b} B (÷ tp {tp} per GPU)"),
        ("KV tokens", f"{p.kv_tokens:,}",
         f"{p.kv_blocks:,} blocks × {p.block_size} tokens"),
        ("max_model_len", f"{p.max_model_len:,}", p.max_model_len_reason),
        ("full-length sequences", f"{p.full_length_sequences:,}",
         f"{p.kv_tokens:,} // {p.max_model_len:,}"),
        ("max_num_seqs", str(p.max_num_seqs), p.max_num_seqs_reason),
    ]
    if p.cpu_kv_cache_space_gib is not None:
        out.append(("VLLM_CPU_KVCACHE_SPACE", f"{p.cpu_kv_cache_space_gib} GiB",
                    f"what {p.reserve_num_seqs} sequences of {p.max_model_len:,} tokens need, "
                    "at most what is free"))
    return out

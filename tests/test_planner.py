"""The fit planner against hand calculations, and every refusal it owes the user."""

from __future__ import annotations

import re

import pytest

from tritonkit import catalog, gpus, plan_rows, planner
from tritonkit.errors import DoesNotFitError, UsageError
from tritonkit.planner import Choices

GiB = 2**30


def plan(model: str, gpu: str, **choices) -> planner.Plan:
    profile = gpus.get_profile(gpu)
    return planner.plan(catalog.resolve(model), profile, Choices(**choices), gpus.others(profile))


# Shared by the hand calculations below: the parts of the reserve that do not depend on the GPU.
OVERHEAD = 1_073_741_824                       # 1 GiB
LOGITS_32K_VOCAB = 256 * 32000 * 4 * 2         # 65_536_000: 256 seqs, float32 logits and probs


def test_llama2_7b_on_a10_by_hand(tritonkit_home):
    memory = 23028 * 2**20                      # A10G as nvidia-smi reports it
    assert memory == 24_146_608_128
    budget = 21_731_947_315                     # int(24_146_608_128 * 0.90)
    weights = 6_738_415_616 * 2                 # bfloat16
    assert weights == 13_476_831_232
    activation = 2048 * (2 * 11008 + 4 * 4096) * 2
    assert activation == 157_286_400
    reserve = activation + LOGITS_32K_VOCAB + OVERHEAD
    assert reserve == 1_296_564_224
    kv_cache = budget - weights - reserve
    assert kv_cache == 6_958_551_859
    per_token = 2 * 32 * 32 * 128 * 2           # K and V, layers, KV heads, head_dim, bytes
    assert per_token == 524_288
    blocks = kv_cache // (16 * per_token)       # 6_958_551_859 // 8_388_608
    assert blocks == 829

    p = plan("llama2-7b", "a10")
    assert (p.dtype, p.tensor_parallel_size, p.gpu_memory_utilization) == ("bfloat16", 1, 0.9)
    assert (p.gpu_memory_bytes, p.budget_bytes, p.weight_bytes) == (memory, budget, weights)
    assert (p.activation_bytes, p.logits_bytes, p.reserve_bytes) == (activation, LOGITS_32K_VOCAB, reserve)
    assert (p.kv_cache_bytes, p.kv_bytes_per_token, p.kv_blocks) == (kv_cache, per_token, blocks)
    assert p.kv_tokens == 829 * 16 == 13_264
    assert p.max_model_len == 4096                        # the whole context fits
    assert p.full_length_sequences == 13_264 // 4096 == 3
    assert p.max_num_seqs == 13_264 // 256 == 51


def test_llama2_7b_on_a100_40gb_by_hand(tritonkit_home):
    budget = int(40960 * 2**20 * 0.9)
    assert budget == 38_654_705_664
    kv_cache = budget - 13_476_831_232 - 1_296_564_224    # weights and reserve as on the A10
    assert kv_cache == 23_881_310_208
    assert kv_cache // 8_388_608 == 2846

    p = plan("llama2-7b", "a100-40gb")
    assert (p.budget_bytes, p.kv_cache_bytes, p.kv_blocks, p.kv_tokens) == (budget, kv_cache, 2846, 45_536)
    assert (p.max_model_len, p.full_length_sequences, p.max_num_seqs) == (4096, 11, 177)


def test_llama2_13b_on_a100_40gb_by_hand(tritonkit_home):
    weights = 13_015_864_320 * 2
    assert weights == 26_031_728_640
    activation = 2048 * (2 * 13824 + 4 * 5120) * 2
    assert activation == 197_132_288
    reserve = activation + LOGITS_32K_VOCAB + OVERHEAD
    assert reserve == 1_336_410_112
    kv_cache = 38_654_705_664 - weights - reserve
    assert kv_cache == 11_286_566_912
    per_token = 2 * 40 * 40 * 128 * 2
    assert per_token == 819_200
    assert kv_cache // (16 * per_token) == 861

    p = plan("llama2-13b", "a100-40gb")
    assert (p.weight_bytes, p.reserve_bytes, p.kv_cache_bytes) == (weights, reserve, kv_cache)
    assert (p.kv_bytes_per_token, p.kv_blocks, p.kv_tokens) == (per_token, 861, 13_776)
    assert (p.tensor_parallel_size, p.max_model_len, p.full_length_sequences, p.max_num_seqs) == (1, 4096, 3, 53)


def test_llama2_13b_does_not_fit_one_a10_and_says_what_would(tritonkit_home):
    # 26_031_728_640 B of bf16 weights alone exceed the 21_731_947_315 B vLLM gets on one A10G.
    with pytest.raises(DoesNotFitError, match="does not fit a10") as err:
        plan("llama2-13b", "a10")
    message, hint = err.value.message, err.value.hint
    assert "llama2-13b in bfloat16 does not fit a10" in message
    assert "weights 24.24 GiB" in message and "20.24 GiB vLLM gets" in message
    # a10x4 at tp 2, by hand: 13_015_864_320 B of weights per GPU;
    # reserve 2048*(2*6912 + 4*5120)*2 + LOGITS + OVERHEAD = 140_509_184 + 65_536_000 + 1 GiB;
    # KV 21_731_947_315 - 13_015_864_320 - 1_279_787_008 = 7_436_295_987 B,
    # blocks of 16 * 409_600 B (20 KV heads per GPU): 1134 -> 18_144 tokens.
    assert "--gpu a10x4 (4 × NVIDIA A10G, AWS g5.12xlarge, $5.672/h, tp 2, 18,144 KV tokens)" in hint
    assert "--gpu a100-40gb" in hint
    # AWQ by hand: (13_015_864_320 - 2*32000*5120) params at 4 + 20/128 bits = 6_591_908_260 B,
    # plus 327_680_000 embedding params at 2 B = 7_247_268_260 B = 6.75 GiB.
    assert "--quantization awq (TheBloke/Llama-2-13B-AWQ, weights 6.75 GiB" in hint


def test_awq_weight_bytes_by_hand(tritonkit_home):
    arch = catalog.resolve("llama2-13b").architecture
    size, formula = planner.weight_bytes(arch, "float16", "awq")
    assert size == 12_688_184_320 * 532 // 1024 + 327_680_000 * 2 == 7_247_268_260
    assert "(4 + 20/128) bits (awq)" in formula


def test_fp8_on_h100_halves_the_linear_weights(tritonkit_home):
    p = plan("llama2-13b", "h100", quantization="fp8")
    assert p.weight_bytes == 12_688_184_320 * 1 + 327_680_000 * 2
    assert p.dtype == "bfloat16" and p.quantization == "fp8"


def test_smallest_tp_that_fits_is_chosen(tritonkit_home):
    p = plan("llama2-13b", "a10x4")
    assert p.tensor_parallel_size == 2 and p.kv_tokens == 18_144
    assert plan("llama2-7b", "a10x4").tensor_parallel_size == 1


def test_context_is_reduced_when_the_kv_cache_cannot_hold_one_sequence(tritonkit_home):
    p = plan("llama3.1-8b", "a10")
    # KV: 21_731_947_315 - 16_060_522_496 - (184_549_376 + 256*128256*8 + 1 GiB) = 4_150_465_331 B;
    # 131_072 B a token (8 KV heads) -> 1979 blocks -> 31_664 tokens -> 30 * 1024.
    assert (p.kv_cache_bytes, p.kv_tokens) == (4_150_465_331, 31_664)
    assert p.max_model_len == 30_720 and "reduced from 131,072" in p.max_model_len_reason


def test_overrides_are_used(tritonkit_home):
    p = plan("llama2-7b", "a100-40gb", dtype="float16", max_model_len=2048, max_num_seqs=64,
             gpu_memory_utilization=0.8, tp=1)
    assert (p.dtype, p.max_model_len, p.max_num_seqs, p.gpu_memory_utilization) == ("float16", 2048, 64, 0.8)
    assert p.logits_bytes == 64 * 32000 * 4 * 2     # the reserve follows max_num_seqs
    assert p.budget_bytes == int(40960 * 2**20 * 0.8)


def test_served_lora_slots_are_reserved(tritonkit_home):
    base = plan("llama2-7b", "a10")
    with_lora = plan("llama2-7b", "a10", lora_slots=2, lora_rank=16)
    # q, k, v, o: 4 * (4096 + 4096); gate, up, down: 3 * (4096 + 11008)
    per_rank_layer = 4 * 8192 + 3 * 15104
    assert with_lora.lora_bytes == 2 * 16 * 32 * per_rank_layer * 2
    assert with_lora.reserve_bytes == base.reserve_bytes + with_lora.lora_bytes


def test_cpu_plan_sizes_vllm_cpu_kvcache_space(tritonkit_home):
    p = plan("tiny-llama", "cpu")
    assert (p.dtype, p.tensor_parallel_size, p.max_model_len) == ("float32", 1, 1024)
    # 256 sequences * 1024 tokens * (2*2*2*64*4 = 2048 B) = 512 MiB -> one whole GiB
    assert p.cpu_kv_cache_space_gib == 1 and p.kv_cache_bytes == GiB
    assert p.kv_tokens == GiB // 2048
    assert plan("tiny-llama", "cpu", dtype="bfloat16").kv_bytes_per_token == 1024


@pytest.mark.parametrize("model, gpu, choices, message", [
    ("llama2-7b", "a10x4", {"tp": 3}, "--tp 3 does not divide llama2-7b's 32 attention heads and 32 KV heads"),
    ("llama2-7b", "a10", {"tp": 2}, "--tp 2 needs 2 GPUs; a10 has 1"),
    ("llama2-7b", "a10", {"tp": 0}, "--tp must be at least 1"),
    ("llama3.1-8b", "h100x8", {"tp": 16}, "does not divide llama3.1-8b's 32 attention heads and 8 KV heads"),
    ("llama2-7b", "t4", {"dtype": "bfloat16"}, "t4 (NVIDIA T4) has no bfloat16 support"),
    ("llama2-7b", "cpu", {"dtype": "float16"}, "--dtype float16 is not available on cpu"),
    ("llama2-7b", "a10", {"quantization": "fp8"}, "a10 (NVIDIA A10G) has no fp8 support"),
    ("llama3.1-8b", "a10", {"quantization": "awq"}, "the catalog has no awq checkpoint of llama3.1-8b"),
    ("llama2-7b", "a10", {"quantization": "int3"}, "unknown --quantization int3"),
    ("tiny-llama", "cpu", {"quantization": "awq"}, "the cpu profile serves unquantised weights only"),
    ("llama2-7b", "a10", {"max_model_len": 8192}, "--max-model-len 8192 is outside 1..4096"),
    ("llama2-7b", "a10", {"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization must be in (0, 1]"),
    ("llama2-7b", "a10", {"max_num_seqs": 0}, "--max-num-seqs must be at least 1"),
])
def test_impossible_overrides_are_refused_with_the_reason(tritonkit_home, model, gpu, choices, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        plan(model, gpu, **choices)


def test_a_context_longer_than_the_kv_cache_is_refused_with_the_longest_that_fits(tritonkit_home):
    with pytest.raises(DoesNotFitError, match="fewer than the 65,536") as err:
        plan("llama3.1-8b", "a10", max_model_len=65536)
    assert "holds 31,664 tokens, fewer than the 65,536" in err.value.message
    assert "--max-model-len 31664 or less" in err.value.hint


def test_rows_show_every_number(tritonkit_home):
    p = plan("llama2-7b", "a10")
    shown = {q: (v, how) for q, v, how in plan_rows.rows(p, catalog.resolve("llama2-7b").architecture)}
    assert shown["KV tokens"] == ("13,264", "829 blocks × 16 tokens")
    assert shown["weights per GPU"][0] == "12.55 GiB (13,476,831,232 B)"
    assert "2 × 32 layers × 32 KV heads × 128 head_dim × 2 B" in shown["KV bytes per token"][1]


def test_options_respect_the_users_flags(tritonkit_home):
    # bf16 and fp8 were asked for: no T4 (no bf16) and no A100 (no fp8) may be offered.
    with pytest.raises(DoesNotFitError, match="does not fit l4") as err:
        plan("llama2-13b", "l4", dtype="bfloat16", max_model_len=4096, quantization="fp8",
             gpu_memory_utilization=0.5)
    assert "t4" not in err.value.hint and "a100" not in err.value.hint
    assert "--gpu l4x4" in err.value.hint and "--gpu h100 " in err.value.hint

"""Will the model fit, and with which vLLM settings? Pure arithmetic on catalog and profile numbers.

Per GPU, vLLM gets `memory × gpu_memory_utilization`; from that it takes the weights (split over
tensor-parallel ranks) and a reserve (activations of one scheduler step, the sampler's logits,
LoRA slots, and a fixed overhead for the CUDA context, CUDA graphs and library workspaces); what
is left is KV cache, allocated in blocks of 16 tokens. Every number is kept in the Plan so it can
be shown to the user and recorded in build.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tritonkit.catalog import Architecture, ModelSpec
from tritonkit.errors import DoesNotFitError, UsageError
from tritonkit.gpus import GpuProfile

GiB = 2**30
BLOCK_SIZE = 16                 # vLLM's KV-cache block, in tokens
DEFAULT_UTILIZATION = 0.90      # vLLM's default gpu_memory_utilization
MAX_NUM_SEQS_CAP = 256          # vLLM's default max_num_seqs on GPU servers
STEP_TOKENS = 2048              # vLLM's default max_num_batched_tokens for an engine behind a server
TYPICAL_SEQ_TOKENS = 256        # a short request (the seed's: 100 tokens in, 4-100 out), rounded up
OVERHEAD_BYTES = 1 * GiB        # CUDA context, driver reserve, cuBLAS/NCCL workspaces, CUDA graphs
MIN_CONTEXT = 2048              # below this a deployment is not useful: say it does not fit
CONTEXT_STEP = 1024             # a reduced max_model_len is rounded down to this
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANT_METHODS = ("awq", "gptq", "fp8")
GROUP_SIZE = 128                # AWQ/GPTQ: one fp16 scale and one 4-bit zero per 128 weights


@dataclass(frozen=True)
class Choices:
    """What the user fixed on the command line; None lets the planner choose."""
    dtype: str | None = None
    tp: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    lora_slots: int = 0          # max_loras when adapters are served, not merged
    lora_rank: int = 0           # max_lora_rank then


@dataclass(frozen=True)
class Plan:
    dtype: str
    dtype_reason: str
    quantization: str | None
    tensor_parallel_size: int
    tp_reason: str
    gpus: int
    gpu_memory_bytes: int
    gpu_memory_utilization: float
    budget_bytes: int
    num_parameters: int
    weight_bytes: int
    weight_bytes_per_gpu: int
    weight_formula: str
    step_tokens: int
    activation_bytes: int
    reserve_num_seqs: int
    logits_bytes: int
    lora_bytes: int
    overhead_bytes: int
    reserve_bytes: int
    kv_cache_bytes: int
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    block_size: int
    kv_blocks: int
    kv_tokens: int
    model_context: int
    max_model_len: int
    max_model_len_reason: str
    full_length_sequences: int
    max_num_seqs: int
    max_num_seqs_reason: str
    cpu_kv_cache_space_gib: int | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the arithmetic

def embedding_parameters(a: Architecture) -> int:
    """Embedding and lm_head weights: vLLM keeps these 16-bit even in quantised models."""
    return a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)


def weight_bytes(a: Architecture, dtype: str, quantization: str | None) -> tuple[int, str]:
    """Bytes of all weights, and the formula that gave them."""
    n, b = a.num_parameters, DTYPE_BYTES[dtype]
    if quantization is None:
        return n * b, f"{n:,} params × {b} B ({dtype})"
    if quantization not in QUANT_METHODS:  # a checkpoint's own method we have no formula for
        return n * b, f"{n:,} params × {b} B ({quantization} counted as unquantised: an upper bound)"
    emb = embedding_parameters(a)
    rest = n - emb
    if quantization == "fp8":
        return rest + emb * b, f"{rest:,} params × 1 B (fp8) + {emb:,} embedding params × {b} B"
    # 4 bits a weight, plus 16 + 4 bits (scale, zero) a group of GROUP_SIZE weights
    bits_num = 4 * GROUP_SIZE + 20
    return (rest * bits_num + 8 * GROUP_SIZE - 1) // (8 * GROUP_SIZE) + emb * b, (
        f"{rest:,} params × (4 + 20/{GROUP_SIZE}) bits ({quantization}) + "
        f"{emb:,} embedding params × {b} B")


def kv_bytes_per_token(a: Architecture, dtype: str) -> int:
    """2 (K and V) × layers × KV heads × head_dim × bytes."""
    return 2 * a.num_hidden_layers * a.num_key_value_heads * a.head_dim * DTYPE_BYTES[dtype]


def lora_bytes(a: Architecture, slots: int, rank: int, dtype: str, tp: int) -> int:
    """vLLM's LoRA buffers: A and B of every projection of every layer, for each slot."""
    if not slots:
        return 0
    h, inter = a.hidden_size, a.intermediate_size
    q, kv = a.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
    in_plus_out = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + inter) + (inter + h)
    return _ceil(slots * rank * a.num_hidden_layers * in_plus_out * DTYPE_BYTES[dtype], tp)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class _Sizing:
    tp: int
    weight_per_gpu: int
    activation: int
    logits: int
    lora: int
    reserve: int
    budget: int
    kv_cache: int
    kv_per_token_gpu: int
    blocks: int
    cpu_kv_gib: int | None

    @property
    def kv_tokens(self) -> int:
        return self.blocks * BLOCK_SIZE


def _size(a: Architecture, gpu: GpuProfile, dtype: str, weights: int, tp: int, util: float,
          c: Choices, want_len: int) -> _Sizing:
    b = DTYPE_BYTES[dtype]
    weight_per_gpu = _ceil(weights, tp)
    activation = STEP_TOKENS * (2 * _ceil(a.intermediate_size, tp) + 4 * a.hidden_size) * b
    logits = (c.max_num_seqs or MAX_NUM_SEQS_CAP) * a.vocab_size * 4 * 2
    lora = lora_bytes(a, c.lora_slots, c.lora_rank, dtype, tp)
    reserve = activation + logits + lora + OVERHEAD_BYTES
    budget = int(gpu.memory_bytes * util)
    free = budget - weight_per_gpu - reserve
    per_token = kv_bytes_per_token(a, dtype) // tp
    cpu_kv_gib = None
    if gpu.is_cpu:
        # VLLM_CPU_KVCACHE_SPACE is whole GiB: what the planned sequences need, at most what is free.
        need = (c.max_num_seqs or MAX_NUM_SEQS_CAP) * want_len * per_token
        cpu_kv_gib = max(0, min(free // GiB, max(1, _ceil(need, GiB))))
        free = cpu_kv_gib * GiB
    blocks = max(0, free) // (BLOCK_SIZE * per_token)
    return _Sizing(tp, weight_per_gpu, activation, logits, lora, reserve, budget, free, per_token,
                   blocks, cpu_kv_gib)


# ---------------------------------------------------------------- choices and validation

def _choose_dtype(gpu: GpuProfile, c: Choices) -> tuple[str, str]:
    allowed = ["float32", "bfloat16"] if gpu.is_cpu else ["bfloat16", "float16", "float32"]
    if c.dtype is not None:
        if c.dtype not in allowed:
            raise UsageError(f"--dtype {c.dtype} is not available on {gpu.name}",
                             f"choose one of {', '.join(allowed)}")
        if c.dtype == "bfloat16" and not gpu.bf16:
            raise UsageError(f"{gpu.name} ({gpu.gpu}) has no bfloat16 support", "use --dtype float16")
        return c.dtype, "--dtype"
    if gpu.is_cpu:
        return "float32", "vLLM's CPU backend default (bfloat16 allowed with --dtype)"
    if c.quantization in ("awq", "gptq"):
        return "float16", f"{c.quantization} kernels run in float16"
    if gpu.bf16:
        return "bfloat16", f"{gpu.gpu} supports bf16"
    return "float16", f"{gpu.gpu} has no bf16"


def _check_quantization(spec: ModelSpec, gpu: GpuProfile, c: Choices) -> str | None:
    q = c.quantization
    if spec.prequantized:
        if q not in (None, spec.prequantized):
            raise UsageError(f"{spec.name} is already quantised with {spec.prequantized}; "
                             f"--quantization {q} cannot apply")
        return spec.prequantized
    if q is None:
        return None
    if q not in QUANT_METHODS:
        raise UsageError(f"unknown --quantization {q}", f"choose one of {', '.join(QUANT_METHODS)}")
    if gpu.is_cpu:
        raise UsageError("the cpu profile serves unquantised weights only; drop --quantization")
    if q == "fp8" and not gpu.fp8:
        raise UsageError(f"{gpu.name} ({gpu.gpu}) has no fp8 support",
                         "fp8 needs an L4, H100 or H200; or use --quantization awq")
    if q in ("awq", "gptq") and q not in spec.quantized:
        raise UsageError(f"the catalog has no {q} checkpoint of {spec.name}",
                         f"pass a {q}-quantised checkpoint (folder or HF id) as MODEL")
    return q


def _tp_candidates(a: Architecture, gpu: GpuProfile) -> list[int]:
    limit = 1 if gpu.is_cpu else gpu.gpus
    return [t for t in range(1, limit + 1)
            if a.num_attention_heads % t == 0 and a.num_key_value_heads % t == 0]


def _check_choices(spec: ModelSpec, gpu: GpuProfile, c: Choices) -> None:
    a = spec.architecture
    if c.tp is not None:
        if c.tp < 1:
            raise UsageError(f"--tp must be at least 1, got {c.tp}")
        if gpu.is_cpu and c.tp != 1:
            raise UsageError("the cpu profile runs one engine: --tp must be 1")
        if a.num_attention_heads % c.tp or a.num_key_value_heads % c.tp:
            valid = [t for t in range(1, 65) if a.num_attention_heads % t == 0
                     and a.num_key_value_heads % t == 0]
            raise UsageError(
                f"--tp {c.tp} does not divide {spec.name}'s {a.num_attention_heads} attention heads "
                f"and {a.num_key_value_heads} KV heads",
                f"valid --tp values: {', '.join(map(str, valid))} (at most {gpu.gpus} on {gpu.name})")
        if c.tp > gpu.gpus:
            raise UsageError(f"--tp {c.tp} needs {c.tp} GPUs; {gpu.name} has {gpu.gpus}",
                             f"use --gpus {c.tp} or a profile with more GPUs (see `tritonkit gpus`)")
    u = c.gpu_memory_utilization
    if u is not None and not 0 < u <= 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], got {u}")
    if c.max_model_len is not None and not 1 <= c.max_model_len <= a.max_position_embeddings:
        raise UsageError(f"--max-model-len {c.max_model_len} is outside 1..{a.max_position_embeddings}, "
                         f"{spec.name}'s context length")
    if c.max_num_seqs is not None and c.max_num_seqs < 1:
        raise UsageError(f"--max-num-seqs must be at least 1, got {c.max_num_seqs}")


# ---------------------------------------------------------------- the planner

def plan(spec: ModelSpec, gpu: GpuProfile, choices: Choices = Choices(),
         alternatives: list[GpuProfile] = ()) -> Plan:
    """The plan, or UsageError for an impossible override, or DoesNotFitError with options."""
    _check_choices(spec, gpu, choices)
    quant = _check_quantization(spec, gpu, choices)
    choices = dataclasses.replace(choices, quantization=quant)
    result = _fit(spec, gpu, choices)
    if isinstance(result, Plan):
        return result
    raise DoesNotFitError(result, _options(spec, gpu, choices, alternatives))


def _fit(spec: ModelSpec, gpu: GpuProfile, c: Choices) -> Plan | str:
    """A Plan, or the reason it does not fit."""
    a = spec.architecture
    dtype, dtype_reason = _choose_dtype(gpu, c)
    weights, formula = weight_bytes(a, dtype, c.quantization)
    util = c.gpu_memory_utilization or (gpu.memory_utilization if gpu.is_cpu else None) \
        or DEFAULT_UTILIZATION
    want = c.max_model_len or min(a.max_position_embeddings, MIN_CONTEXT)
    full = c.max_model_len or a.max_position_embeddings
    tps = [c.tp] if c.tp else _tp_candidates(a, gpu)
    sizing = None
    for tp in tps:
        sizing = _size(a, gpu, dtype, weights, tp, util, c, full)
        if sizing.kv_tokens >= want:
            break
    else:
        return _why_not(spec, gpu, dtype, util, sizing, want)
    tp = sizing.tp
    tp_reason = ("--tp" if c.tp else "one engine on the CPU" if gpu.is_cpu
                 else f"smallest that fits ({gpu.gpus} GPU{'s' * (gpu.gpus > 1)})")
    if c.max_model_len:
        max_len, len_reason = c.max_model_len, "--max-model-len"
    elif sizing.kv_tokens >= a.max_position_embeddings:
        max_len, len_reason = a.max_position_embeddings, "the model's context"
    else:
        max_len = sizing.kv_tokens // CONTEXT_STEP * CONTEXT_STEP
        len_reason = (f"reduced from {a.max_position_embeddings:,}: the KV cache holds "
                      f"{sizing.kv_tokens:,} tokens")
    if c.max_num_seqs:
        seqs, seqs_reason = c.max_num_seqs, "--max-num-seqs"
    else:
        seqs = max(1, min(MAX_NUM_SEQS_CAP, sizing.kv_tokens // TYPICAL_SEQ_TOKENS))
        # How many short requests (the seed's ~100 tokens in + up to ~100 out, rounded up to
        # TYPICAL_SEQ_TOKENS) hold their KV cache at once; more would only queue inside vLLM.
        seqs_reason = (f"{sizing.kv_tokens:,} KV tokens // {TYPICAL_SEQ_TOKENS} (a short request: ~100 tokens in "
                       f"+ ~100 out, rounded up), at most vLLM's {MAX_NUM_SEQS_CAP}")
    return Plan(
        dtype=dtype, dtype_reason=dtype_reason, quantization=c.quantization,
        tensor_parallel_size=tp, tp_reason=tp_reason, gpus=gpu.gpus,
        gpu_memory_bytes=gpu.memory_bytes, gpu_memory_utilization=util,
        budget_bytes=sizing.budget, num_parameters=a.num_parameters, weight_bytes=weights,
        weight_bytes_per_gpu=sizing.weight_per_gpu, weight_formula=formula,
        step_tokens=STEP_TOKENS, activation_bytes=sizing.activation,
        reserve_num_seqs=c.max_num_seqs or MAX_NUM_SEQS_CAP, logits_bytes=sizing.logits,
        lora_bytes=sizing.lora, overhead_bytes=OVERHEAD_BYTES, reserve_bytes=sizing.reserve,
        kv_cache_bytes=sizing.kv_cache, kv_bytes_per_token=kv_bytes_per_token(a, dtype),
        kv_bytes_per_token_per_gpu=sizing.kv_per_token_gpu, block_size=BLOCK_SIZE,
        kv_blocks=sizing.blocks, kv_tokens=sizing.kv_tokens,
        model_context=a.max_position_embeddings, max_model_len=max_len,
        max_model_len_reason=len_reason, full_length_sequences=sizing.kv_tokens // max_len,
        max_num_seqs=seqs, max_num_seqs_reason=seqs_reason,
        cpu_kv_cache_space_gib=sizing.cpu_kv_gib)


def _why_not(spec: ModelSpec, gpu: GpuProfile, dtype: str, util: float, s: _Sizing,
             want: int) -> str:
    where = (f"{spec.name} in {dtype} does not fit the cpu profile ({gpu.memory_mib / 1024:.1f} GiB RAM)"
             if gpu.is_cpu else f"{spec.name} in {dtype} does not fit {gpu.name} ({gpu.gpus} × {gpu.gpu})")
    if s.budget - s.weight_per_gpu - s.reserve <= 0:
        return (f"{where}: weights {_gib(s.weight_per_gpu)} per GPU at tp {s.tp} + reserve "
                f"{_gib(s.reserve)} exceed the {_gib(s.budget)} vLLM gets ({util:.0%} of "
                f"{_gib(gpu.memory_bytes)})")
    return (f"{where}: at tp {s.tp} the KV cache holds {s.kv_tokens:,} tokens, "
            f"fewer than the {want:,} one sequence needs")


def _why_gpu(fit: Plan, p: GpuProfile) -> str:
    """Why this profile works: the tensor-parallel split, and what is left for the KV cache."""
    memory = f"{_gib(p.memory_bytes)} {p.gpu}"
    if fit.tensor_parallel_size == 1:
        return (f"one {memory} holds the {_gib(fit.weight_bytes_per_gpu)} of weights "
                f"and {fit.kv_tokens:,} tokens of KV cache")
    return (f"tp {fit.tensor_parallel_size} is the smallest split that fits: "
            f"{_gib(fit.weight_bytes_per_gpu)} of weights per {memory} leaves {fit.kv_tokens:,} tokens of KV cache")


def _options(spec: ModelSpec, gpu: GpuProfile, c: Choices, alternatives) -> str:
    """Concrete ways out, one a line, each with why: other GPUs, a quantised variant, a shorter context."""
    found = []  # (option, why)
    free = dataclasses.replace(c, tp=None)
    same_family = [p for p in alternatives if p.family == gpu.family]
    others = [p for p in alternatives if p.family != gpu.family]
    for group, limit in ((same_family, 1), (others, 2)):
        for p in group:
            if limit == 0:
                break
            fit = _try(spec, p, free)
            if isinstance(fit, Plan):
                found.append((f"--gpu {p.name} ({p.gpus} × {p.gpu}, {p.instance}, "
                              f"${p.price_per_hour:g}/h, tp {fit.tensor_parallel_size}, "
                              f"{fit.kv_tokens:,} KV tokens)", _why_gpu(fit, p)))
                limit -= 1
    if not spec.prequantized and not c.quantization and not gpu.is_cpu:
        full, _ = weight_bytes(spec.architecture, _choose_dtype(gpu, c)[0], None)
        for method in QUANT_METHODS:
            if method in spec.quantized or (method == "fp8" and gpu.fp8):
                fit = _fit(spec, gpu, dataclasses.replace(c, quantization=method,
                                                          dtype=None if method != "fp8" else c.dtype))
                if isinstance(fit, Plan):
                    variant = spec.quantized.get(method, "quantised when loaded")
                    bits = "8-bit" if method == "fp8" else "4-bit"
                    found.append((f"--quantization {method} ({variant}, weights "
                                  f"{_gib(fit.weight_bytes)}, {fit.kv_tokens:,} KV tokens)",
                                  f"{bits} weights take {_gib(fit.weight_bytes)} instead of {_gib(full)} "
                                  f"(answers may differ slightly from the full-precision model)"))
    if gpu.is_cpu and (c.dtype or "float32") == "float32":
        fit = _fit(spec, gpu, dataclasses.replace(c, dtype="bfloat16"))
        if isinstance(fit, Plan):
            found.append((f"--dtype bfloat16 ({fit.kv_tokens:,} KV tokens)",
                          "half the bytes of float32 for every weight and every KV-cache entry"))
    shorter = _fit(spec, gpu, dataclasses.replace(c, max_model_len=None))
    if c.max_model_len and isinstance(shorter, Plan):
        found.append((f"--max-model-len {shorter.kv_tokens // BLOCK_SIZE * BLOCK_SIZE} or less",
                      f"one sequence must fit in the KV cache, which holds {shorter.kv_tokens:,} tokens"))
    elif not isinstance(shorter, Plan):
        tokens = _max_tokens(spec, gpu, c)
        if tokens >= BLOCK_SIZE:
            found.append((f"a shorter context: --max-model-len {tokens} (the KV cache holds {tokens:,} tokens)",
                          f"below the {MIN_CONTEXT:,} tokens tritonkit plans for at least, but it serves"))
    if not found:
        return "no listed GPU profile fits it; see `tritonkit gpus`"
    return "options:\n" + "\n".join(f"  {option}\n      why: {why}" for option, why in found)


def _try(spec: ModelSpec, gpu: GpuProfile, c: Choices) -> Plan | str | None:
    """_fit on another profile; None where the user's own flags rule it out (e.g. fp8 on an A10)."""
    try:
        _choose_dtype(gpu, c)
        return _fit(spec, gpu, dataclasses.replace(c, quantization=_check_quantization(spec, gpu, c)))
    except UsageError:
        return None


def _max_tokens(spec: ModelSpec, gpu: GpuProfile, c: Choices) -> int:
    """The most KV tokens any allowed tp gives on this GPU (0 if the weights do not fit)."""
    a = spec.architecture
    dtype, _ = _choose_dtype(gpu, c)
    weights, _ = weight_bytes(a, dtype, c.quantization)
    util = c.gpu_memory_utilization or gpu.memory_utilization or DEFAULT_UTILIZATION
    tps = [c.tp] if c.tp else _tp_candidates(a, gpu)
    return max(_size(a, gpu, dtype, weights, t, util, c, a.max_position_embeddings).kv_tokens
               for t in tps)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"

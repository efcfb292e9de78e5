"""The seed study's published numbers (10-minute Vegeta runs, classification task, 100 in / ~4-6 out tokens).

Rows of seed-benchmarks.csv (the processed results of "Exploring delivery methods for LLMs to
customers", Georgian, 2024): model, gpu, server, target req/s, p90 latency (s), achieved req/s,
$/1K tokens. They stand beside a comparison only where the model and GPU match what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedRow:
    model: str
    gpu: str  # "a10" (AWS g5.4xlarge A10G) or "a100" (GCP A100 40GB)
    server: str  # tgi, vllm, triton_vllm, ray_llm
    target_rps: float
    p90_s: float
    achieved_rps: float
    cost_per_1k: float


ROWS = [SeedRow(*r) for r in (
    ("llama_13b", "a100", "tgi", 30.0, 0.202, 29.667, 0.0003766026),
    ("llama_13b", "a100", "vllm", 10.0, 0.255, 10.000, 0.0010747863),
    ("llama_7b", "a10", "tgi", 40.0, 0.471, 39.000, 0.0001084402),
    ("llama_7b", "a100", "tgi", 40.0, 0.471, 39.000, 0.0002824519),
    ("llama_7b", "a10", "tgi", 20.0, 0.866, 19.000, 0.0002168803),
    ("llama_7b", "a10", "vllm", 10.0, 0.997, 9.667, 0.0004337607),
    ("llama_7b", "a100", "vllm", 20.0, 0.283, 20.000, 0.0005373932),
    ("llama_7b", "a10", "triton_vllm", 10.0, 0.742, 9.500, 0.0004337607),
    ("redp_3b", "a10", "tgi", 30.0, 0.448, 29.667, 0.0001445869),
    ("redp_3b", "a100", "tgi", 60.0, 0.246, 59.000, 0.0001883013),
    ("redp_3b", "a10", "vllm", 30.0, 0.926, 29.333, 0.0001445869),
    ("redp_3b", "a100", "vllm", 60.0, 4.423, 59.000, 0.0001791311),
    ("redp_3b", "a10", "triton_vllm", 10.0, 0.305, 10.000, 0.0004337607),
    ("redp_7b", "a10", "tgi", 10.0, 1.348, 9.000, 0.0004337607),
    ("redp_7b", "a10", "tgi", 20.0, 0.676, 19.000, 0.0002168803),
    ("redp_7b", "a10", "triton_vllm", 10.0, 0.830, 9.333, 0.0004337607),
)]
# (The seed's Ray row is a chat run of 22 s at 4 req/s, not the classification task: left out.)

SEED_RATES = (10.0, 20.0, 40.0)  # the request rates the seed published p90 latencies at
MODELS = {"llama2-7b": "llama_7b", "llama2-13b": "llama_13b", "redpajama-3b": "redp_3b", "redpajama-7b": "redp_7b"}
GPUS = {"a10": "a10", "a100-40gb": "a100"}  # tritonkit GPU profile -> the seed's GPU
GPU_NAMES = {"a10": "A10G", "a100": "A100 40GB"}


def rows_for(model: str | None, gpu_profile: str | None) -> list[SeedRow]:
    """The published rows for this model on this GPU profile (none where the seed measured neither)."""
    seed_model, seed_gpu = MODELS.get(model or ""), GPUS.get(gpu_profile or "")
    return [r for r in ROWS if r.model == seed_model and r.gpu == seed_gpu]


def describe_match(model: str | None, gpu_profile: str | None) -> str:
    if (model or "") not in MODELS:
        return f"the seed published no numbers for {model} (it measured {', '.join(MODELS)})"
    if (gpu_profile or "") not in GPUS:
        return (f"the seed published no numbers on GPU profile {gpu_profile} (it measured A10G as profile a10 "
                "and A100 40GB as a100-40gb)")
    return f"seed rows: {MODELS[model]} on {GPU_NAMES[GPUS[gpu_profile]]}, 10-minute constant-rate runs"

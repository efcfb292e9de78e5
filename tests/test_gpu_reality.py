"""perf/gpu_reality.py's pure parts: GPU -> profile, model.json -> vLLM's command line, the table.

The table is checked on the run recorded on the lent H100 (perf/results/gpu-reality-h100.json).
The whole flow (build, Triton, vLLM, sweeps) runs on CPU with `--model tiny-llama --gpu cpu`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "perf" / "results" / "gpu-reality-h100.json"


@pytest.fixture(scope="module")
def gr():
    spec = importlib.util.spec_from_file_location("gpu_reality", ROOT / "perf" / "gpu_reality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, mib, profile", [
    ("NVIDIA H100 80GB HBM3", 81559, "h100"), ("NVIDIA H200", 143771, "h200"),
    ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"), ("NVIDIA A100-PCIE-40GB", 40960, "a100-40gb"),
    ("NVIDIA A10G", 23028, "a10"), ("NVIDIA L4", 23034, "l4"), ("Tesla T4", 15360, "t4"),
    ("NVIDIA GeForce RTX 4090", 24564, None),
])
def test_gpu_name_to_profile(gr, name, mib, profile):
    assert gr.profile_for({"name": name, "memory_mib": mib}) == profile


def test_engine_args_become_the_openai_servers_flags(gr):
    args = {"model": "/m", "disable_log_stats": False, "dtype": "bfloat16", "tensor_parallel_size": 1,
            "max_model_len": 4096, "max_num_seqs": 256, "gpu_memory_utilization": 0.9, "enable_lora": True}
    cmd = gr.engine_cli(args, "llama2-7b", 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flat = " ".join(cmd[3:])
    assert "--served-model-name llama2-7b" in flat and "--port 8123" in flat
    assert "--model /m --dtype bfloat16 --tensor-parallel-size 1 --max-model-len 4096 --max-num-seqs 256 " \
           "--gpu-memory-utilization 0.9 --enable-lora" in flat
    assert "disable-log-stats" not in flat  # False: the server's default (stats logged)


def test_recorded_h100_table(gr):
    state = json.loads(RECORDED.read_text())
    assert state["gpu"]["name"].startswith("NVIDIA H100") and state["versions"]["vllm"] == "0.25.0"
    assert state["build"]["model"]["random_weights"] is True
    for server in ("triton", "vllm"):
        state["headline"][server] = gr.headline(state[server], state["price_per_hour"], state["rates"],
                                                state["concurrency"])
    t, v = state["headline"]["triton"], state["headline"]["vllm"]
    # Every step met p90 < 1 s: the maxima are lower bounds, and the table says so.
    assert t["max_is_lower_bound"] and v["max_is_lower_bound"]
    assert t["failed_requests"] == v["failed_requests"] == 0
    assert t["mean_input_tokens"] == 100 and t["mean_output_tokens"] == 6
    text = gr.table(state)
    assert ">= 357.7" in text and ">= 317.7" in text
    row = next(line for line in text.splitlines() if line.startswith("| max RPS"))
    assert row.split("|")[-2].strip() == ""  # no ratio of two lower bounds (reached at different loads)
    assert "| p90 e2e at 20 RPS (s)" in text and "0.046" in text and "0.045" in text
    assert "seed (10-minute runs)" in text and "0.742" in text and "0.283" in text
    # Seed formula: $/h / (req/s × 3600 × tokens) × 1000 at concurrency 128 (357.7 req/s, 106 tokens).
    rps = t["rps_at_top_concurrency"]
    assert t["cost_per_1k_tokens_at_top_concurrency"] == pytest.approx(11.061 / (rps * 3600 * 106) * 1000)


def test_a_found_boundary_gives_a_ratio(gr):
    state = json.loads(RECORDED.read_text())
    for server in ("triton", "vllm"):  # pretend the top step missed the SLO
        state[server] = copy.deepcopy(state[server])
        top = state[server]["concurrency"]["steps"][-1]
        top["latency_s"]["e2e"]["p90"] = 1.5
        state["headline"][server] = gr.headline(state[server], state["price_per_hour"], state["rates"],
                                                state["concurrency"])
    assert not state["headline"]["triton"]["max_is_lower_bound"]
    row = next(line for line in gr.table(state).splitlines() if line.startswith("| max RPS"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "318.2" and cells[2] == "317.7" and cells[3] == "1.00"


def test_cli_rejects_unknown_phases(gr, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        gr.main(["--phase", "nope", "--out", str(tmp_path)])

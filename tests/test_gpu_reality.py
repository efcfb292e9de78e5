"""perf/gpu_reality.py, now a thin use of `tritonkit compare`: GPU -> profile, and the run recorded on
the lent H100 (perf/results/gpu-reality-h100.json, by the earlier standalone script) re-reported
through compare's table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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


def test_recorded_h100_run_re_reported_by_compare(gr, tmp_path):
    out = gr.import_state(json.loads(RECORDED.read_text()), tmp_path / "h100")
    p = subprocess.run([sys.executable, "-m", "tritonkit", "compare", "--out", str(out), "--report-only"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = p.stdout
    # Every step met p90 < 1 s: the maxima are lower bounds, and no ratio is made of two of them.
    row = next(line for line in text.splitlines() if line.startswith("| max req/s"))
    assert ">= 357.7" in row and ">= 317.7" in row and "n/a (lower bound)" in row
    p90 = next(line for line in text.splitlines() if line.startswith("| p90 e2e at 20 req/s"))
    assert "0.046" in p90 and "0.045" in p90
    # The seed measured no H100: no published rows, and the table says why.
    assert "seed, published" not in text and "no numbers on GPU profile h100" in text
    # That run did not pin the engine arguments: the notes say so.
    assert "engines STILL DIFFERED in: scheduler_config.max_num_batched_tokens" in text and "max_num_batched_tokens" in text
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 0


def test_recorded_run_capacity_plan(gr, tmp_path):
    out = gr.import_state(json.loads(RECORDED.read_text()), tmp_path / "h100")
    p = subprocess.run([sys.executable, "-m", "tritonkit", "plan-capacity", str(out), "--target-rps", "2000"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # 2000 / 357.7 -> at most 6 H100s for Triton at $11.061/h: 6 × 11.061 × 730 = $48,447 a month.
    line = next(x for x in p.stdout.splitlines() if x.startswith("| Triton + vLLM (local)"))
    assert "<= 6" in line and "48,447" in line
    assert (out / "capacity.md").is_file()

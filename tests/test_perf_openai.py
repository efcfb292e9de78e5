"""tritonkit perf against vLLM's own OpenAI-compatible server (real vLLM on the CPU).

The same harness that measures Triton measures standalone vLLM, TGI or Ray Serve through the
OpenAI completions stream: here vLLM's api_server serves the tiny model and `tritonkit perf
--protocol openai` drives it; output token counts come from the server's usage records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tritonkit.runtime.local import stop_group
from tritonkit.runtime.spec import free_port

pytestmark = pytest.mark.slow
IN, OUT = 50, 8


@pytest.fixture(scope="module")
def openai_server(tiny_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("openai") / "vllm.log"
    # As tritonkit builds a small CPU machine's engine: eager, the worker inside the engine core.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                                 "--model", str(tiny_model), "--served-model-name", "tiny",
                                 "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
                                 "--distributed-executor-backend", "uni",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/v1/models", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vLLM's OpenAI server was not ready in 300 s"
            time.sleep(1)
        yield url
    finally:
        stop_group(proc.pid, 30, proc)


def test_constant_rate_over_openai(openai_server, tiny_model, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url", openai_server,
                        "--model", "tiny", "--tokenizer", str(tiny_model), "--price", "1.0",
                        "--metrics-url", "none", "--rate", "4", "--requests", "12",
                        "--input-tokens", str(IN), "--output-tokens", str(OUT), "--json", "--out", str(out)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    step = doc["steps"][0]
    assert step["sent"] == 12 and step["ok"] == 12 and step["failed"] == 0
    assert step["output_tokens"] == 12 * OUT  # the server's usage, with ignore_eos
    lat = step["latency_s"]
    assert lat["e2e"]["p50"] >= lat["ttft"]["p50"] > 0
    assert doc["cost"]["per_1k_tokens"] > 0
    assert (out / "report.html").stat().st_size > 0


def test_unknown_model_over_openai(openai_server, tmp_path):
    p = subprocess.run([sys.executable, "-m", "tritonkit", "perf", "--protocol", "openai", "--url", openai_server,
                        "--model", "nope", "--metrics-url", "none", "--rate", "1", "--requests", "1",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "does not serve model 'nope' (it has: tiny)" in p.stderr
    assert "Traceback" not in p.stderr

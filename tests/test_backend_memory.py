"""Failed requests must not cost the backend memory, and a stopped server leaves no engine
folders behind (issue 9: before supervision, the soak's backend stub grew ~21 KiB per failed
request). Runs perf/stub_errors.py short on a real Triton + vLLM server (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "stub_errors.py"
KINDS = ("bad_json", "engine_error", "stream_echo", "engine_down")
LIMIT_KIB = 2.0  # per failed request; the leak was ~21


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_failed_requests_leave_the_stub_flat_and_no_engine_folders(tmp_path):
    tmp = tmp_path / "tmp"  # the server's $TMPDIR: the backend's engine folders go there
    tmp.mkdir()
    out = tmp_path / "out"
    got = subprocess.run([sys.executable, str(SCRIPT), "--requests", "300", "--warmup", "100",
                          "--limit-kib", str(LIMIT_KIB), "--out", str(out)],
                         env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=1400)
    results = json.loads((out / "stub_errors.json").read_text())
    assert set(results) == set(KINDS), got.stdout + got.stderr[-3000:]
    for kind, r in results.items():
        assert (r["failed"], r["ok"]) == (300, 0), (kind, r)
        assert r["kib_per_request"]["stub"]["VmRSS"] <= LIMIT_KIB, (kind, got.stdout)
    # the engine was killed and not restarted: the model is down, its stub gone, Triton refuses
    assert results["engine_down"]["after_kib"]["stub"]["VmRSS"] == 0
    assert got.returncode == 0, got.stdout
    left = sorted(p.name for p in tmp.iterdir() if p.name.startswith(("tritonkit-engines-", "tk-engine-")))
    assert left == []

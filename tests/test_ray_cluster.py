"""`tritonkit serve --runtime ray --address`: deploy onto a Ray cluster tritonkit did not start.

The test starts a real Ray head itself (token auth on, its token in tmp), as a cluster's admin
would; tritonkit deploys the tiny model onto it, generates, and `stop` removes only its
application: the cluster keeps running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tritonkit.runtime.ray import session_members
from tritonkit.runtime.spec import free_port
from tritonkit.tinymodel import build_tiny_llama

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve not installed (pip install '.[ray]')")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head of our own: (dashboard URL, environment that holds its token)."""
    root = tmp_path_factory.mktemp("cluster")
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(root / "home"),
           "RAY_USAGE_STATS_ENABLED": "0", "TRITONKIT_HOME": str(root / "tk-home"), "HF_HUB_OFFLINE": "1"}
    temp_dir = tempfile.mkdtemp(prefix="tk-test-ray-", dir="/tmp")  # short: Ray's socket paths
    dashboard = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", f"--port={free_port()}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--temp-dir={temp_dir}", "--object-store-memory=300000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while applications(url, token.read_text()) is None:
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        yield url, env, head.pid, token.read_text()
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            for pid in session_members(head.pid):
                os.kill(pid, sig)
            until = time.monotonic() + wait_s
            while session_members(head.pid) and time.monotonic() < until:
                head.poll()
                time.sleep(0.3)
        head.poll()
        subprocess.run(["rm", "-rf", temp_dir])


def applications(url: str, token: str) -> dict | None:
    req = urllib.request.Request(f"{url}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"})
    try:
        return json.load(urllib.request.urlopen(req, timeout=5))
    except OSError:
        return None


def tk(env, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonkit", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_deploy_onto_a_running_cluster_and_remove_only_the_app(cluster, tmp_path):
    url, env, head_pid, token = cluster
    base = build_tiny_llama(tmp_path / "tiny")
    repo = tmp_path / "repo"
    assert tk(env, "build", str(base), "--gpu", "cpu", "--name", "tiny", "-o", str(repo)).returncode == 0
    http_port = free_port()
    p = tk(env, "serve", "-r", str(repo), "--runtime", "ray", "--address", url, "--detach", "--name", "oncluster",
           "--http-port", str(http_port), "--timeout", "840")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"openai  http://127.0.0.1:{http_port}/v1" in p.stdout
    assert applications(url, token)["applications"]["oncluster"]["status"] == "RUNNING"

    g = tk(env, "generate", "The battery was", "--name", "oncluster", "--protocol", "openai", "--max-tokens", "5",
           "--ignore-eos", timeout=120)
    assert g.returncode == 0 and "5 tokens" in g.stderr, g.stderr

    s = tk(env, "stop", "--name", "oncluster", timeout=120)
    assert s.returncode == 0, s.stderr
    deadline = time.monotonic() + 60
    while "oncluster" in (applications(url, token) or {}).get("applications", {}) and time.monotonic() < deadline:
        time.sleep(1)
    assert "oncluster" not in applications(url, token)["applications"]
    assert session_members(head_pid)  # the cluster itself still runs

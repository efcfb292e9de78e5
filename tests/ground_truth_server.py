"""The ground-truth Triton server of the perf and client tests (perf/ground_truth_repo: a decoupled
Python model with known timings), started on free ports."""

from __future__ import annotations

import os
from pathlib import Path

from tritonkit.runtime.local import LocalServer
from tritonkit.runtime.spec import ServerSpec, free_port

REPO = Path(__file__).resolve().parent.parent / "perf" / "ground_truth_repo"


def start_ground_truth(name: str) -> LocalServer:
    spec = ServerSpec(repository=REPO, name=f"{name}-{os.getpid()}", http_port=free_port(),
                      grpc_port=free_port(), metrics_port=free_port())
    server = LocalServer(spec)
    server.start()
    server.wait_ready(["ground_truth"], 120)
    return server

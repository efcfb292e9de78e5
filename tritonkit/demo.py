"""The built-in demo: the whole chain on the tiny built-in model, on this machine.

build (tiny-llama, cpu profile) -> serve (local runtime, detached) -> perf (the seed's
classification preset, briefly) -> stop. Each step is the real `tritonkit` command, run as a child
process so the demo shows exactly what a user would type.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tritonkit.errors import Interrupted, TritonkitError
from tritonkit.runtime.spec import free_port, port_is_free


def _ports() -> list[int]:
    usual = [8000, 8001, 8002]
    return usual if all(port_is_free(p) for p in usual) else [free_port(), free_port(), free_port()]


def demo_steps(workdir: Path, duration_s: float, rate: float) -> tuple[list[list[str]], list[str]]:
    """The commands of the demo (run in order) and the one that stops the server."""
    repo = workdir / "model_repository"
    http, grpc, metrics = _ports()
    name = "demo"
    steps = [
        ["build", "tiny-llama", "--gpu", "cpu", "-o", str(repo), "--force"],
        ["serve", "-r", str(repo), "--runtime", "local", "--detach", "--name", name,
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        ["generate", "The hotel room was", "--name", name, "--max-tokens", "16", "--ignore-eos"],
        ["perf", "-r", str(repo), "--url", f"127.0.0.1:{grpc}", "--metrics-url", f"127.0.0.1:{metrics}",
         "--preset", "classification", "--rate", f"{rate:g}", "--duration", f"{duration_s:g}",
         "--out", str(workdir / "perf-results")],
    ]
    return steps, ["stop", "--name", name]


def run_demo(workdir: Path, duration_s: float = 20, rate: float = 5,
             echo: Callable[[str], None] = print) -> None:
    steps, stop = demo_steps(workdir, duration_s, rate)
    served = False
    try:
        for step in steps:
            echo(f"\n$ tritonkit {shlex.join(step)}")
            code = subprocess.call([sys.executable, "-m", "tritonkit", *step])
            if code != 0:
                raise TritonkitError(f"demo step `tritonkit {step[0]}` failed (exit {code})",
                                     "see its message above")
            served = served or step[0] == "serve"
    except KeyboardInterrupt:
        raise Interrupted("demo interrupted", "what was measured so far is in the output directory") from None
    finally:
        if served:
            echo(f"\n$ tritonkit {shlex.join(stop)}")
            subprocess.call([sys.executable, "-m", "tritonkit", *stop])

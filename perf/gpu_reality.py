"""GPU reality check: the seed's classification workload on a real GPU, delivery methods compared.

A thin use of `tritonkit compare`: on a machine with an NVIDIA GPU and the CUDA build of vLLM,

1. detect the GPU (nvidia-smi, else torch) and pick its tritonkit profile (H100 -> h100);
2. `tritonkit build llama2-7b --gpu <profile> --random-weights` (the exact architecture, random
   weights: with the output length fixed, latency and throughput are the real model's);
3. `tritonkit compare` on that build: Triton (local runtime), standalone vLLM and, where Ray is
   installed, Ray Serve, one after another with identical pinned engine arguments, the seed's
   classification preset as an open-loop rate sweep and a closed-loop concurrency sweep; the table
   (OUT/compare.md), the plot, every step (OUT/runs, OUT/perf). `--resume` is always passed, so a
   call cut short by a time limit continues where it stopped.

    python perf/gpu_reality.py --out results/gpu-reality                 # everything
    python perf/gpu_reality.py --model tiny-llama --gpu cpu --rates 2,4  # the same flow on a CPU
    python perf/gpu_reality.py --import-state perf/results/gpu-reality-h100.json --out DIR
        # re-report a run recorded by the earlier, standalone version of this script (2026-11-25,
        # one H100): its Triton and vLLM runs become a compare folder; they were NOT run with pinned
        # engine arguments (issue 8: max_num_batched_tokens 2048 in Triton vs 8192 in vLLM's server)

perf/device_compare.sh runs this flow on the lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPU_PROFILES = [  # (substring of nvidia-smi's name, minimum memory in MiB or None, profile)
    ("H200", None, "h200"), ("H100", None, "h100"), ("A100", 60000, "a100-80gb"), ("A100", 0, "a100-40gb"),
    ("A10", None, "a10"), ("L4", None, "l4"), ("T4", None, "t4"),
]
# What the earlier script's runs did not pin, as issue 8 found it in the servers' logs (H100).
UNPINNED_H100 = {"scheduler_config.max_num_batched_tokens": {"triton": 2048, "openai": 8192}}


def detect_gpu() -> dict:
    """name, memory, driver and count of the GPUs (nvidia-smi); {} without one."""
    from tritonkit.compare.run import _device

    found = _device()
    return found if found.get("count") else {}


def profile_for(gpu: dict) -> str | None:
    name = gpu.get("name", "").upper()
    for key, min_mib, profile in GPU_PROFILES:
        if key in name and (min_mib is None or gpu.get("memory_mib", 0) >= min_mib):
            if key == "A10" and "A100" in name:
                continue
            return profile
    return None


def import_state(state: dict, out: Path) -> Path:
    """An earlier gpu_reality state (triton and vllm sweeps) -> a compare folder."""
    from tritonkit.compare import results

    build = state.get("build", {})
    setup = results.Setup(
        model=state["model"], repository="(recorded on the device)", methods=["triton-local", "vllm"],
        baseline="triton-local", repeat=1, preset="classification", rates=state.get("rates"),
        concurrency=state.get("concurrency"), slo="e2e:p90<=1s", window_s=state.get("window_s", 3.0),
        max_step_s=state.get("max_step_s", 12.0), warmup_s=state.get("warmup_s", 2.0), duration_s=None,
        price_per_hour=state.get("price_per_hour"), price_source=state.get("price_source") or "",
        gpu_profile=state.get("profile"), random_weights=bool(build.get("model", {}).get("random_weights")),
        engine_args=build.get("engine_args", {}),
        pinning={"pinned": build.get("engine_args", {}), "pins": {},
                 "residual": UNPINNED_H100 if state.get("profile") in ("h100", "h200") else {}},
        device=state.get("gpu", {}), versions=state.get("versions", {}), command=state.get("command", ""))
    results.save_setup(out, setup)
    for server, method in (("triton", "triton-local"), ("vllm", "vllm")):
        if state.get(server):
            results.save_run(out, results.MethodRun(method, 1, "ok", ready_s=state.get(f"{server}_ready_s"),
                                                    server_command=state.get(f"{server}_command", ""),
                                                    sweeps=state[server]))
    return out


def tritonkit(*args: str) -> None:
    print("$ tritonkit " + " ".join(args), flush=True)
    code = subprocess.run([sys.executable, "-m", "tritonkit", *args], cwd=ROOT).returncode
    if code != 0:
        raise SystemExit(f"tritonkit {args[0]} failed (exit {code})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-reality-results", help="the compare folder (table, plot, every step)")
    ap.add_argument("--work", default=None, help="where the model repository goes (default: OUT/work)")
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--gpu", default="auto", help="tritonkit GPU profile, or auto (from nvidia-smi)")
    ap.add_argument("--methods", default=None, help="default: triton-local,vllm (and ray where Ray is installed)")
    ap.add_argument("--rates", default="10,20,40,80,160,320,480")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--window", default="3")
    ap.add_argument("--max-step", default="12")
    ap.add_argument("--warmup", default="2")
    ap.add_argument("--repeat", default="1")
    ap.add_argument("--start-timeout", default="900")
    ap.add_argument("--target-rps", default=None, help="also plan capacity for this load")
    ap.add_argument("--import-state", default=None, help="re-report an earlier gpu_reality state JSON into --out")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.import_state:
        import_state(json.loads(Path(args.import_state).read_text()), out)
        tritonkit("compare", "--out", str(out), "--report-only")
        return 0
    from tritonkit import catalog
    from tritonkit.runtime.base import RUNTIMES

    profile = args.gpu if args.gpu != "auto" else profile_for(detect_gpu())
    if profile is None:
        raise SystemExit("no GPU profile for this machine (no GPU found?): pass --gpu PROFILE")
    repo = (Path(args.work).resolve() if args.work else out / "work") / "repo"
    if not (repo / args.model / "build.json").is_file():
        extra = [] if catalog.resolve(args.model).builtin else ["--random-weights"]
        tritonkit("build", args.model, "--gpu", profile, *extra, "-o", str(repo), "--force")
    methods = args.methods or "triton-local,vllm" + (",ray" if "ray" in RUNTIMES and _ray_importable() else "")
    extra = ["--target-rps", args.target_rps] if args.target_rps else []
    tritonkit("compare", "-r", str(repo), "--methods", methods, "--preset", "classification", "--rates", args.rates,
              "--concurrency", args.concurrency, "--window", args.window, "--max-step", args.max_step,
              "--warmup", args.warmup, "--repeat", args.repeat, "--timeout", args.start_timeout, "--gpu", profile,
              "--out", str(out), "--resume", *extra)
    return 0


def _ray_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import ray.serve.llm"], capture_output=True).returncode == 0


if __name__ == "__main__":
    sys.exit(main())

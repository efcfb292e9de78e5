"""`tritonkit compare`, its serving side: the engine-argument pinning (its pure parts here; vLLM's
own resolution in a child process under an emulated H100's defaults), and the slow test that serves
the tiny model by each method in turn for a few seconds of load each. The table, resume and
capacity are unit-tested in test_compare.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonkit import buildrecord
from tritonkit.compare import pinning
from tritonkit.errors import UsageError

from test_serve import engine_processes  # live processes whose command line names a marker

TRITONKIT = [sys.executable, "-m", "tritonkit"]


# ---------------------------------------------------------------- the vllm runtime

def test_vllm_runtime_command_serves_the_pinned_arguments_and_adapters(tmp_path, monkeypatch):
    from tritonkit.runtime.base import RUNTIMES, server_class
    from tritonkit.runtime.spec import ServerSpec
    from tritonkit.runtime.vllm_server import VllmServer

    assert RUNTIMES["vllm"].endswith(":VllmServer") and server_class("vllm") is VllmServer
    assert VllmServer.api == "openai"
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "multi_lora.json").write_text(json.dumps({"b": "/ad/b", "a": "/ad/a"}))
    build = buildrecord.BuildRecord(model_name="m", model=buildrecord.ModelInfo(name="x", source="/m"),
                                    gpu=buildrecord.GpuInfo(profile="cpu"),
                                    engine_args={"model": "/m", "enable_lora": True})
    seen = {}

    def fake_resolve(args, env=None):
        seen["args"], seen["env"] = args, env
        return pinning.Pinning(args, {**args, "max_num_batched_tokens": 2048},
                               openai_argv=["--model", "/m", "--enable-lora", "--max-num-batched-tokens", "2048"])

    monkeypatch.setattr(pinning, "resolve", fake_resolve)
    server = VllmServer(ServerSpec(repository=repo, http_port=8123, env={"VLLM_CPU_KVCACHE_SPACE": "1"}), [build])
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert " ".join(cmd[3:]) == ("--host 127.0.0.1 --port 8123 --served-model-name m --model /m --enable-lora "
                                 "--max-num-batched-tokens 2048 --lora-modules a=/ad/a b=/ad/b")
    assert seen == {"args": build.engine_args, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    with pytest.raises(UsageError, match="serves one tritonkit build"):
        VllmServer(ServerSpec(repository=repo), [build, build]).command()


# ---------------------------------------------------------------- pinning

def test_pinning_differences_and_openai_flags():
    import argparse

    configs = {"triton": {"scheduler_config.max_num_batched_tokens": 2048, "parallel_config.instance_id": "a", "x": 1},
               "openai": {"scheduler_config.max_num_batched_tokens": 8192, "parallel_config.instance_id": "b", "x": 1},
               "ray": {"scheduler_config.max_num_batched_tokens": 8192, "parallel_config.instance_id": "c", "x": 1}}
    assert pinning.differences(configs) == {"scheduler_config.max_num_batched_tokens":
                                            {"triton": 2048, "openai": 8192, "ray": 8192}}
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--enable-lora", action=argparse.BooleanOptionalAction)
    parser.add_argument("--disable-log-stats", action="store_true")
    parser.add_argument("--compilation-config", "-cc")
    argv = pinning.openai_argv({"max_num_seqs": 8, "enable_lora": False, "disable_log_stats": False,
                                "compilation_config": {"level": 0}}, parser)
    assert argv == ["--max-num-seqs", "8", "--no-enable-lora", "--compilation-config", '{"level": 0}']
    with pytest.raises(ValueError, match="no flag for engine argument 'bogus'"):
        pinning.openai_argv({"bogus": 1}, parser)


@pytest.mark.slow
def test_vllm_pins_what_its_openai_server_defaults_differently(tiny_model):
    """Real vLLM, in a child, with an H100's batch defaults (8192 tokens for the OpenAI server,
    2048 inside Triton's engine): the pinning finds max_num_batched_tokens (and max_num_seqs when
    model.json leaves it unset), and the pinned arguments resolve identically everywhere."""
    code = f"""
import json
from vllm.engine.arg_utils import EngineArgs
from vllm.usage.usage_lib import UsageContext as U
EngineArgs.get_batch_defaults = classmethod(lambda cls, ws: (
    {{U.LLM_CLASS: 16384, U.OPENAI_API_SERVER: 8192}}, {{U.LLM_CLASS: 1024, U.OPENAI_API_SERVER: 1024}}))
from tritonkit.compare.pinning import pin
p = pin({{"model": {str(tiny_model)!r}, "dtype": "float32", "max_model_len": 512}})
print("RESULT " + json.dumps(p.to_json(), default=str))
"""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    p = pinning.Pinning.from_json(json.loads(line[7:]))
    assert p.pins["max_num_batched_tokens"] == {"triton": 2048, "openai": 8192, "ray": 8192}
    assert p.pins["max_num_seqs"] == {"triton": 128, "openai": 1024, "ray": 1024}
    assert p.pinned["max_num_batched_tokens"] == 2048 and p.pinned["max_num_seqs"] == 128
    assert p.identical and "--max-num-batched-tokens" in p.openai_argv
    assert "pinned max_num_batched_tokens=2048" in "\n".join(p.describe())


# ---------------------------------------------------------------- the real thing, on the tiny model

@pytest.fixture(scope="module")
def compared(tiny_model, tmp_path_factory):
    """`tritonkit compare` on the tiny model: each method in turn, a few seconds of load each.
    Ray Serve is left out here: a third server start cost ~130 s of CI's 40 minutes, and Ray
    Serve runs end to end in test_ray.py and test_ray_cluster.py; its rows, pins and capacity
    plan in a compare are checked above without a cluster."""
    root = tmp_path_factory.mktemp("compare")
    repo = root / "repo"
    subprocess.run([*TRITONKIT, "build", str(tiny_model), "--gpu", "cpu", "--name", "tiny", "-o", str(repo)],
                   check=True, capture_output=True, timeout=300)
    chosen = "triton-local,vllm"
    out = root / "out"
    p = subprocess.run([*TRITONKIT, "compare", "-r", str(repo), "--methods", chosen, "--rates", "2,4",
                        "--window", "1", "--max-step", "2", "--warmup", "0.5", "--price", "1.0", "--out", str(out),
                        "--slo", "e2e:p90<=60s",  # a busy 2-core machine must not end the sweep early
                        "--timeout", "400", "--target-rps", "50"],
                       capture_output=True, text=True, timeout=1500)
    return {"proc": p, "out": out, "repo": repo, "methods": chosen.split(",")}


@pytest.mark.slow
def test_compare_serves_each_method_in_turn_and_writes_the_table(compared):
    p, out = compared["proc"], compared["out"]
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("| metric") and "Triton + vLLM (local)" in lines[0] and "standalone vLLM" in lines[0]
    assert "vllm / triton-local" in lines[0]
    row = next(x for x in lines if x.startswith("| max req/s at e2e p90 <= 60 s"))
    cells = [c.strip() for c in row.split("|")[2:2 + len(compared["methods"])]]
    assert all(c.removeprefix(">= ").replace(".", "").isdigit() for c in cells), row
    assert "after pinning: identical engine configuration" in p.stderr
    for method in compared["methods"]:
        run = json.loads((out / "runs" / f"{method}-1.json").read_text())
        assert run["status"] == "ok", run["message"]
        steps = run["sweeps"]["rate"]["steps"]
        assert [s["value"] for s in steps] == [2.0, 4.0] and all(s["ok"] > 0 and s["failed"] == 0 for s in steps)
        assert all(s["mean_output_tokens"] == 6 for s in steps)  # the preset's exact output length, every method
        assert (out / "logs" / f"{method}-1.log").stat().st_size > 0
    assert (out / "compare.png").stat().st_size > 0 and "capacity for 50 req/s" in p.stdout
    setup = json.loads((out / "compare.json").read_text())
    assert setup["pinning"]["residual"] == {} and setup["methods"] == compared["methods"]
    # Every server was stopped: its process group is gone (vLLM's engine processes rename themselves,
    # so their command lines cannot be searched), no process names the repository, no record is left.
    from tritonkit.runtime.local import group_alive

    for method in compared["methods"]:
        handle = json.loads((out / "runs" / f"{method}-1.json").read_text())["server_handle"]
        assert handle.get("pid") is None or not group_alive(handle["pid"]), (method, handle)
    assert engine_processes(str(compared["repo"])) == []
    assert "compare-" not in subprocess.run([*TRITONKIT, "status"], capture_output=True, text=True).stdout


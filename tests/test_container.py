"""The docker runtime for real: tritonkit's CPU image in a real container engine (Docker or podman).

`tritonkit image --cpu` builds the image (skipped when an image of the same content is on the
machine); one detached container (tiny Llama, two LoRA adapters in serve mode) answers gRPC and
HTTP streams, LoRA requests and a short `perf`, then `stop` leaves no container. A foreground
container is stopped with Ctrl-C; a model that fails to load, and a start that times out, leave
no container and no record; the HF token passed by name never shows in an argument list, the
image or tritonkit's files. Skipped, saying why, only where no container engine answers
(`bash scripts/test.sh` installs podman where it can).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonkit.client import open_client
from tritonkit.runtime import engine as engines
from tritonkit.runtime import image as images
from tritonkit.runtime.spec import free_port
from tritonkit.tinymodel import build_tiny_llama, build_tiny_lora
from test_serve import default_sigint  # Ctrl-C's default action in the served child

pytestmark = pytest.mark.slow

TRITONKIT = [sys.executable, "-m", "tritonkit"]
PROMPT = "The battery was surprisingly good and"
SECRET = "hf_container_test_token_do_not_leak_9731"
IMAGE_BUILD_TIMEOUT_S = 1800  # cold: ~900 MB of wheels installed into the image; cached: seconds


def _engine() -> engines.Engine:
    found, problem = engines.probe()
    if found is None:
        pytest.skip(f"no container engine answers here ({problem}); `bash scripts/install_container_engine.sh` "
                    "installs podman")
    return found


@pytest.fixture(scope="module")
def engine() -> engines.Engine:
    return _engine()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every tritonkit command here: its own home, HF cache and a token."""
    root = tmp_path_factory.mktemp("container-home")
    return {**os.environ, "TRITONKIT_HOME": str(root / "tritonkit"), "HF_HOME": str(root / "hf"),
            "HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET}


def run(env, *args, timeout=900, check=False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TRITONKIT, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ports() -> list[str]:
    return ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]


def containers(engine, name: str) -> list[str]:
    """Names of containers (running or not) called `tritonkit-<name>`."""
    out = subprocess.run([engine.client, "ps", "-a", "--filter", f"name=^tritonkit-{name}$", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line == f"tritonkit-{name}"]


@pytest.fixture(scope="module")
def cpu_image(engine, env):
    started = time.monotonic()
    proc = run(env, "image", "--cpu", timeout=IMAGE_BUILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"\n[container] tritonkit image --cpu: {time.monotonic() - started:.0f} s "
          f"({proc.stderr.strip().splitlines()[-1]})")
    return images.CPU_IMAGE


@pytest.fixture(scope="module")
def repository(tmp_path_factory, env):
    root = tmp_path_factory.mktemp("container-repo")
    base = build_tiny_llama(root / "tiny")
    adapters = {"a": build_tiny_lora(base, root / "a", seed=1),
                "b": build_tiny_lora(base, root / "b", seed=2, rank=16,
                                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))}
    repo = root / "repo"
    run(env, "build", str(base), "--gpu", "cpu", "--name", "tiny", "-o", str(repo), "--lora-mode", "serve",
        "--adapter", f"a={adapters['a']}", "--adapter", f"b={adapters['b']}", check=True)
    return repo


@pytest.fixture(scope="module")
def server(engine, env, cpu_image, repository):
    name = f"ctr-{os.getpid()}"
    port_args = ports()
    started = time.monotonic()
    proc = run(env, "serve", "-r", str(repository), "--runtime", "docker", "--detach", "--name", name, *port_args,
               "--timeout", "600")
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"\n[container] serve --runtime docker --detach: {time.monotonic() - started:.1f} s to ready "
          f"({proc.stdout.splitlines()[0]})")
    record = json.loads(run(env, "status", "--name", name, "--json", check=True).stdout)[0]
    yield {**record, "serve": proc, "metrics_url": f"http://127.0.0.1:{port_args[5]}/metrics"}
    run(env, "stop", "--name", name)  # a no-op when test_stop_leaves_no_container already stopped it


async def collect(protocol, url, sampling, lora=None):
    client = open_client(protocol, url, "tiny")
    try:
        return [c async for c in client.stream(PROMPT, sampling, lora_name=lora)]
    finally:
        await client.close()


# The first test to ask for cpu_image pays for a cold build (setup.cfg's 900 s per test is too short).
@pytest.mark.timeout(IMAGE_BUILD_TIMEOUT_S + 300)
def test_image_is_cached_by_its_content(engine, env, cpu_image):
    started = time.monotonic()
    proc = run(env, "image", "--cpu", check=True, timeout=300)
    assert "nothing to build" in proc.stderr and "up to date: tritonkit-vllm:cpu" in proc.stderr
    assert time.monotonic() - started < 60
    labels = images.image_labels(engines.run_engine, engine.client, cpu_image)
    assert labels[images.DEVICE_LABEL] == "cpu" and len(labels[images.CONTENT_LABEL]) == 64
    listing = subprocess.run([engine.client, "run", "--rm", cpu_image, "sh", "-c",
                              "command -v tritonserver; ls /opt/tritonserver/backends"],
                             capture_output=True, text=True, timeout=120)
    assert listing.stdout.split() == ["/opt/tritonserver/bin/tritonserver", "python", "vllm"], listing.stderr


def test_serve_says_the_engine_and_its_flags(engine, server):
    out = server["serve"]
    assert re.search(r"ready in \d+\.\d s \(docker runtime\): models tiny", out.stdout)
    said = out.stderr
    assert f"container engine: {engine.kind}" in said and "image tritonkit-vllm:cpu" in said
    assert "--init" in said and "no GPUs: tritonkit-vllm:cpu is the CPU image" in said
    if engine.kind == "podman" and not engines.has_cap_sys_resource():
        assert "--ulimit" not in said and "CAP_SYS_RESOURCE" in said  # podman cannot raise a hard limit
    assert server["runtime"] == "docker" and server["ready"] and server["alive"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_streams_give_exactly_max_tokens(server, protocol):
    url = server["grpc"] if protocol == "grpc" else server["http"]
    chunks = asyncio.run(collect(protocol, url, {"max_tokens": 23, "ignore_eos": True, "temperature": 0}))
    assert sum(c.num_output_tokens or 0 for c in chunks) == 23
    assert len([c for c in chunks if c.text]) > 1  # streamed, not one block
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


def test_lora_adapters_change_the_output(server):
    greedy = {"max_tokens": 16, "ignore_eos": True, "temperature": 0}
    texts = {lora: "".join(c.text for c in asyncio.run(collect("grpc", server["grpc"], greedy, lora)))
             for lora in (None, "a", "b")}
    assert len(set(texts.values())) == 3, texts
    assert "".join(c.text for c in asyncio.run(collect("grpc", server["grpc"], greedy, "b"))) == texts["b"]


def test_perf_for_a_few_seconds(env, server, repository, tmp_path):
    out = tmp_path / "perf"
    proc = run(env, "perf", "-r", str(repository), "--url", server["grpc"], "--metrics-url", server["metrics_url"],
               "--rate", "3", "--duration", "3", "--input-tokens", "20", "--output-tokens", "8", "--json",
               "--out", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = json.loads(proc.stdout)["steps"][0]
    assert step["sent"] == 9 and step["ok"] == 9 and step["failed"] == 0
    assert step["output_tokens"] == 9 * 8 and step["input_tokens"] == 9 * 20
    delta = step["server_metrics"]["delta"]  # vLLM's counters, scraped through the published metrics port
    assert sum(v for k, v in delta.items() if k.startswith("vllm:generation_tokens_total")) >= 72


def test_the_token_goes_by_name_only(engine, env, server, cpu_image):
    container = f"tritonkit-{server['name']}"
    inside = subprocess.run([engine.client, "exec", container, "sh", "-c", 'test "$HF_TOKEN" = "' + SECRET + '"'],
                            capture_output=True, text=True, timeout=60)
    assert inside.returncode == 0, "the container did not get HF_TOKEN's value"
    for pid in filter(str.isdigit, os.listdir("/proc")):  # no argument list on the machine holds the value
        try:
            assert SECRET not in Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
    history = subprocess.run([engine.client, "history", "--no-trunc", cpu_image], capture_output=True, text=True)
    inspect = subprocess.run([engine.client, "image", "inspect", cpu_image], capture_output=True, text=True)
    assert history.returncode == 0 and SECRET not in history.stdout and SECRET not in inspect.stdout
    assert SECRET not in server["serve"].stdout + server["serve"].stderr
    for path in Path(env["TRITONKIT_HOME"]).rglob("*"):  # records, kept container logs
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_stop_leaves_no_container(engine, env, server):
    assert containers(engine, server["name"])
    proc = run(env, "stop", "--name", server["name"], check=True)
    assert f"stopped {server['name']}" in proc.stdout
    assert containers(engine, server["name"]) == []
    assert run(env, "status", "--name", server["name"]).returncode == 2


def test_foreground_then_ctrl_c(engine, env, cpu_image, repository):
    name = f"ctr-fg-{os.getpid()}"
    proc = subprocess.Popen([*TRITONKIT, "serve", "-r", str(repository), "--runtime", "docker", "--name", name,
                             *ports(), "--timeout", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            preexec_fn=default_sigint)  # Ctrl-C must reach it however pytest was started
    try:
        deadline = time.monotonic() + 600
        for line in proc.stderr:
            if "serving in the foreground" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the server did not reach the foreground loop"
        assert containers(engine, name)
        out = run(env, "generate", PROMPT, "--name", name, "--max-tokens", "5", "--ignore-eos", check=True)
        assert ", 5 tokens in " in out.stderr
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run([engine.client, "rm", "-f", f"tritonkit-{name}"], capture_output=True, timeout=120)  # no leak
    assert proc.returncode == 130 and "interrupted: the server was stopped" in err
    assert "Traceback" not in err
    assert containers(engine, name) == []
    assert run(env, "status", "--name", name).returncode == 2


def test_a_model_that_fails_to_load_removes_its_container(engine, env, cpu_image, repository, tmp_path):
    broken = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(repository), str(broken)], check=True)
    model_json = broken / "tiny" / "1" / "model.json"
    args = json.loads(model_json.read_text())
    (broken / "no-weights-here").mkdir()  # exists (so it is mounted), holds no model: vLLM refuses it
    args["model"] = args["tokenizer"] = str(broken / "no-weights-here")
    model_json.write_text(json.dumps(args))
    name = f"ctr-broken-{os.getpid()}"
    proc = run(env, "serve", "-r", str(broken), "--runtime", "docker", "--detach", "--name", name, *ports(),
               "--timeout", "400")
    assert proc.returncode == 4, proc.stderr[-3000:]
    cause = proc.stderr.split("last log lines:")[1]
    assert "no-weights-here" in cause, cause[-2000:]  # the root cause from the container's log
    assert "Traceback" not in proc.stderr.split("last log lines")[0]
    assert containers(engine, name) == []
    assert run(env, "status", "--name", name).returncode == 2


def test_a_start_that_times_out_leaves_nothing(engine, env, cpu_image, repository):
    name = f"ctr-slow-{os.getpid()}"
    started = time.monotonic()
    proc = run(env, "serve", "-r", str(repository), "--runtime", "docker", "--detach", "--name", name, *ports(),
               "--timeout", "3")
    assert proc.returncode == 4 and "not ready after 3 s" in proc.stderr, proc.stderr[-2000:]
    assert time.monotonic() - started < 120
    assert containers(engine, name) == []
    assert run(env, "status", "--name", name).returncode == 2

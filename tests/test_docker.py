"""The docker runtime, checked on what tritonkit hands to Docker (no engine needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tritonkit.commands.image import image as image_command
from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import docker
from tritonkit.runtime.base import RuntimeOptions
from tritonkit.runtime.spec import ServerSpec

SECRET = "hf_s3cr3t_value_that_must_not_leak"


def make_layout(tmp_path, monkeypatch) -> dict:
    """A repository whose model.json points at weights outside it, with three LoRA adapters:
    one outside everything, one inside the repository, one inside the Hugging Face cache."""
    hf = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    weights = tmp_path / "weights" / "base"
    adapter_a = tmp_path / "adapters" / "a"
    snapshot = hf / "hub" / "models--x--lora" / "snapshots" / "abc"
    repo = tmp_path / "repo"
    adapter_b = repo / "tiny" / "adapters" / "b"
    for folder in (weights, adapter_a, snapshot, adapter_b, repo / "tiny" / "1"):
        folder.mkdir(parents=True)
    (repo / "tiny" / "config.pbtxt").write_text('backend: "vllm"\n')
    (repo / "tiny" / "1" / "model.json").write_text(json.dumps(
        {"model": str(weights), "tokenizer": str(weights), "enable_lora": True, "dtype": "float16"}))
    (repo / "tiny" / "1" / "multi_lora.json").write_text(json.dumps(
        {"a": str(adapter_a), "b": str(adapter_b), "c": str(snapshot)}))
    return {"repo": repo, "hf": hf, "weights": weights, "adapter_a": adapter_a}


@pytest.fixture
def layout(tmp_path, monkeypatch):
    return make_layout(tmp_path, monkeypatch)


def test_run_args_exact(layout):
    repo, hf = layout["repo"], layout["hf"]
    spec = ServerSpec(repository=repo, name="demo", env={"VLLM_LOGGING_LEVEL": "INFO"})
    argv = docker.run_args(spec, "tritonkit-vllm:25.12", model_name="tiny")
    assert argv == [
        "docker", "run", "--name", "tritonkit-demo", "--init", "--gpus", "all",
        "--ulimit", "memlock=-1", "--ulimit", "stack=67108864", "--shm-size", "4g",
        "--user", f"{os.getuid()}:{os.getgid()}",
        "-p", "127.0.0.1:8000:8000", "-p", "127.0.0.1:8001:8001", "-p", "127.0.0.1:8002:8002",
        "--mount", f"type=bind,source={hf},target={hf}",
        "--mount", f"type=bind,source={repo},target={repo},readonly",
        "--mount", f"type=bind,source={layout['weights']},target={layout['weights']},readonly",
        "--mount", f"type=bind,source={layout['adapter_a']},target={layout['adapter_a']},readonly",
        "-e", f"HF_HOME={hf}", "-e", "HF_TOKEN", "-e", "VLLM_LOGGING_LEVEL=INFO",
        "--label", "tritonkit.server=demo", "--label", f"tritonkit.repository={repo}",
        "--label", "tritonkit.http_port=8000", "--label", "tritonkit.model=tiny",
        "tritonkit-vllm:25.12",
        "tritonserver", f"--model-repository={repo}", "--exit-timeout-secs=5",
        "--backend-config=python,shm-region-prefix-name=tritonkit_demo_8000_",
        "--metrics-config=histogram_latencies=true",
    ]
    assert not any(SECRET in arg for arg in argv)


def test_every_mount_is_at_the_same_path_and_only_the_cache_is_writable(layout):
    argv = docker.run_args(ServerSpec(repository=layout["repo"]), "img")
    mounts = [dict(f.partition("=")[::2] if "=" in f else (f, True) for f in argv[i + 1].split(","))
              for i, a in enumerate(argv) if a == "--mount"]
    assert len(mounts) == 4
    assert all(m["type"] == "bind" and m["source"] == m["target"] for m in mounts)
    assert [m["source"] for m in mounts if "readonly" not in m] == [str(layout["hf"])]


def test_ports_host_gpus_and_detach(layout):
    spec = ServerSpec(repository=layout["repo"], name="b", host="0.0.0.0", http_port=9000, grpc_port=9001,
                      metrics_port=9002, exit_timeout_s=7)
    argv = docker.run_args(spec, "img", gpus="0,1", detach=True)
    assert argv[2] == "-d" and "--rm" not in argv  # kept after a crash so its log stays readable
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-p"] == [
        "0.0.0.0:9000:8000", "0.0.0.0:9001:8001", "0.0.0.0:9002:8002"]
    assert "--exit-timeout-secs=7" in argv
    assert "--backend-config=python,shm-region-prefix-name=tritonkit_b_9000_" in argv
    attached = docker.run_args(spec, "img", gpus="3")
    assert attached[attached.index("--gpus") + 1] == '"device=3"'
    with pytest.raises(UsageError, match="--gpus"):
        docker.run_args(spec, "img", gpus="two")


def test_secret_env_goes_by_name_only(layout):
    spec = ServerSpec(repository=layout["repo"], env={"MY_API_KEY": SECRET, "HF_TOKEN": SECRET, "N": "1"})
    argv = docker.run_args(spec, "img")
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert envs == [f"HF_HOME={layout['hf']}", "MY_API_KEY", "HF_TOKEN", "N=1"]
    assert not any(SECRET in arg for arg in argv)


def test_missing_paths_are_clear_errors(layout, tmp_path):
    (layout["repo"] / "tiny" / "1" / "model.json").write_text(json.dumps({"model": "/nowhere/weights"}))
    with pytest.raises(UsageError, match="/nowhere/weights"):
        docker.run_args(ServerSpec(repository=layout["repo"]), "img")
    with pytest.raises(UsageError, match="does not exist"):
        docker.run_args(ServerSpec(repository=tmp_path / "absent"), "img")
    with pytest.raises(UsageError, match="container name"):
        docker.run_args(ServerSpec(repository=layout["repo"], name="a/b"), "img")


def test_hub_model_id_needs_no_mount(layout):
    (layout["repo"] / "tiny" / "1" / "model.json").write_text(json.dumps({"model": "meta-llama/Llama-3.1-8B"}))
    (layout["repo"] / "tiny" / "1" / "multi_lora.json").unlink()
    argv = docker.run_args(ServerSpec(repository=layout["repo"]), "img")
    assert argv.count("--mount") == 2  # the cache and the repository


# -- docker build ---------------------------------------------------------------------------

def test_build_image_args(layout, tmp_path):
    ctx = tmp_path / "ctx"
    assert docker.build_image_args(ctx, "t:1", "base:1") == [
        "docker", "build", "-f", f"{ctx}/Dockerfile", "-t", "t:1", "--build-arg", "BASE_IMAGE=base:1",
        "--label", "tritonkit=1", "--target", "runtime", str(ctx)]
    repo = layout["repo"]
    assert docker.build_image_args(ctx, "t:1", "base:1", repo) == [
        "docker", "build", "-f", f"{ctx}/Dockerfile", "-t", "t:1", "--build-arg", "BASE_IMAGE=base:1",
        "--label", "tritonkit=1", "--target", "baked", "--build-context", f"repository={repo}",
        "--build-arg", f"REPOSITORY={repo}", "--label", f"tritonkit.repository={repo}", str(ctx)]
    with pytest.raises(UsageError, match="not a model repository"):
        docker.build_image_args(ctx, "t:1", "base:1", tmp_path / "weights")


def test_base_image_override(monkeypatch):
    monkeypatch.delenv("TRITONKIT_BASE_IMAGE", raising=False)
    assert docker.base_image() == docker.BASE_IMAGE
    monkeypatch.setenv("TRITONKIT_BASE_IMAGE", "nvcr.io/nvidia/tritonserver:26.01-vllm-python-py3")
    assert docker.base_image() == "nvcr.io/nvidia/tritonserver:26.01-vllm-python-py3"


# -- no engine ------------------------------------------------------------------------------

def fake_docker(bin_dir: Path, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "docker"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


NO_DAEMON = ('echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
             'Is the docker daemon running?" >&2\nexit 1\n')


def run_cli(argv, capsys):
    from tritonkit.cli import cli, main

    cli.add_command(image_command)
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def test_no_docker_client(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert docker.docker_available() is False
    with pytest.raises(ServerError, match="not installed") as exc:
        docker.require_docker()
    assert "NVIDIA Container Toolkit" in exc.value.hint and "--runtime local" in exc.value.hint
    code, out = run_cli(["image"], capsys)
    assert code == ServerError.exit_code
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "docker client is not installed" in lines[0] and "--runtime local" in lines[0]


def test_client_without_engine(tmp_path, monkeypatch, capsys):
    fake_docker(tmp_path / "bin", NO_DAEMON)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("TRITONKIT_CONTAINER_ENGINE", "docker")  # podman may sit in /usr/bin
    assert docker.docker_available() is False
    with pytest.raises(ServerError, match="Cannot connect to the Docker daemon"):
        docker.DockerServer(ServerSpec(repository=tmp_path), options=RuntimeOptions(detach=True)).start()
    code, out = run_cli(["image"], capsys)
    assert code == ServerError.exit_code and "no Docker engine answers" in out.err


def test_image_dry_run_needs_no_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = run_cli(["image", "--dry-run", "--tag", "me/tk:1", "--base-image", "b:2"], capsys)
    assert code == 0, out.err
    assert out.out.startswith("docker build -f ") and "--build-arg BASE_IMAGE=b:2" in out.out
    assert "-t me/tk:1" in out.out and "--target runtime" in out.out


# -- DockerServer against a fake engine ------------------------------------------------------

def test_detached_lifecycle_through_a_fake_engine(layout, tmp_path, monkeypatch):
    """A `docker` script that records every call: the real runner, the real argv, the env it sees."""
    log = tmp_path / "calls.log"
    fake_docker(tmp_path / "bin", f"""
printf '%s\\n' "$*" >> {log}
case "$1" in
  version) echo "28.0.0|Engine,containerd,runc,docker-init," ;;
  image) echo '{{"tritonkit":"1"}}' ;;
  inspect) echo "Error: No such object: $4" >&2; exit 1 ;;
  run) echo "token-seen=${{HF_TOKEN:+yes}} key-seen=${{MY_API_KEY:+yes}}" >> {log}; echo 0123abcd ;;
esac
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("TRITONKIT_CONTAINER_ENGINE", "docker")
    spec = ServerSpec(repository=layout["repo"], name="fg", env={"MY_API_KEY": SECRET})
    server = docker.DockerServer(spec, options=RuntimeOptions(image="tritonkit-vllm:25.12", detach=True))
    server.start()
    server.stop()
    calls = log.read_text().splitlines()
    assert calls[0].startswith("version --format {{.Server.Version}}|")
    assert calls[1] == "image inspect --format {{json .Config.Labels}} tritonkit-vllm:25.12"
    assert calls[2] == "inspect -f {{.State.Running}} tritonkit-fg"
    engine = docker.Engine(client="docker", kind="docker", version="28.0.0")
    assert calls[3] == " ".join(["run"] + docker.run_args(spec, "tritonkit-vllm:25.12", detach=True, engine=engine)[2:])
    assert calls[4] == "token-seen=yes key-seen=yes"  # the client gets the values to forward
    assert calls[5:] == ["stop -t 10 tritonkit-fg", "rm -f tritonkit-fg", "inspect -f {{.State.Running}} tritonkit-fg"]
    assert SECRET not in log.read_text()

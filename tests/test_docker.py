"""The docker runtime, checked on what tritonkit hands to Docker (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tritonkit.commands.image import image as image_command
from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import docker, engine, image
from tritonkit.runtime.base import RuntimeOptions
from tritonkit.runtime.spec import ServerSpec

SECRET = "hf_s3cr3t_value_that_must_not_leak"


@pytest.fixture
def layout(tmp_path, monkeypatch):
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


IMG = RuntimeOptions(image="img")
IMG_DETACHED = RuntimeOptions(image="img", detach=True)


class FakeRunner:
    """Answers docker calls from a table keyed by the first two arguments after `docker`."""

    def __init__(self, answers: dict[str, tuple[int, str]]):
        self.answers, self.calls = answers, []

    def __call__(self, argv, *, stream=False, timeout=None, env=None):
        self.calls.append(argv)
        code, out = self.answers.get(" ".join(argv[1:3]), (0, ""))
        return subprocess.CompletedProcess(argv, code, out, "")


@pytest.fixture
def docker_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITONKIT_HOME", str(tmp_path / "home"))
    fake_docker(tmp_path / "fakebin", "exit 0\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'fakebin'}:/usr/bin:/bin")
    monkeypatch.setenv("TRITONKIT_CONTAINER_ENGINE", "docker")


def test_wait_ready_reports_the_log_when_the_container_dies(layout, docker_on_path):
    runner = FakeRunner({"inspect -f": (0, "false\n"),
                         "logs tritonkit-x": (0, "I0101 loading\nRuntimeError: CUDA out of memory\n"
                                              "I0101 a long table of models\n")})
    server = docker.DockerServer(ServerSpec(repository=layout["repo"], name="x"), options=IMG, runner=runner)
    with pytest.raises(ServerError, match=r"last log lines:\nRuntimeError: CUDA out of memory \(") as exc:
        server.wait_ready(["tiny"], timeout_s=5)
    assert "long table" not in str(exc.value)  # the root cause, not the tail
    assert ["docker", "logs", "tritonkit-x"] in runner.calls
    assert "a long table" in server.log_file.read_text()  # the whole log is kept


def test_start_refuses_a_running_namesake_and_a_missing_image(layout, docker_on_path):
    spec = ServerSpec(repository=layout["repo"], name="x")
    running = FakeRunner({"inspect -f": (0, "true\n")})
    with pytest.raises(UsageError, match="already running"):
        docker.DockerServer(spec, options=IMG_DETACHED, runner=running).start()
    assert not any(c[1] == "run" for c in running.calls)
    missing = FakeRunner({"image inspect": (1, "")})
    with pytest.raises(ServerError, match="tritonkit image"):
        docker.DockerServer(spec, options=IMG_DETACHED, runner=missing).start()


def test_start_clears_a_stopped_leftover_and_explains_a_gpu_failure(layout, docker_on_path):
    runner = FakeRunner({"inspect -f": (0, "false\n")})

    def run_fails(argv, **kw):
        if argv[1] == "run":
            return subprocess.CompletedProcess(argv, 125, "", 'docker: Error response from daemon: could not '
                                               'select device driver "" with capabilities: [[gpu]].\n')
        return runner(argv, **kw)

    with pytest.raises(ServerError, match="could not select device driver") as exc:
        docker.DockerServer(ServerSpec(repository=layout["repo"], name="x"), options=IMG_DETACHED, runner=run_fails).start()
    assert "NVIDIA Container Toolkit" in exc.value.hint
    assert runner.calls.count(["docker", "rm", "-f", "tritonkit-x"]) == 1  # the leftover (serving.start stops the rest)


def test_foreground_streams_and_tracks_the_client_process(layout, docker_on_path):
    class Client:  # stands in for the attached `docker run` Popen
        code = None

        def poll(self):
            return self.code

        def wait(self, timeout=None):
            return self.code

    client = Client()
    runner = FakeRunner({"inspect -f": (1, ""), "logs tritonkit-fg": (1, "")})
    streamed = []

    def run(argv, **kw):
        if kw.get("stream"):
            streamed.append(argv)
            return client
        return runner(argv, **kw)

    server = docker.DockerServer(ServerSpec(repository=layout["repo"], name="fg"), options=IMG, runner=run)
    server.start()
    assert streamed == [docker.run_args(server.spec, "img", detach=False)] and "-d" not in streamed[0]
    assert server.is_alive()  # before the container exists, the client process is what counts
    client.code = 1
    assert not server.is_alive()
    assert "output is above" in server.logs()  # no container (never made, or removed): the terminal has it


def test_a_path_with_a_comma_is_quoted_for_docker(layout, tmp_path):
    odd = tmp_path / "w,eights"
    odd.mkdir()
    (layout["repo"] / "tiny" / "1" / "model.json").write_text(json.dumps({"model": str(odd)}))
    argv = docker.run_args(ServerSpec(repository=layout["repo"]), "img")
    assert f'type=bind,"source={odd}","target={odd}",readonly' in argv


# -- engines: Docker or podman, and the flags each accepts -----------------------------------

def test_podman_limits_only_where_they_can_be_raised():
    ulimits, notes = engine.podman_ulimits(may_raise=True)
    assert ulimits == ("memlock=-1", "stack=67108864", "nofile=1048576:1048576", "nproc=4194304:4194304")
    assert notes == ()
    ulimits, notes = engine.podman_ulimits(may_raise=False)  # an explicit --ulimit would drop podman's defaults
    assert ulimits == () and "CAP_SYS_RESOURCE" in notes[0] and "memlock=-1" in notes[0]


def test_run_args_on_podman(layout, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "CDI_SPECS", (tmp_path / "cdi",))
    pod = engine._podman_engine("podman", "4.3.1")
    argv = docker.run_args(ServerSpec(repository=layout["repo"], name="p"), "img", engine=pod, detach=True)
    assert argv[:5] == ["podman", "run", "-d", "--name", "tritonkit-p"]
    assert "--gpus" not in argv and "--device" not in argv  # podman ignores --gpus; no CDI spec here
    limits = [argv[i + 1] for i, a in enumerate(argv) if a == "--ulimit"]
    assert limits == list(engine.podman_ulimits()[0])
    assert ("--no-healthcheck" in argv) == (not Path("/run/systemd/system").is_dir())  # podman's come from systemd
    assert "--no-healthcheck" not in docker.run_args(ServerSpec(repository=layout["repo"]), "img")
    flags, notes = engine.run_flags(pod, "all")
    assert any("CDI" in n for n in notes)
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    with_cdi = engine._podman_engine("podman", "4.3.1")
    assert engine.gpu_args(with_cdi, "0,1") == (["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"], None)
    assert engine.gpu_args(with_cdi, "none") == ([], None)
    assert engine.gpu_args(engine.DOCKER, "none") == ([], None)


def test_probe_tells_docker_podman_behind_docker_and_the_shim(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITONKIT_CONTAINER_ENGINE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    fake_docker(tmp_path / "bin", 'echo "28.0.0|Engine,containerd,runc,docker-init,"\n')
    found, problem = engine.probe()
    assert (found.client, found.kind, found.version, found.ulimits) == ("docker", "docker", "28.0.0", engine.DOCKER_ULIMITS)
    fake_docker(tmp_path / "bin", 'echo "4.3.1|Podman Engine,Conmon,OCI Runtime (runc),"\n')  # DOCKER_HOST=podman
    found, _ = engine.probe()
    assert (found.client, found.kind) == ("docker", "podman") and found.ulimits == engine.podman_ulimits()[0]
    assert found.describe() == "podman 4.3.1 through the docker client"
    fake_docker(tmp_path / "bin", 'exec podman "$@"\n')  # podman-docker's shim, with no podman behind it
    found, problem = engine.probe()
    assert found is None and problem == "no container engine is installed"  # the shim is not taken for Docker
    monkeypatch.setenv("TRITONKIT_CONTAINER_ENGINE", "lxc")
    with pytest.raises(UsageError, match="TRITONKIT_CONTAINER_ENGINE"):
        engine.probe()


def test_cpu_builds_default_to_the_cpu_image(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.delenv("TRITONKIT_IMAGE", raising=False)
    cpu, a10 = SimpleNamespace(gpu=SimpleNamespace(profile="cpu")), SimpleNamespace(gpu=SimpleNamespace(profile="a10"))
    assert docker.image_for([cpu], RuntimeOptions()) == docker.CPU_IMAGE
    assert docker.image_for([cpu, a10], RuntimeOptions()) == docker.DEFAULT_IMAGE
    assert docker.image_for([], RuntimeOptions()) == docker.DEFAULT_IMAGE
    assert docker.image_for([cpu], RuntimeOptions(image="mine:1")) == "mine:1"


def test_stop_is_safe_after_a_failed_start_and_says_when_a_container_stays(layout, docker_on_path):
    def slow_stop(argv, **kw):
        if argv[1] == "stop":
            raise subprocess.TimeoutExpired(argv, kw.get("timeout"))
        return gone(argv, **kw)

    gone = FakeRunner({"inspect -f": (1, "")})
    server = docker.DockerServer(ServerSpec(repository=layout["repo"], name="s"), options=IMG, runner=slow_stop)
    server.stop()
    server.stop()  # twice is fine
    assert gone.calls.count(["docker", "rm", "-f", "tritonkit-s"]) == 2
    stuck = FakeRunner({"inspect -f": (0, "false\n")})
    with pytest.raises(ServerError, match="could not be removed"):
        docker.DockerServer(ServerSpec(repository=layout["repo"], name="s"), options=IMG, runner=stuck).stop()


# -- the CPU image ----------------------------------------------------------------------------

def test_cpu_image_is_skipped_when_its_content_is_built(docker_on_path, monkeypatch):
    runner = FakeRunner({"image inspect": (0, "sha256:base\n")})
    plan = image.plan_cpu_image(engine.DOCKER, runner=runner)
    assert plan.deps_tag == f"tritonkit-vllm-deps:{plan.deps_hash[:16]}"
    assert plan == image.plan_cpu_image(engine.DOCKER, runner=runner)  # the same content, the same hashes
    labels = json.dumps({image.CONTENT_LABEL: plan.content_hash, image.DEVICE_LABEL: "cpu"})
    current = FakeRunner({"image inspect": (0, labels)})
    monkeypatch.setattr(image, "plan_cpu_image", lambda *a, **k: plan)
    said = []
    result = image.build_cpu_image(say=said.append, runner=current)
    assert not result.built and "nothing to build" in said[-1]
    assert not any(c[1] == "build" for c in current.calls)
    ctx = Path("/ctx")
    assert plan.image_args(ctx) == [
        "docker", "build", "-f", "/ctx/Dockerfile", "-t", "tritonkit-vllm:cpu", "--build-arg", f"DEPS={plan.deps_tag}",
        "--label", "tritonkit=1", "--label", "tritonkit.device=cpu", "--label", f"tritonkit.content={plan.content_hash}",
        "/ctx"]


def test_cpu_image_hash_follows_tritonkits_sources_not_the_deps(docker_on_path, monkeypatch, tmp_path):
    runner = FakeRunner({"image inspect": (0, "sha256:base\n")})
    before = image.plan_cpu_image(engine.DOCKER, runner=runner)
    extra = tmp_path / "extra.py"
    extra.write_text("x = 1\n")
    monkeypatch.setattr(image, "tritonkit_sources", lambda: [*image.PACKAGE_DIR.glob("*.py")])
    after = image.plan_cpu_image(engine.DOCKER, runner=runner)
    assert after.deps_hash == before.deps_hash and after.content_hash != before.content_hash
    other_base = image.plan_cpu_image(engine.DOCKER, runner=FakeRunner({"image inspect": (0, "sha256:other\n")}))
    assert other_base.deps_hash != before.deps_hash
    missing = FakeRunner({"image inspect": (1, "")})
    with pytest.raises(ServerError, match="install_container_engine.sh"):
        image.plan_cpu_image(engine.DOCKER, runner=missing)


def test_a_failed_build_raises_the_engines_own_error(tmp_path, monkeypatch):
    client = fake_docker(tmp_path / "bin", 'echo "STEP 1/3: FROM x"\necho "Error: building at STEP 2/3: '
                                           'RUN false: exit status 1" >&2\nexit 1\n')
    said = []
    with pytest.raises(ServerError, match=r"exit 1\): Error: building at STEP 2/3: RUN false: exit status 1"):
        image.run_build([str(client), "build", "."], said.append, "docker build of t:1")
    assert "STEP 1/3: FROM x" in said  # the progress was shown as it came


def test_a_multi_line_error_keeps_its_cause():
    log = ["I1126 loading", "tritonkit engine: could not start vLLM: ValidationError: 1 validation error for ModelConfig",
           "  Value error, Invalid repository ID or local directory specified: '/w'.", "I1126 next"]
    assert docker.with_continuations(log[1], log) == log[1] + "\n" + log[2].strip()
    assert docker.with_continuations("I1126 next", log) == "I1126 next"


def test_stale_images_are_removed_after_a_build():
    plan = image.CpuImagePlan(engine=engine.DOCKER, tag="tritonkit-vllm:cpu", base="b", deps_tag="tritonkit-vllm-deps:new",
                              deps_hash="n", content_hash="c")
    runner = FakeRunner({"images --format": (0, "localhost/tritonkit-vllm-deps:old\ntritonkit-vllm-deps:new\n"
                                                "tritonkit-vllm:cpu\nother/tritonkit-vllm-deps-x:1\n")})
    said = []
    image.remove_stale(plan, runner, said.append)
    assert runner.calls[1:] == [["docker", "rmi", "localhost/tritonkit-vllm-deps:old"],
                                ["docker", "image", "prune", "-f", "--filter", "label=tritonkit.content"]]
    assert said == ["removed the stale localhost/tritonkit-vllm-deps:old"]

"""The docker runtime's lifecycle (start, wait, foreground, stop) and its image builds, driven
through a fake engine: every docker call tritonkit makes is answered from a table or a script."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import docker, engine, image
from tritonkit.runtime.base import RuntimeOptions
from tritonkit.runtime.spec import ServerSpec

from test_docker import fake_docker, make_layout


@pytest.fixture
def layout(tmp_path, monkeypatch):
    return make_layout(tmp_path, monkeypatch)


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

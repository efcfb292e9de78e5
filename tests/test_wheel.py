"""tritonkit installed from its wheel, used from a folder outside the checkout.

The sdist is built from the checkout's files, the wheel from the unpacked sdist (as `python -m
build` does, so a file missing from the sdist fails here too), and the wheel is installed -- not
editable -- into a fresh venv. That venv reuses this environment's heavy dependencies (torch,
vLLM, tritonclient) without a download: a .pth file in its site-packages appends this
environment's site-packages to sys.path. A path line in a .pth does not run the .pth files it
points at, so the editable install of the checkout stays invisible and `import tritonkit` finds
the wheel's copy (asserted below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
# What the wheel must carry: the top-level folders the code reads, and the package's data.
SHIPPED = ["tritonkit/share/model_repo_templates/vllm/config.pbtxt",
           "tritonkit/share/model_repo_templates/vllm/model.json",
           "tritonkit/share/dockerfiles/Dockerfile",
           "tritonkit/share/perf/presets/classification.json",
           "tritonkit/share/perf/presets/chat.json",
           "tritonkit/data/corpus.txt", "tritonkit/data/models.json", "tritonkit/data/gpus.json",
           "tritonkit/data/api_prices.json", "tritonkit/data/model_json.schema.json",
           "tritonkit/backend/vllm/model.py", "tritonkit/backend/vllm/request_io.py",
           "tritonkit/backend/vllm/engine_process.py", "tritonkit/backend/vllm/restart_ledger.py",
           "tritonkit/backend/vllm/engine_metrics.py"]


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored): what a clone would hold."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "__pycache__", "*.egg-info", ".pytest_cache"))
        return dest
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pep517(hook: str, source: Path, out: Path) -> Path:
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, tritonkit script, wheel path, sdist path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp / "src")
    sdist = _pep517("build_sdist", source, tmp / "dist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    wheel = _pep517("build_wheel", next((tmp / "unpacked").iterdir()), tmp / "dist")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "reuse-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return python, venv / "bin" / "tritonkit", wheel, sdist


@pytest.fixture
def outside(tmp_path):
    """A working folder outside the checkout, and the environment of a user's shell."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return folder, env


def _run(argv, cwd, env, timeout=600):
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wheel_and_sdist_carry_the_data_files(installed):
    _, _, wheel, sdist = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in SHIPPED if f not in names] == []
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    # The sdist keeps the project's layout: one copy, at the top level.
    for name in ("model_repo_templates/vllm/config.pbtxt", "dockerfiles/Dockerfile",
                 "perf/presets/classification.json", "tritonkit/data/corpus.txt", "setup.py"):
        assert name in in_sdist, name
    assert not any(n.startswith("tritonkit/share/") for n in in_sdist)


def test_installed_package_is_the_wheel(installed, outside):
    python, _, _, _ = installed
    folder, env = outside
    done = _run([python, "-c", "import tritonkit, tritonkit.paths as p; print(tritonkit.__file__);"
                 "print(p.shipped('perf/presets'))"], folder, env)
    assert done.returncode == 0, done.stderr
    module, presets = done.stdout.split()
    venv = python.parent.parent
    assert Path(module).is_relative_to(venv) and Path(presets).is_relative_to(venv), done.stdout


def test_build_and_perf_with_a_preset_outside_the_checkout(installed, outside):
    _, tritonkit, _, _ = installed
    folder, env = outside
    done = _run([tritonkit, "build", "tiny-llama", "--gpu", "cpu"], folder, env)
    assert done.returncode == 0, done.stderr[-3000:]
    # The first build makes the built-in model: no third-party noise on the way (tritonkit.quiet).
    assert "Writing model shards" not in done.stderr and "Triton is installed" not in done.stderr, done.stderr
    assert (folder / "model_repository" / "tiny-llama" / "config.pbtxt").is_file()

    done = _run([tritonkit, "perf", "--preset", "no-such-preset"], folder, env)
    assert done.returncode == 2 and "use one of: chat, classification" in done.stderr, done.stderr
    # The preset loads and the build is read (its model, price, tokenizer); nothing answers on port 1.
    done = _run([tritonkit, "perf", "--preset", "classification", "-r", "model_repository", "--requests", "1",
                 "--url", "127.0.0.1:1", "--metrics-url", "none"], folder, env)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "cannot reach Triton gRPC at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


def test_image_finds_the_dockerfile(installed, outside):
    python, tritonkit, _, _ = installed
    folder, env = outside
    env.pop("TRITONKIT_DOCKERFILES", None)
    done = _run([tritonkit, "image", "--dry-run"], folder, env)
    assert done.returncode == 0, done.stderr
    shipped = python.parent.parent / "lib"
    assert f"-f {next(shipped.glob('python3*/site-packages'))}/tritonkit/share/dockerfiles/Dockerfile" in done.stdout


def test_runtime_reports_on_the_local_runtime(installed, outside):
    _, tritonkit, _, _ = installed
    folder, env = outside
    done = _run([tritonkit, "runtime"], folder, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("local Triton runtime:")


def test_the_demos_build_step(installed, outside):
    python, tritonkit, _, _ = installed
    folder, env = outside
    code = ("import json, pathlib; from tritonkit.demo import demo_steps; "
            "print(json.dumps(demo_steps(pathlib.Path('demo'), 1, 1)[0][0]))")
    done = _run([python, "-c", code], folder, env)
    assert done.returncode == 0, done.stderr
    step = json.loads(done.stdout)
    assert step[:2] == ["build", "tiny-llama"]
    done = _run([tritonkit, *step], folder, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / "demo" / "model_repository" / "tiny-llama" / "1" / "model.json").is_file()

"""Building the serving images: the NGC-based GPU image, and the CPU image built where no NGC
image can be had (no GPU, no registry).

The CPU image is two builds (dockerfiles/cpu/): `Dockerfile.deps` (Debian + Python + the wheels of
requirements.lock + Triton from the nvidia-pytriton wheel; slow, changes rarely) and `Dockerfile`
(tritonkit's backend on top; seconds). Each is labelled with a content hash of what went into it
(the Dockerfiles, the lock, tritonkit's sources, the base image's id), and a build whose hash is
already on the machine is skipped: a second CI run on the same machine builds nothing.
The wheels are downloaded on the host (its package index and pip configuration; torch must be
the +cpu build) and bind-mounted into the build, so they stay out of the image's layers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tritonkit.errors import ServerError, UsageError
from tritonkit.paths import PACKAGE_DIR, shipped
from tritonkit.runtime import engine as engines
from tritonkit.runtime.engine import Engine, Runner, run_engine
from tritonkit.runtime.install import PYTRITON_WHEEL, local_wheel

# The one pin of the NGC release (the Dockerfile's ARG default must match; a test checks it).
NGC_RELEASE = "25.12"
BASE_IMAGE = f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-vllm-python-py3"
DEFAULT_IMAGE = f"tritonkit-vllm:{NGC_RELEASE}"
CPU_IMAGE = "tritonkit-vllm:cpu"
DEPS_REPO = "tritonkit-vllm-deps"
LOCAL_BASE = "local/debian:bookworm"  # made by scripts/install_container_engine.sh (mmdebstrap)
CONTENT_LABEL = "tritonkit.content"
DEVICE_LABEL = "tritonkit.device"
# tritonkit's own package (a checkout's or an installed wheel's), less the data it ships for builds.
SKIPPED_IN_IMAGE = ("__pycache__", "share")


def base_image() -> str:
    return os.environ.get("TRITONKIT_BASE_IMAGE") or BASE_IMAGE


def default_image() -> str:
    return os.environ.get("TRITONKIT_IMAGE") or DEFAULT_IMAGE


def local_base() -> str:
    return os.environ.get("TRITONKIT_LOCAL_BASE") or LOCAL_BASE


def dockerfiles_dir() -> Path:
    """The build context holding the Dockerfiles: $TRITONKIT_DOCKERFILES, else the one tritonkit ships."""
    folder = Path(os.environ.get("TRITONKIT_DOCKERFILES") or shipped("dockerfiles"))
    if not (folder / "Dockerfile").is_file():
        raise UsageError(f"no Dockerfile in {folder}", "set TRITONKIT_DOCKERFILES to a folder holding one, or unset it")
    return folder


# -- the GPU image (NGC base) ------------------------------------------------------------------

def build_image_args(context_dir: Path, tag: str, base_image: str, repository: Path | None = None,
                     client: str = "docker") -> list[str]:
    """`docker build` for dockerfiles/Dockerfile: mount mode, or the repository baked in at its path."""
    context_dir = Path(context_dir)
    argv = [client, "build", "-f", str(context_dir / "Dockerfile"), "-t", tag,
            "--build-arg", f"BASE_IMAGE={base_image}", "--label", "tritonkit=1"]
    if repository is None:
        argv += ["--target", "runtime"]
    else:
        repository = Path(repository).absolute()
        if not any(repository.glob("*/config.pbtxt")):
            raise UsageError(f"{repository} is not a model repository (no <model>/config.pbtxt)",
                             "pass the folder that `tritonkit build` wrote")
        argv += ["--target", "baked", "--build-context", f"repository={repository}",
                 "--build-arg", f"REPOSITORY={repository}", "--label", f"tritonkit.repository={repository}"]
    return argv + [str(context_dir)]


# -- running a build with progress -------------------------------------------------------------

def run_build(argv: list[str], say: Callable[[str], None], what: str) -> None:
    """Run a build, echoing its output (the progress) and raising with the engine's own error."""
    say(f"$ {' '.join(argv)}")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    except FileNotFoundError:
        raise ServerError(f"the {argv[0]} client is not installed", engines.NO_ENGINE_HINT) from None
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        say(line)
    code = proc.wait()
    if code != 0:
        raise ServerError(f"{what} failed (exit {code}): {_engine_error(tail)}", "see the build output above")


def _engine_error(lines) -> str:
    """The engine's error line of a failed build (Error:/ERROR:/error:), else the last line."""
    for line in reversed(lines):
        if line.strip().lower().startswith(("error", "failed")) or " error " in line.lower():
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


# -- the CPU image -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuImagePlan:
    """What `tritonkit image --cpu` builds, and the hashes that name its cache."""

    engine: Engine
    tag: str
    base: str  # the local Debian image
    deps_tag: str  # tritonkit-vllm-deps:<hash>
    deps_hash: str
    content_hash: str  # the final image's: the deps' hash + tritonkit's sources
    fresh: bool = False  # --rebuild: no layer of an earlier build is reused

    def _build(self) -> list[str]:
        # podman writes OCI images by default, which drop HEALTHCHECK; NGC's image has one.
        return ([self.engine.client, "build"] + (["--format", "docker"] if self.engine.client == "podman" else [])
                + (["--no-cache"] if self.fresh else []))

    def deps_args(self, context: Path) -> list[str]:
        return [*self._build(), "-f", str(context / "Dockerfile.deps"), "-t", self.deps_tag,
                "--build-arg", f"BASE={self.base}", "--label", f"{CONTENT_LABEL}={self.deps_hash}", str(context)]

    def image_args(self, context: Path) -> list[str]:
        return [*self._build(), "-f", str(context / "Dockerfile"), "-t", self.tag,
                "--build-arg", f"DEPS={self.deps_tag}", "--label", "tritonkit=1",
                "--label", f"{DEVICE_LABEL}=cpu", "--label", f"{CONTENT_LABEL}={self.content_hash}", str(context)]


def _hash_files(digest, root: Path, paths) -> None:
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")


def tritonkit_sources() -> list[Path]:
    return [p for p in PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix != ".pyc"
            and not set(p.relative_to(PACKAGE_DIR).parts) & set(SKIPPED_IN_IMAGE)]


def image_id(runner: Runner, client: str, tag: str) -> str | None:
    res = runner([client, "image", "inspect", "--format", "{{.Id}}", tag], timeout=60)
    return res.stdout.strip() if res.returncode == 0 else None


def image_labels(runner: Runner, client: str, tag: str) -> dict[str, str] | None:
    """The image's labels, or None when there is no such image."""
    res = runner([client, "image", "inspect", "--format", "{{json .Config.Labels}}", tag], timeout=60)
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout.strip() or "null") or {}
    except ValueError:
        return {}


def plan_cpu_image(engine: Engine, tag: str = CPU_IMAGE, runner: Runner = run_engine) -> CpuImagePlan:
    cpu_dir = dockerfiles_dir() / "cpu"
    base = local_base()
    base_id = image_id(runner, engine.client, base)
    if base_id is None:
        raise ServerError(f"the base image {base} is not on this machine",
                          "make it with scripts/install_container_engine.sh (mmdebstrap + import), "
                          "or set TRITONKIT_LOCAL_BASE to a Debian 12 image you have")
    deps = hashlib.sha256(f"{base_id}\0{PYTRITON_WHEEL}\0".encode())
    _hash_files(deps, cpu_dir, [cpu_dir / n for n in ("Dockerfile.deps", "requirements.lock", "install_triton.py")])
    deps_hash = deps.hexdigest()
    final = hashlib.sha256(deps_hash.encode())
    _hash_files(final, cpu_dir, [cpu_dir / "Dockerfile"])
    _hash_files(final, PACKAGE_DIR, tritonkit_sources())
    return CpuImagePlan(engine=engine, tag=tag, base=base, deps_tag=f"{DEPS_REPO}:{deps_hash[:16]}",
                        deps_hash=deps_hash, content_hash=final.hexdigest())


def _pip_download(args: list[str], dest: Path, say: Callable[[str], None]) -> None:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
            "--disable-pip-version-check", "-d", str(dest), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()
        raise ServerError(f"downloading the image's wheels failed: {(errors or ['no output'])[-1]}",
                          "check that the package index is reachable; torch==2.13.0+cpu needs the CPU "
                          "index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)")


def _deps_context(plan: CpuImagePlan, context: Path, say: Callable[[str], None]) -> None:
    cpu_dir = dockerfiles_dir() / "cpu"
    for name in ("Dockerfile.deps", "requirements.lock"):
        shutil.copy(cpu_dir / name, context / name)
    (context / "wheels").mkdir()
    (context / "triton").mkdir()
    shutil.copy(cpu_dir / "install_triton.py", context / "triton" / "install_triton.py")
    started = time.monotonic()
    say("downloading the image's wheels (requirements.lock: vLLM CPU, torch 2.13.0+cpu; ~900 MB)")
    _pip_download(["-r", str(context / "requirements.lock")], context / "wheels", say)
    carried = local_wheel()  # $TRITONKIT_PYTRITON_WHEEL, as for the local runtime
    if carried is not None:
        shutil.copy(carried, context / "triton" / carried.name)
    else:
        _pip_download([PYTRITON_WHEEL], context / "triton", say)
    size = sum(p.stat().st_size for p in context.rglob("*.whl")) / 1e6
    say(f"wheels ready: {size:.0f} MB in {time.monotonic() - started:.0f} s")


def _image_context(context: Path) -> None:
    shutil.copy(dockerfiles_dir() / "cpu" / "Dockerfile", context / "Dockerfile")
    shutil.copytree(PACKAGE_DIR, context / "tritonkit", ignore=shutil.ignore_patterns(*SKIPPED_IN_IMAGE, "*.pyc"))


@dataclass
class CpuImageResult:
    tag: str
    built: bool  # False: the cached image was current
    deps_built: bool
    seconds: float


def build_cpu_image(tag: str = CPU_IMAGE, say: Callable[[str], None] = lambda m: None,
                    rebuild: bool = False, runner: Runner = run_engine) -> CpuImageResult:
    """Build (or find current) the CPU serving image; see the module's docstring."""
    started = time.monotonic()
    engine = engines.detect(runner)
    plan = dataclasses.replace(plan_cpu_image(engine, tag, runner), fresh=rebuild)
    labels = image_labels(runner, engine.client, tag)
    if not rebuild and labels is not None and labels.get(CONTENT_LABEL) == plan.content_hash:
        say(f"{tag} is current (content {plan.content_hash[:16]}); nothing to build")
        return CpuImageResult(tag, False, False, time.monotonic() - started)
    deps_built = False
    if rebuild or image_id(runner, engine.client, plan.deps_tag) is None:
        with tempfile.TemporaryDirectory(prefix="tritonkit-image-") as tmp:
            _deps_context(plan, Path(tmp), say)
            run_build(plan.deps_args(Path(tmp)), say, f"{engine.client} build of {plan.deps_tag}")
        deps_built = True
    else:
        say(f"{plan.deps_tag} is current (Python, vLLM CPU, Triton); building tritonkit's layer only")
    with tempfile.TemporaryDirectory(prefix="tritonkit-image-") as tmp:
        _image_context(Path(tmp))
        run_build(plan.image_args(Path(tmp)), say, f"{engine.client} build of {tag}")
    remove_stale(plan, runner, say)
    return CpuImageResult(tag, True, deps_built, time.monotonic() - started)


def remove_stale(plan: CpuImagePlan, runner: Runner, say: Callable[[str], None]) -> None:
    """Drop what earlier builds left (other deps tags, untagged tritonkit images): each CI run
    that changes tritonkit would otherwise leave an image behind, and a deps change 4 GB."""
    res = runner([plan.engine.client, "images", "--format", "{{.Repository}}:{{.Tag}}"], timeout=60)
    stale = [ref for ref in (res.stdout or "").split() if res.returncode == 0
             and ref.rsplit(":", 1)[0].endswith(DEPS_REPO) and ref.rsplit(":", 1)[1] != plan.deps_tag.split(":")[1]]
    for ref in stale:
        runner([plan.engine.client, "rmi", ref], timeout=120)
    runner([plan.engine.client, "image", "prune", "-f", "--filter", f"label={CONTENT_LABEL}"], timeout=300)
    if stale:
        say(f"removed the stale {', '.join(stale)}")

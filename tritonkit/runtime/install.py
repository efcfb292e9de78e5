"""The local Triton runtime: a real Triton server taken from the `nvidia-pytriton` wheel on PyPI.

The wheel ships Triton 2.51 (release 24.10) with its Python backend and one backend stub per
Python version. We take its files, not its Python package (it pins numpy<2, which clashes with
vLLM's stack). Layout under `home()/runtime/triton-<version>/`:

    bin/tritonserver                 the server (its RPATH finds ../lib)
    lib/                             the wheel's bundled shared libraries
    backends/python/                 the Python backend and the stub for this Python
    stub-site/                       numpy<2 for the stub (see `stub_site` below)
    runtime.json                     what was installed, from which wheel

Where there is no network (an air-gapped GPU host), carry the wheel and numpy's beside it:
`tritonkit runtime --from-wheel PATH` (or TRITONKIT_PYTRITON_WHEEL=PATH for `tritonkit serve`), PATH
being the nvidia-pytriton wheel or a folder holding it; the stub's numpy is then installed from
that folder (`pip download numpy==1.26.4 --only-binary=:all: -d FOLDER` for the host's Python).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tritonkit.errors import TritonkitError, UsageError
from tritonkit.paths import home

PYTRITON_WHEEL = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
# The 24.10 stub embeds Python through an old pybind11 that reads numpy 1's descriptor layout:
# under numpy 2 every BYTES input arrives with its first byte repeated. The stub's Python
# therefore gets numpy<2 (and nothing else of ours); vLLM runs in its own process on numpy 2.
STUB_NUMPY = "numpy==1.26.4"
WHEEL_ENV = "TRITONKIT_PYTRITON_WHEEL"
WHEEL_GLOB = "nvidia_pytriton-*.whl"


@dataclass(frozen=True)
class TritonInstall:
    root: Path

    @property
    def server_bin(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def backends_dir(self) -> Path:
        return self.root / "backends"

    @property
    def stub_site(self) -> Path:
        return self.root / "stub-site"

    @property
    def info(self) -> dict:
        return json.loads((self.root / "runtime.json").read_text())

    def is_complete(self) -> bool:
        return (self.root / "runtime.json").is_file() and self.server_bin.is_file()


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_root() -> Path:
    return home() / "runtime" / f"triton-{TRITON_VERSION}-py{python_tag()}"


def find_triton() -> TritonInstall | None:
    install = TritonInstall(runtime_root())
    return install if install.is_complete() else None


def _pip(args: list[str], what: str, say: Callable[[str], None], hint: str | None = None) -> None:
    say(what)
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise TritonkitError(f"{what} failed: {tail}", hint or
                             "check that PyPI is reachable (pip config), then run `tritonkit runtime --install`")


def local_wheel(path: str | os.PathLike | None = None) -> Path | None:
    """The carried nvidia-pytriton wheel: PATH (the wheel, or a folder holding one), else
    $TRITONKIT_PYTRITON_WHEEL, else None (download from the package index)."""
    given = path if path is not None else os.environ.get(WHEEL_ENV) or None
    if given is None:
        return None
    where = "--from-wheel" if path is not None else WHEEL_ENV
    p = Path(given).expanduser().resolve()
    if p.is_dir():
        found = sorted(p.glob(WHEEL_GLOB))
        if not found:
            raise UsageError(f"{where}: no {WHEEL_GLOB} in {p}",
                             f"put the wheel there (`pip download --no-deps {PYTRITON_WHEEL} -d {p}`)")
        p = found[-1]
    if not p.is_file():
        raise UsageError(f"{where}: {p} does not exist", "give the nvidia-pytriton wheel or the folder holding it")
    if not zipfile.is_zipfile(p):
        raise UsageError(f"{where}: {p} is not a wheel (not a zip archive)")
    return p


def _extract(wheel: Path, dest: Path) -> None:
    """Copy the server, its libraries, the Python backend and this Python's stub out of the wheel."""
    stub = f"pytriton/tritonserver/python_backend_stubs/{python_tag()}/triton_python_backend_stub"
    wanted = {
        "pytriton/tritonserver/bin/tritonserver": "bin/tritonserver",
        "pytriton/tritonserver/backends/python/libtriton_python.so": "backends/python/libtriton_python.so",
        "pytriton/tritonserver/backends/python/triton_python_backend_utils.py":
            "backends/python/triton_python_backend_utils.py",
        stub: "backends/python/triton_python_backend_stub",
    }
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if "pytriton/tritonserver/bin/tritonserver" not in names:
            raise TritonkitError(f"{wheel.name} is not an nvidia-pytriton wheel (it has no Triton server)",
                                 f"give the {PYTRITON_WHEEL} wheel")
        if stub not in names:
            have = sorted({n.split("/")[3] for n in names if "/python_backend_stubs/" in n and n.count("/") > 4})
            raise TritonkitError(f"the Triton wheel has no Python backend stub for Python {python_tag()}",
                                 f"run tritonkit with one of Python {', '.join(have)}")
        for name in names:
            target = wanted.get(name)
            if target is None and name.startswith("nvidia_pytriton.libs/") and not name.endswith("/"):
                target = "lib/" + name.split("/", 1)[1]
            if target is None:
                continue
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if target.startswith("bin/") or target.endswith("_stub"):
                out.chmod(0o755)


def ensure_triton(say: Callable[[str], None] = lambda msg: None,
                  wheel: str | os.PathLike | None = None) -> TritonInstall:
    """Install the local Triton runtime once (about 55 MB download, or from a carried wheel:
    see `local_wheel`); return it."""
    found = find_triton()
    if found:
        return found
    carried = local_wheel(wheel)
    root = runtime_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the final place and rename, so an interrupted install leaves nothing half-done.
    with tempfile.TemporaryDirectory(prefix=".installing-", dir=root.parent) as tmp:
        work = Path(tmp)
        if carried is None:
            downloads = work / "downloads"
            _pip(["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(downloads), PYTRITON_WHEEL],
                 f"downloading {PYTRITON_WHEEL} (Triton {TRITON_VERSION}, ~55 MB)", say)
            wheel = next(downloads.glob("*.whl"))
            numpy_source: list[str] = []
            numpy_hint = None
        else:
            wheel = carried
            say(f"installing Triton from the carried wheel {wheel}")
            # Offline: numpy for the stub must lie beside the wheel.
            numpy_source = ["--no-index", "--find-links", str(wheel.parent)]
            numpy_hint = (f"put a {STUB_NUMPY} wheel for Python {python_tag()} beside {wheel.name}: "
                          f"`pip download {STUB_NUMPY} --only-binary=:all: --python-version {python_tag()} "
                          f"-d {wheel.parent}`")
        staged = work / "runtime"
        say(f"extracting the Triton server and the Python {python_tag()} backend stub")
        _extract(wheel, staged)
        _pip(["install", "--no-deps", "--only-binary=:all:", "-q", *numpy_source, "--target",
              str(staged / "stub-site"), STUB_NUMPY], f"installing {STUB_NUMPY} for the backend stub", say,
             numpy_hint)
        (staged / "runtime.json").write_text(json.dumps({
            "triton_version": TRITON_VERSION,
            "wheel": wheel.name,
            "from": str(carried) if carried else "package index",
            "python": python_tag(),
            "stub_numpy": STUB_NUMPY,
        }, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)
    say(f"Triton {TRITON_VERSION} installed in {root}")
    return TritonInstall(root)


def remove_triton() -> bool:
    root = runtime_root()
    if not root.exists():
        return False
    shutil.rmtree(root)
    return True


def python_libdir() -> str:
    """The running interpreter's LIBDIR: the stub links libpython3.X.so and must get this one."""
    return sysconfig.get_config_var("LIBDIR") or ""

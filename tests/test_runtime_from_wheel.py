"""The local Triton runtime installed from a carried nvidia-pytriton wheel, with no package index.

A fake wheel (same member names as nvidia-pytriton 0.7.0, a shell script for the server) and a
fake stub-numpy wheel beside it stand in for the 55 MB + 18 MB originals; pip is run for real with
--no-index, so nothing here touches the network.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tritonkit.errors import TritonkitError, UsageError
from tritonkit.runtime import install

FAKE_NUMPY = "tkfakenumpy"


def _fake_pytriton(folder: Path, python: str | None = None, server: bool = True) -> Path:
    python = python or install.python_tag()
    wheel = folder / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        if server:
            zf.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\necho fake tritonserver\n")
        zf.writestr("pytriton/tritonserver/backends/python/libtriton_python.so", b"\x7fELF fake")
        zf.writestr("pytriton/tritonserver/backends/python/triton_python_backend_utils.py", "# utils\n")
        zf.writestr(f"pytriton/tritonserver/python_backend_stubs/{python}/triton_python_backend_stub", "#!/bin/sh\n")
        zf.writestr("nvidia_pytriton.libs/libtritonserver-717102f0.so", b"\x7fELF fake lib")
        zf.writestr("pytriton/__init__.py", "")
    return wheel


def _fake_numpy_wheel(folder: Path) -> Path:
    """A minimal valid wheel that pip installs offline."""
    wheel = folder / f"{FAKE_NUMPY}-1.0-py3-none-any.whl"
    dist = f"{FAKE_NUMPY}-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{FAKE_NUMPY}/__init__.py", "__version__ = '1.0'\n")
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {FAKE_NUMPY}\nVersion: 1.0\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


@pytest.fixture
def carried(tmp_path, monkeypatch):
    """A folder with the fake wheels, an empty $TRITONKIT_HOME, and pip that may not go online."""
    folder = tmp_path / "carried"
    folder.mkdir()
    monkeypatch.setenv("TRITONKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(install.WHEEL_ENV, raising=False)
    monkeypatch.setattr(install, "STUB_NUMPY", f"{FAKE_NUMPY}==1.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # belt and braces: any download attempt fails
    return folder


def test_install_from_a_carried_wheel_offline(carried):
    wheel = _fake_pytriton(carried)
    _fake_numpy_wheel(carried)
    said = []
    found = install.ensure_triton(said.append, wheel=wheel)
    assert found.is_complete() and found.server_bin.read_text().startswith("#!/bin/sh")
    assert (found.lib_dir / "libtritonserver-717102f0.so").is_file()
    assert (found.backends_dir / "python" / "triton_python_backend_stub").is_file()
    assert (found.stub_site / FAKE_NUMPY / "__init__.py").is_file()
    info = json.loads((found.root / "runtime.json").read_text())
    assert info["from"] == str(wheel) and info["wheel"] == wheel.name
    assert any("carried wheel" in m for m in said)
    assert install.find_triton() == found


def test_a_folder_or_the_environment_variable_names_the_wheel(carried, monkeypatch):
    _fake_pytriton(carried)
    _fake_numpy_wheel(carried)
    monkeypatch.setenv(install.WHEEL_ENV, str(carried))  # what `tritonkit serve` reads
    assert install.local_wheel() == carried / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    found = install.ensure_triton()
    assert json.loads((found.root / "runtime.json").read_text())["from"].startswith(str(carried))


def test_cli_runtime_from_wheel(carried):
    from tritonkit.cli import cli as main

    _fake_pytriton(carried)
    _fake_numpy_wheel(carried)
    result = CliRunner().invoke(main, ["runtime", "--from-wheel", str(carried)])
    assert result.exit_code == 0, result.output
    assert "local Triton runtime: Triton 2.51.0 from nvidia_pytriton-0.7.0" in result.output
    assert str(carried) in result.output
    again = CliRunner().invoke(main, ["runtime", "--from-wheel", str(carried)])
    assert again.exit_code == 0 and "already installed" in again.output


@pytest.mark.parametrize("case, error, message", [
    ("missing", UsageError, "does not exist"),
    ("empty-folder", UsageError, "no nvidia_pytriton-*.whl"),
    ("not-a-zip", UsageError, "not a wheel"),
    ("no-server", TritonkitError, "not an nvidia-pytriton wheel"),
    ("no-stub", TritonkitError, "no Python backend stub"),
    ("no-numpy", TritonkitError, "beside"),
])
def test_bad_carried_wheels_fail_plainly_and_install_nothing(carried, case, error, message):
    if case == "missing":
        wheel = carried / "nope.whl"
    elif case == "empty-folder":
        wheel = carried
    elif case == "not-a-zip":
        wheel = carried / "nvidia_pytriton-0.7.0-py3-none-any.whl"
        wheel.write_text("not a zip")
    else:
        wheel = _fake_pytriton(carried, python="2.7" if case == "no-stub" else None, server=case != "no-server")
        if case != "no-numpy":
            _fake_numpy_wheel(carried)
    with pytest.raises(error, match=re.escape(message)):
        install.ensure_triton(wheel=wheel)
    assert install.find_triton() is None
    assert not install.runtime_root().exists()

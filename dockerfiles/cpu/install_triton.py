"""Lay out Triton from the nvidia-pytriton wheel as NGC's image does (run inside the image build).

usage: python3 install_triton.py WHEEL_DIR /opt/tritonserver
"""

import glob
import shutil
import sys
import zipfile
from pathlib import Path

src_dir, dest = Path(sys.argv[1]), Path(sys.argv[2])
wheel = sorted(glob.glob(str(src_dir / "nvidia_pytriton-*.whl")))[-1]
stub = f"pytriton/tritonserver/python_backend_stubs/{sys.version_info.major}.{sys.version_info.minor}/"
wanted = {
    "pytriton/tritonserver/bin/tritonserver": "bin/tritonserver",
    "pytriton/tritonserver/backends/python/libtriton_python.so": "backends/python/libtriton_python.so",
    "pytriton/tritonserver/backends/python/triton_python_backend_utils.py":
        "backends/python/triton_python_backend_utils.py",
    stub + "triton_python_backend_stub": "backends/python/triton_python_backend_stub",
    "pytriton/tritonserver/caches/local/libtritoncache_local.so": "caches/local/libtritoncache_local.so",
}
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        target = wanted.get(name)
        if target is None and name.startswith("nvidia_pytriton.libs/") and not name.endswith("/"):
            target = "lib/" + name.split("/", 1)[1]
        if target is None:
            continue
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(name) as f, open(out, "wb") as g:
            shutil.copyfileobj(f, g)
        if target.startswith("bin/") or target.endswith("_stub"):
            out.chmod(0o755)
missing = [t for t in wanted.values() if not (dest / t).is_file()]
if missing:
    sys.exit(f"install_triton: {wheel} lacks {', '.join(missing)}")
print(f"install_triton: Triton from {Path(wheel).name} in {dest}")

"""Where tritonkit's files are: the user's ($TRITONKIT_HOME) and the ones it ships.

$TRITONKIT_HOME (default ~/.cache/tritonkit) holds what tritonkit writes for the user: the local
Triton runtime (runtime/), built-in and random-weight models (models/), server records
(servers/), and optional user catalogs (models.json, gpus.json).

Shipped files are named by their path in the project's source tree ("model_repo_templates/vllm",
"dockerfiles", "perf/presets", "tritonkit/data/corpus.txt"). An installed wheel carries the
top-level folders under tritonkit/share/ (setup.py copies them at build time); a source checkout
or an editable install reads them where they are. One copy of each file either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from tritonkit.errors import TritonkitError

PACKAGE_DIR = Path(__file__).resolve().parent
# Searched in order: the wheel's copy of the top-level folders, then the tree holding the package
# (the source checkout, or site-packages for the package's own tritonkit/data/).
SHIPPED_ROOTS = (PACKAGE_DIR / "share", PACKAGE_DIR.parent)


def home() -> Path:
    """$TRITONKIT_HOME, else ~/.cache/tritonkit (not created here: callers create what they write)."""
    return Path(os.environ.get("TRITONKIT_HOME") or "~/.cache/tritonkit").expanduser().resolve()


def shipped(relative: str) -> Path:
    """A file or folder tritonkit ships, by its path in the source tree."""
    for root in SHIPPED_ROOTS:
        candidate = root / relative
        if candidate.exists():
            return candidate
    raise TritonkitError(f"this tritonkit installation lacks its {relative} "
                         f"(looked in {', '.join(str(r) for r in SHIPPED_ROOTS)})",
                         "reinstall tritonkit: pip install --force-reinstall tritonkit")

"""Where tritonkit keeps its own files: user catalogs and built-in models."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$TRITONKIT_HOME, else ~/.cache/tritonkit (not created here: callers create what they write)."""
    return Path(os.environ.get("TRITONKIT_HOME") or "~/.cache/tritonkit").expanduser().resolve()

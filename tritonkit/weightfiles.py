"""Reading weight files without loading the weights: safetensors headers and parameter counts."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: tensor name -> dtype, shape, offsets."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def count_parameters(folder: Path) -> int:
    """Exact parameter count from the safetensors headers (no weights are read); 0 if none."""
    total = 0
    for shard in sorted(Path(folder).glob("*.safetensors")):
        for info in safetensors_header(shard).values():
            n = 1
            for dim in info["shape"]:
                n *= dim
            total += n
    return total

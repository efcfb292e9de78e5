"""Results that survive: every request written as it finishes, summary files replaced atomically.

`Journal` appends one JSON line per event to <out>/requests.jsonl (the run's setup first, then each
finished request and each readiness change), each line written whole with one os.write, so a
`kill -9` of perf leaves a file whose every complete line is valid. A write that fails (a full
disk) is undone to the last whole line, and the run is told once; nothing already written is lost.
`write_atomic` writes a summary file through a temporary file and os.replace. `read` reads a
journal back, tolerating the one half-written last line that a kill can leave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from tritonkit.errors import UsageError

JOURNAL = "requests.jsonl"


class ResultsWriteError(UsageError):
    """Results could not be written (full disk, read-only folder...)."""


def _fail(path: Path, err: OSError, kept: str) -> ResultsWriteError:
    return ResultsWriteError(f"cannot write results to {path}: {err.strerror or err}; {kept}",
                             "free some space there, or pass --out on another disk")


class Journal:
    def __init__(self, out_dir: Path, on_error: Callable[[ResultsWriteError], None] | None = None,
                 name: str = JOURNAL):
        self.path = Path(out_dir) / name
        self.on_error = on_error or (lambda err: None)
        self.lines = 0
        self.error: ResultsWriteError | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise _fail(self.path, err, "nothing was sent") from None
        self.offset = 0

    def write(self, event: dict) -> None:
        """Append one event; after a failed write, further events are dropped (the error is kept)."""
        if self.fd is None:
            return
        data = (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode()
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as err:
            try:  # undo a partial line so the file stays whole lines
                os.ftruncate(self.fd, self.offset)
            except OSError:
                pass
            self.close()
            self.error = _fail(self.path, err, f"the {self.lines} lines written before are valid")
            self.on_error(self.error)
            return
        self.offset += len(data)
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file or nothing (a previous version stays in place on failure)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _fail(path, err, "the files written before it are valid") from None


def read(path: Path) -> tuple[list[dict], bool]:
    """A journal's events and whether its last line was cut off (a killed writer); a corrupt
    line anywhere else is a one-line UsageError naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / JOURNAL
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read results file {path}: {err.strerror or err}") from None
    lines = raw.split(b"\n")
    cut = lines[-1] != b""  # a complete file ends with a newline
    events = []
    for n, line in enumerate(lines[:-1], start=1):
        try:
            event = json.loads(line)
        except ValueError as err:
            raise UsageError(f"results file {path} is corrupt at line {n} ({err})",
                             "the lines before it are valid; rerun perf for complete results") from None
        if not isinstance(event, dict) or "type" not in event:
            raise UsageError(f"results file {path} is corrupt at line {n} (not a tritonkit event)",
                             "the lines before it are valid; rerun perf for complete results")
        events.append(event)
    return events, cut

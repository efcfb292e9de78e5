"""Wait for a Triton server to be ready, whichever runtime started it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable

from tritonkit.errors import ServerError


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def model_states(http_url: str) -> dict[str, str]:
    """name -> state (READY, UNAVAILABLE, LOADING...) from Triton's repository index."""
    req = urllib.request.Request(f"http://{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            index = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {entry["name"]: entry.get("state", "") + (f": {entry['reason']}" if entry.get("reason") else "")
            for entry in index}


def wait_ready(
    http_url: str,
    models: list[str],
    timeout_s: float,
    is_alive: Callable[[], bool],
    log_tail: Callable[[], str],
    on_progress: Callable[[str, float], None] | None = None,
    poll_s: float = 0.5,
) -> float:
    """Block until the server and `models` are ready; return the seconds it took.

    Raises ServerError with the last log lines when the server exits, a model fails to load,
    or `timeout_s` passes.
    """
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if not is_alive():
            raise ServerError(f"the server exited while starting; last log lines:\n{log_tail()}",
                              "fix the cause above and run serve again")
        live = http_status(f"http://{http_url}/v2/health/live") == 200
        if live:
            states = model_states(http_url)
            failed = {m: s for m, s in states.items() if m in models and s.startswith("UNAVAILABLE")}
            if failed:
                detail = "; ".join(f"{m}: {s}" for m, s in failed.items())
                raise ServerError(f"model failed to load ({detail}); last log lines:\n{log_tail()}",
                                  "fix the model repository (or rebuild it) and serve again")
            if all(http_status(f"http://{http_url}/v2/models/{m}/ready") == 200 for m in models):
                return elapsed
            phase = "loading " + ", ".join(models)
        else:
            phase = "starting server"
        if on_progress:
            on_progress(phase, elapsed)
        if elapsed > timeout_s:
            raise ServerError(f"not ready after {timeout_s:.0f} s ({phase}); last log lines:\n{log_tail()}",
                              "raise --timeout for large models, or check the log")
        time.sleep(poll_s)

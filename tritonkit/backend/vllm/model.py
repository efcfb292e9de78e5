"""tritonkit's `vllm` backend for the local Triton runtime: the Triton side.

The official Triton vLLM backend lives only inside NGC images. This Python-based backend honours
the same contract (model.json, multi_lora.json, inputs, outputs, error messages, decoupled
streaming, metrics, health check) so a repository built once serves unchanged under both
runtimes; the README's "Contract with the official vLLM backend" lists what differs.

It supervises its engine: a dead engine (crash, OOM kill, SIGKILL) is noticed within WATCH_S, a
hung one when its heartbeat stops for HANG_TIMEOUT_S; in-flight requests then fail with the
cause and the engine's last log lines, the engine's process group is killed, and the engine is
restarted at most MAX_RESTARTS times in RESTART_WINDOW_S. Where Triton allows explicit model
control, the restart is an unload (the model reports not ready) and a reload by a small helper
(tritonkit.backend.reloader); a reload over the budget fails with the reason, which Triton's
repository index shows. Otherwise the engine restarts in place (Triton 2.51 gives a Python model
no way to report itself not ready) and requests are refused until it is back.

It runs in the backend stub, whose Python must keep numpy<2 (the 24.10 stub corrupts BYTES inputs
under numpy 2), so vLLM cannot live here: initialize() starts `tritonkit.backend.engine` in the
main environment and talks to it over a Unix socket, one JSON object per line. This file imports
only the standard library, numpy and triton_python_backend_utils (it is copied alone into the
server's backend folder).
"""

import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

ENGINE_START_TIMEOUT_S = float(os.environ.get("TRITONKIT_ENGINE_START_TIMEOUT", "1800"))
HEALTH_TIMEOUT_S = 10.0
WATCH_S = 0.1
# Generous: the engine's event loop also tokenizes, and a loaded 2-core machine stalled it 5 s.
HANG_TIMEOUT_S = float(os.environ.get("TRITONKIT_ENGINE_HANG_TIMEOUT_S", "30"))
MAX_RESTARTS = int(os.environ.get("TRITONKIT_ENGINE_MAX_RESTARTS", "3"))
RESTART_WINDOW_S = 600.0
LOG_TAIL_LINES = 6
CANCEL_POLL_S = 0.1
LINE_LIMIT = 64 * 1024 * 1024

BOOL_INPUTS = ["stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens"]
OUTPUTS = [("text_output", "TYPE_STRING", [-1]), ("finish_reason", "TYPE_STRING", [-1]),
           ("cumulative_logprob", "TYPE_FP32", [-1]), ("logprobs", "TYPE_STRING", [-1]),
           ("num_input_tokens", "TYPE_UINT32", [1]), ("num_output_tokens", "TYPE_UINT32", [-1])]
# The official backend's histogram buckets (token-count ones are 1-2-5 up to max_model_len).
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
E2E_BUCKETS = [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
N_BUCKETS = [1, 2, 5, 10, 20]
# The official backend's messages, word for word: clients match on them.
STREAM_PROMPT_ERROR = "When streaming, `exclude_input_in_output` = False is not allowed."
UNHEALTHY_ERROR = "Model is unavailable due to unhealthy vLLM engine"


def buckets_1_2_5(limit):
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return out
            out.append(m * scale)
        scale *= 10


def triton_error(message, code_name=None):
    code = getattr(pb_utils.TritonError, code_name, None) if code_name else None
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class RequestError(Exception):
    """A request the backend refuses; its text goes to the client as is."""


def describe_exit(code):
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}" + (" (the kernel's OOM killer also sends it)" if -code == signal.SIGKILL else "")


class RestartLedger:
    """The engine deaths of one model in this server, in a file: a reload starts a new stub, and
    the restart budget must survive it. A load that is not a restart starts a fresh ledger."""

    PREFIX = "tritonkit-engines-"

    def __init__(self, model_name):
        self.folder = os.path.join(tempfile.gettempdir(), f"{self.PREFIX}{os.getppid()}")  # per server
        self.remove_stale()
        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, f"{model_name}.json")

    @classmethod
    def remove_stale(cls):
        """The folders of servers that are gone (killed before their models were finalized)."""
        root = tempfile.gettempdir()
        for name in os.listdir(root):
            pid = name[len(cls.PREFIX):]
            if name.startswith(cls.PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def forget(self):
        """The model is gone for good (not unloaded for a restart): its file goes, and the
        server's folder with its last file."""
        if self._read().get("restart_pending"):
            return
        for remove, path in ((os.unlink, self.path), (os.rmdir, self.folder)):
            try:
                remove(path)
            except OSError:
                pass

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write(self, data):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def record_death(self, cause):
        """Note a death; return how many happened within the window."""
        now = time.time()
        deaths = [t for t in self._read().get("deaths", []) if now - t < RESTART_WINDOW_S] + [now]
        self._write({"deaths": deaths, "last_cause": cause, "restart_pending": True})
        return len(deaths)

    def check_load(self):
        """None, or why this (re)load must not start another engine."""
        data = self._read()
        if not data.get("restart_pending"):
            self._write({"deaths": []})
            return None
        self._write({**data, "restart_pending": False})
        if len(data["deaths"]) > MAX_RESTARTS:
            return over_budget(len(data["deaths"]), data.get("last_cause", "?"))
        return None


def over_budget(deaths, cause):
    return (f"its vLLM engine died {deaths} times within {RESTART_WINDOW_S / 60:.0f} minutes, so it is not "
            f"restarted again; the last time it {cause}. Fix the cause, then load the model again "
            f"or restart the server")


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        have_inputs = {i["name"] for i in config.get("input", [])}
        have_outputs = {o["name"] for o in config.get("output", [])}
        inputs = [{"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]}]
        inputs += [{"name": n, "data_type": "TYPE_BOOL", "dims": [1], "optional": True} for n in BOOL_INPUTS]
        inputs.append({"name": "sampling_parameters", "data_type": "TYPE_STRING", "dims": [1], "optional": True})
        for inp in inputs:
            if inp["name"] not in have_inputs:
                auto_complete_model_config.add_input(inp)
        for name, dtype, dims in OUTPUTS:
            if name not in have_outputs:
                auto_complete_model_config.add_output({"name": name, "data_type": dtype, "dims": dims})
        auto_complete_model_config.set_max_batch_size(0)
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args):
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException(
                "vLLM Triton backend must be configured to use decoupled model transaction policy")
        self.model_name = args["model_name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        model_json = os.path.join(version_dir, "model.json")
        with open(model_json) as f:
            engine_args = json.load(f)
        lora_json = os.path.join(version_dir, "multi_lora.json")
        self.enable_lora = str(engine_args.get("enable_lora", False)).lower() == "true"
        self.lora_names = []
        if self.enable_lora:
            if not os.path.isfile(lora_json):
                raise FileNotFoundError(f"Triton backend cannot find {lora_json}.")
            with open(lora_json) as f:
                self.lora_names = list(json.load(f))
        # As the official backend: metrics need the config parameter and vLLM's own stats.
        self.report_metrics = (self._bool_param("REPORT_CUSTOM_METRICS")
                               and str(engine_args.get("disable_log_stats", False)).lower() != "true")
        self.health_check = self._bool_param("ENABLE_VLLM_HEALTH_CHECK")
        self.healthy = True

        self.ledger = RestartLedger(self.model_name)
        refusal = self.ledger.check_load()
        if refusal:
            self.ledger.forget()  # a later load by hand starts a fresh budget anyway
            raise pb_utils.TritonModelException(f"model '{self.model_name}' is down: {refusal}")

        self.workdir = tempfile.mkdtemp(prefix="tk-engine-")
        self.socket_path = os.path.join(self.workdir, "engine.sock")
        self.engine_cmd = self._engine_command(model_json, lora_json if self.enable_lora else None)
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, name="tk-engine-io", daemon=True)
        self.loop_thread.start()
        self.pending = {}
        self.metrics = None
        self.down = None  # why requests are refused now (the engine is dead or restarting)
        self.unloaded_for_restart = False
        try:
            hello = self._call(self._launch(), timeout=ENGINE_START_TIMEOUT_S + 5)
        except BaseException:  # a failed load is never finalized: clean up here
            self.ledger.forget()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        if self.report_metrics:
            self.metrics = self._init_metrics(args["model_version"], hello["max_model_len"])
        self.watch = asyncio.run_coroutine_threadsafe(self._watch(), self.loop)
        self.logger.log_info(f"tritonkit vllm backend: engine ready for model {self.model_name} (pid {hello['pid']})")

    def _bool_param(self, name):
        value = self.model_config.get("parameters", {}).get(name, {}).get("string_value", "")
        return value.lower() == "true"

    # --- engine process -------------------------------------------------------------------

    def _engine_command(self, model_json, lora_json):
        python = os.environ.get("TRITONKIT_ENGINE_PYTHON")
        if not python:
            raise pb_utils.TritonModelException(
                "TRITONKIT_ENGINE_PYTHON is not set: start this server with `tritonkit serve`")
        cmd = [python, "-m", "tritonkit.backend.engine", "--model-json", model_json,
               "--socket", self.socket_path, "--model-name", self.model_name]
        if lora_json:
            cmd += ["--multi-lora-json", lora_json]
        if self.report_metrics:
            cmd.append("--stats")
        return cmd

    @staticmethod
    def _engine_env():
        """The engine (and the reloader) run the tritonkit tree that the server was started from."""
        env = dict(os.environ)
        if env.get("TRITONKIT_ENGINE_PYTHONPATH"):
            env["PYTHONPATH"] = env["TRITONKIT_ENGINE_PYTHONPATH"]
        return env

    async def _launch(self):
        """Start an engine and wait for its hello. Runs on the loop thread, which lives as long as
        this stub: the engine's parent-death signal fires when the thread that started it ends."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        # Its own process group, so the whole group (vLLM's children too) can be killed at once;
        # cwd is a neutral directory: the server's cwd holds the stub's numpy<2, which the engine
        # (python -m puts cwd first on sys.path) must not see. Its output goes through us, to the
        # server's log, keeping the last lines for error messages.
        self.engine = subprocess.Popen(self.engine_cmd, cwd=self.workdir, env=self._engine_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_tail = collections.deque(maxlen=200)
        self.log_pump = threading.Thread(target=self._pump_log, args=(self.engine.stdout, self.log_tail),
                                         name="tk-engine-log", daemon=True)
        self.log_pump.start()
        self.last_heard, self.connection_lost = time.monotonic(), False
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while True:
            code = self.engine.poll()
            if code is not None:
                raise pb_utils.TritonModelException(
                    f"the vLLM engine process {describe_exit(code)} while loading; its last log lines:\n{self._tail()}")
            if os.path.exists(self.socket_path):
                try:
                    self.reader, self.writer = await asyncio.open_unix_connection(self.socket_path, limit=LINE_LIMIT)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self._kill_engine()
                raise pb_utils.TritonModelException(f"the vLLM engine was not ready after {ENGINE_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        hello = json.loads(await self.reader.readline() or b"{}")
        if hello.get("op") != "hello":
            raise pb_utils.TritonModelException("the vLLM engine closed its connection while starting")
        self.last_heard = time.monotonic()
        self.reader_task = asyncio.ensure_future(self._read_engine())
        return hello

    @staticmethod
    def _pump_log(stream, tail):
        for line in iter(stream.readline, b""):
            tail.append(line.decode("utf-8", "replace").rstrip())
            try:
                os.write(2, line)
            except OSError:
                pass

    def _tail(self):
        self.log_pump.join(0.2)  # the last lines of a dead engine may still be in the pipe
        lines = [line for line in self.log_tail if line.strip()]
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"

    def _kill_engine(self, sig=signal.SIGKILL):
        """Signal the engine's whole process group and reap the engine."""
        try:
            os.killpg(self.engine.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.engine.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.engine.pid, signal.SIGKILL)
            self.engine.wait()

    async def _read_engine(self):
        while True:
            line = await self.reader.readline()
            if not line:
                break
            self.last_heard = time.monotonic()
            msg = json.loads(line)
            if msg.get("op") == "beat":
                continue
            if msg.get("op") == "stats":
                if self.metrics is not None:
                    self._observe(msg)
                continue
            queue = self.pending.get(msg.get("id"))
            if queue is not None:
                queue.put_nowait(msg)
        self.connection_lost = True  # the watcher tells why and fails what is in flight

    def _call(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _send(self, obj):
        """One message to the engine. A lost connection raises a fresh ConnectionError each time:
        asyncio's drain() re-raises one stored exception object, whose traceback then grows by
        every caller's frames and keeps them (and their requests) alive -- before supervision
        the soak's stub grew ~21 KiB per request failed that way."""
        if self.writer.is_closing():
            raise ConnectionError("the connection to the vLLM engine is closed")
        try:
            self.writer.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
            await self.writer.drain()
        except OSError as err:
            err.__traceback__ = None
            raise ConnectionError(f"the connection to the vLLM engine was lost ({err})") from None

    async def _engine_health(self):
        """None when the engine answers its health check, else why not."""
        if self.engine.poll() is not None:
            return f"the vLLM engine process exited with code {self.engine.returncode}"
        health_id = "health-" + uuid.uuid4().hex
        queue = self.pending[health_id] = asyncio.Queue()
        try:
            await self._send({"op": "health", "id": health_id})
            reply = await asyncio.wait_for(queue.get(), HEALTH_TIMEOUT_S)
            return reply.get("error")
        except (asyncio.TimeoutError, OSError) as err:
            return f"the vLLM engine did not answer its health check ({type(err).__name__})"
        finally:
            self.pending.pop(health_id, None)

    # --- supervision ----------------------------------------------------------------------

    async def _watch(self):
        while True:
            await asyncio.sleep(WATCH_S)
            if self.down is not None:
                continue
            code = self.engine.poll()
            if code is None and self.connection_lost:
                await asyncio.sleep(0.5)  # it is probably exiting: give it time to tell why
                code = self.engine.poll()
                if code is None:
                    await self._engine_lost("closed its connection (killed)")
                    continue
            if code is not None:
                await self._engine_lost(describe_exit(code))
            elif time.monotonic() - self.last_heard > HANG_TIMEOUT_S:
                silent = time.monotonic() - self.last_heard
                await self._engine_lost(f"stopped answering: no heartbeat for {silent:.1f} s, so it was killed")

    async def _engine_lost(self, cause):
        """Fail what is in flight with the cause, kill the engine's group, and restart it."""
        if self.down is not None:
            return
        # Worded for clients that sort failures: in flight "engine died", refused "not ready".
        self.down = f"model '{self.model_name}' is not ready: its vLLM engine is restarting (it {cause})"
        self._kill_engine()
        message = f"the vLLM engine died (model '{self.model_name}'): it {cause}; its last log lines:\n{self._tail()}"
        self.logger.log_error(f"[vllm] {message}")
        for request_id, queue in list(self.pending.items()):
            queue.put_nowait({"error": message, "done": True})
        deaths = self.ledger.record_death(cause)
        if self._unload_for_restart():
            return  # the model reports not ready; the reloader loads it again, a new stub checks the budget
        while deaths <= MAX_RESTARTS:
            self.logger.log_warn(f"[vllm] restarting the engine of {self.model_name} in place "
                                 f"({deaths} of {MAX_RESTARTS} allowed in {RESTART_WINDOW_S / 60:.0f} minutes)")
            try:
                await self._launch()
            except Exception as err:
                deaths = self.ledger.record_death(f"failed to start again: {err}")
                continue
            self.ledger.check_load()  # clears the pending restart
            self.down, self.healthy = None, True
            self.logger.log_info(f"[vllm] the engine of {self.model_name} is back")
            return
        self.down = f"model '{self.model_name}' is down: {over_budget(deaths, cause)}"
        self.logger.log_error(f"[vllm] {self.down}")

    def _unload_for_restart(self):
        """Unload this model (Triton then reports it not ready) and leave its reload to a helper
        process. False where Triton refuses (model control mode is not explicit)."""
        try:
            pb_utils.unload_model(self.model_name)  # does not wait for the unload
            self.unloaded_for_restart = True
        except Exception as err:
            self.logger.log_warn(f"[vllm] cannot unload {self.model_name} ({err}), so Triton keeps reporting it "
                                 "ready while its engine restarts (start Triton with --model-control-mode=explicit)")
            return False
        try:
            self._spawn_reloader()  # the stub lives on until Triton finalizes it: time enough
        except Exception as err:
            self.logger.log_error(f"[vllm] unloaded {self.model_name} but cannot start the reloader: {err}")
            return True
        self.logger.log_warn(f"[vllm] unloaded {self.model_name}; it is loaded again with a new engine")
        return True

    def _spawn_reloader(self):
        server_args = open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode().split("\0")
        options = dict(a[2:].split("=", 1) for a in server_args if a.startswith("--") and "=" in a)
        if options.get("allow-http", "true").lower() in ("false", "0"):
            raise RuntimeError("the server has no HTTP endpoint")
        host = options.get("http-address", "0.0.0.0")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        url = f"http://{host}:{options.get('http-port', '8000')}"
        return subprocess.Popen([self.engine_cmd[0], "-m", "tritonkit.backend.reloader", "--url", url,
                                 "--model", self.model_name], cwd=self.workdir, env=self._engine_env())

    # --- requests -------------------------------------------------------------------------

    def execute(self, requests):
        if self.health_check and not self._check_health(requests):
            return None
        if self.down is not None:
            for request in requests:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=triton_error(self.down, "UNAVAILABLE")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        for request in requests:
            try:
                sampling = self._sampling(request)
                self._check_lora(sampling.get("lora_name"))
            except RequestError as err:
                self._respond_error(request.get_response_sender(), str(err))
                continue
            except Exception as err:  # e.g. sampling parameters that are not JSON
                self._respond_error(request.get_response_sender(), f"Error generating stream: {err}")
                continue
            asyncio.run_coroutine_threadsafe(self._generate(request, sampling), self.loop)
        return None

    def _check_health(self, requests):
        """ENABLE_VLLM_HEALTH_CHECK, as the official backend: a failed check refuses the requests
        and takes the model down (unloaded where Triton allows it); tritonkit then restarts the
        engine within the restart budget, where the official backend leaves the model unloaded."""
        if self.healthy and self.down is None:
            problem = self._call(self._engine_health(), timeout=HEALTH_TIMEOUT_S + 5)
            if problem is not None:
                self.logger.log_error(f"[vllm] Engine is not healthy and model will be unloaded: {problem}")
                self.healthy = False
                asyncio.run_coroutine_threadsafe(self._engine_lost(f"failed its health check: {problem}"), self.loop)
        if not self.healthy:
            for request in requests:
                request.get_response_sender().send(
                    pb_utils.InferenceResponse(error=triton_error(UNHEALTHY_ERROR, "UNAVAILABLE")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return self.healthy

    def _respond_error(self, sender, message):
        text = pb_utils.Tensor("text_output", np.array([message.encode("utf-8")], dtype=np.object_))
        sender.send(pb_utils.InferenceResponse(output_tensors=[text], error=triton_error(message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _sampling(self, request):
        """The sampling_parameters input when given, else the request's parameters (gRPC
        `parameters=`, HTTP generate's extra keys): the official backend reads one or the other."""
        tensor = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
        if tensor is not None:
            raw = tensor.as_numpy().reshape(-1)[0]
            raw = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        else:
            raw = request.parameters() or "{}"
        sampling = json.loads(raw) if raw.strip() else {}
        if not isinstance(sampling, dict):
            raise ValueError("sampling parameters must be a JSON object")
        return sampling

    def _check_lora(self, lora_name):
        if lora_name is None:
            return
        if not self.enable_lora:
            raise RequestError("LoRA feature is not enabled.")
        if lora_name not in self.lora_names:
            raise RequestError(f"LoRA {lora_name} is not supported, we currently support {self.lora_names}")

    def _options(self, request):
        def flag(name):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])

        options = {name: bool(flag(name)) for name in BOOL_INPUTS}
        exclude = flag("exclude_input_in_output")
        # The prompt is prepended to non-streamed output unless excluded; a streamed request
        # that asks for it explicitly is refused.
        options["prepend_input"] = (not options["stream"]) if exclude is None else not exclude
        if options["prepend_input"] and options["stream"]:
            raise ValueError(STREAM_PROMPT_ERROR)
        return options

    async def _generate(self, request, sampling):
        sender = request.get_response_sender()
        request_id = None
        try:
            options = self._options(request)
            tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
            if tensor is None:  # the official backend fails here with "'NoneType' object has no attribute"
                raise ValueError("the request has no text_input (a BYTES tensor of shape [1])")
            prompt = tensor.as_numpy().reshape(-1)[0]
            prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
            request_id = f"{request.request_id() or uuid.uuid4().hex}-{uuid.uuid4().hex[:8]}"  # unique in the engine
            queue = self.pending[request_id] = asyncio.Queue()
            self._count_running()
            await self._send({"op": "generate", "id": request_id, "prompt": prompt, "stream": options["stream"],
                              "sampling": sampling, "lora_name": sampling.pop("lora_name", None)})
            await self._relay(request_id, queue, sender, prompt, options)
        except Exception as err:  # every failure reaches the client as an error response
            self.logger.log_warn(f"[vllm] request {request_id}: Error generating stream: {err}")
            try:
                self._respond_error(sender, f"Error generating stream: {err}")
            except Exception as send_err:  # the final response had already gone out
                self.logger.log_warn(f"request {request_id}: could not report the error: {send_err}")
        finally:
            if request_id is not None and self.pending.pop(request_id, None) is not None:
                self._count_running()

    async def _relay(self, request_id, queue, sender, prompt, options):
        first = True
        while True:
            if sender.is_cancelled():
                self.logger.log_info(f"request {request_id} was cancelled by the client")
                await self._send({"op": "abort", "id": request_id})
                sender.send(pb_utils.InferenceResponse(error=triton_error("Request was cancelled", "CANCELLED")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            try:
                msg = await asyncio.wait_for(queue.get(), CANCEL_POLL_S)
            except asyncio.TimeoutError:
                continue
            if msg.get("error"):
                raise RuntimeError(msg["error"])
            response = self._response(msg, options, prompt if first and options["prepend_input"] else "")
            first = False
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if msg["done"] else 0)
            if msg["done"]:
                return

    @staticmethod
    def _response(msg, options, prefix):
        outs = msg["outputs"]

        def strings(values):
            return np.array([v.encode("utf-8") for v in values], dtype=np.object_)

        tensors = [pb_utils.Tensor("text_output", strings([prefix + o["text"] for o in outs]))]
        if options["return_finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", strings([str(o["finish_reason"]) for o in outs])))
        if options["return_cumulative_logprob"]:
            # vLLM keeps no cumulative logprob without `logprobs`: NaN then, as the official backend.
            values = [np.nan if o["cumulative_logprob"] is None else o["cumulative_logprob"] for o in outs]
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.array(values, dtype=np.float32)))
        if options["return_logprobs"]:
            tensors.append(pb_utils.Tensor("logprobs", strings([json.dumps(o["logprobs"]) for o in outs])))
        if options["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([msg["prompt_tokens"]], dtype=np.uint32)))
        if options["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([o["n"] for o in outs], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    # --- metrics --------------------------------------------------------------------------

    def _init_metrics(self, version, max_model_len):
        labels = {"model": self.model_name, "version": str(version)}
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        token_buckets = buckets_1_2_5(max_model_len)
        specs = {  # key: (name, description, kind, buckets)
            "prompt_tokens": ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", counter, None),
            "generation_tokens": ("vllm:generation_tokens_total", "Number of generation tokens processed.", counter, None),
            "ttft": ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     histogram, TTFT_BUCKETS),
            "itl": ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                    histogram, TPOT_BUCKETS),
            "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                    histogram, E2E_BUCKETS),
            "req_prompt": ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", histogram, token_buckets),
            "req_generation": ("vllm:request_generation_tokens", "Number of generation tokens processed.",
                               histogram, token_buckets),
            "n": ("vllm:request_params_n", "Histogram of the n request parameter.", histogram, N_BUCKETS),
            # tritonkit's own (the official backend has no such gauge): requests in flight.
            "running": ("vllm:num_requests_running", "Number of requests in the engine.",
                        pb_utils.MetricFamily.GAUGE, None),
        }
        self.metric_families = []  # a family must outlive its metrics
        metrics = {}
        try:
            for key, (name, description, kind, buckets) in specs.items():
                self.metric_families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
                extra = {"buckets": buckets} if buckets else {}
                metrics[key] = self.metric_families[-1].Metric(labels=labels, **extra)
        except pb_utils.TritonModelException as err:
            if "metrics not supported" not in str(err):
                raise
            self.logger.log_info("[vllm] Metrics not supported")  # the server runs with --allow-metrics=false
            return None
        return metrics

    def _count_running(self):
        if self.metrics is not None:
            self.metrics["running"].set(sum(1 for k in self.pending if not k.startswith("health-")))

    def _observe(self, stats):
        m = self.metrics
        for key in ("prompt_tokens", "generation_tokens"):
            if stats[key]:
                m[key].increment(stats[key])
        for key in ("ttft", "itl", "e2e", "req_prompt", "req_generation", "n"):
            for value in stats[key]:
                m[key].observe(value)

    # --- shutdown -------------------------------------------------------------------------

    def finalize(self):
        if getattr(self, "watch", None) is not None:
            self.watch.cancel()
        try:
            self._call(self._close(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.engine.poll() is None:
            self._kill_engine(signal.SIGTERM)  # the engine shuts vLLM down; its group goes with it
        shutil.rmtree(self.workdir, ignore_errors=True)
        if not self.unloaded_for_restart:  # (finalized maybe long after the new stub loaded)
            self.ledger.forget()

    async def _close(self):
        self.writer.close()

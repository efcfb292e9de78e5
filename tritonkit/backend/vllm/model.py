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
main environment and talks to it over a Unix socket, one JSON object per line. The stub cannot
import tritonkit (it runs Python in isolated mode): this folder's modules are copied together into
the server's backend folder, which the stub puts on sys.path, and import only each other, the
standard library, numpy and triton_python_backend_utils:
  request_io      the request/response contract (inputs, options, sampling, responses, errors)
  engine_process  the engine's and the reloader's processes, the engine's log
  restart_ledger  the restart budget, kept across the stubs of one server
  engine_metrics  the vLLM metrics families
  response_thread responses sent to Triton off the event loop, and cancellation asked there
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import triton_python_backend_utils as pb_utils
from engine_metrics import EngineMetrics
from engine_process import EngineLog, describe_exit, engine_command, engine_env, kill_group, spawn_reloader
from request_io import (UNHEALTHY_ERROR, RequestError, build_response, check_lora, complete_config, error_response,
                        read_options, read_prompt, read_sampling, refuse, respond_error, triton_error)
from response_thread import RequestState, ResponseThread
from restart_ledger import MAX_RESTARTS, RESTART_WINDOW_S, RestartLedger, over_budget

ENGINE_START_TIMEOUT_S = float(os.environ.get("TRITONKIT_ENGINE_START_TIMEOUT", "1800"))
HEALTH_TIMEOUT_S = 10.0
WATCH_S = 0.1
# Generous: the engine's event loop also tokenizes, and a loaded 2-core machine stalled it 5 s.
HANG_TIMEOUT_S = float(os.environ.get("TRITONKIT_ENGINE_HANG_TIMEOUT_S", "30"))
# A request silent this long (queued in vLLM, or not streamed) is asked whether it was cancelled.
CANCEL_POLL_S = 0.1
LINE_LIMIT = 64 * 1024 * 1024


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        return complete_config(auto_complete_model_config)

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
        self.responses = ResponseThread(pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL, self.logger.log_error)
        self.pending = {}
        self.metrics = None
        self.down = None  # why requests are refused now (the engine is dead or restarting)
        self.unloaded_for_restart = False
        try:
            hello = self._call(self._launch(), timeout=ENGINE_START_TIMEOUT_S + 5)
        except BaseException:  # a failed load is never finalized: clean up here
            self.ledger.forget()
            self.responses.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        if self.report_metrics:
            self.metrics = EngineMetrics.register(self.model_name, args["model_version"], hello["max_model_len"],
                                                  self.logger)
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
        return engine_command(python, model_json, self.socket_path, self.model_name, lora_json, self.report_metrics)

    async def _launch(self):
        """Start an engine and wait for its hello. Runs on the loop thread, which lives as long as
        this stub: the engine's parent-death signal fires when the thread that started it ends."""
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        # Its own process group, so the whole group (vLLM's children too) can be killed at once;
        # cwd is a neutral directory: the server's cwd holds the stub's numpy<2, which the engine
        # (python -m puts cwd first on sys.path) must not see. Its output goes through us, to the
        # server's log, keeping the last lines for error messages.
        self.engine = subprocess.Popen(self.engine_cmd, cwd=self.workdir, env=engine_env(),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.engine_log = EngineLog(self.engine.stdout)
        self.last_heard, self.connection_lost = time.monotonic(), False
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while True:
            code = self.engine.poll()
            if code is not None:
                raise pb_utils.TritonModelException(f"the vLLM engine process {describe_exit(code)} while loading; "
                                                    f"its last log lines:\n{self.engine_log.tail()}")
            if os.path.exists(self.socket_path):
                try:
                    self.reader, self.writer = await asyncio.open_unix_connection(self.socket_path, limit=LINE_LIMIT)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                kill_group(self.engine)
                raise pb_utils.TritonModelException(f"the vLLM engine was not ready after {ENGINE_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        hello = json.loads(await self.reader.readline() or b"{}")
        if hello.get("op") != "hello":
            raise pb_utils.TritonModelException("the vLLM engine closed its connection while starting")
        self.last_heard = time.monotonic()
        self.reader_task = asyncio.ensure_future(self._read_engine())
        return hello

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
                    self.metrics.observe(msg)
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
        kill_group(self.engine)
        message = (f"the vLLM engine died (model '{self.model_name}'): it {cause}; "
                   f"its last log lines:\n{self.engine_log.tail()}")
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
            # The stub lives on until Triton finalizes it: time enough.
            spawn_reloader(self.engine_cmd[0], self.model_name, self.workdir)
        except Exception as err:
            self.logger.log_error(f"[vllm] unloaded {self.model_name} but cannot start the reloader: {err}")
            return True
        self.logger.log_warn(f"[vllm] unloaded {self.model_name}; it is loaded again with a new engine")
        return True

    # --- requests -------------------------------------------------------------------------

    def execute(self, requests):
        if self.health_check and not self._check_health(requests):
            return None
        if self.down is not None:
            refuse(requests, self.down)
            return None
        for request in requests:
            try:
                sampling = read_sampling(request)
                check_lora(sampling.get("lora_name"), self.enable_lora, self.lora_names)
            except RequestError as err:
                respond_error(request.get_response_sender(), str(err))
                continue
            except Exception as err:  # e.g. sampling parameters that are not JSON
                respond_error(request.get_response_sender(), f"Error generating stream: {err}")
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
            refuse(requests, UNHEALTHY_ERROR)
        return self.healthy

    async def _generate(self, request, sampling):
        state = RequestState(request.get_response_sender())
        request_id = None
        try:
            options = read_options(request)
            prompt = read_prompt(request)
            request_id = f"{request.request_id() or uuid.uuid4().hex}-{uuid.uuid4().hex[:8]}"  # unique in the engine
            queue = self.pending[request_id] = asyncio.Queue()
            self._count_running()
            await self._send({"op": "generate", "id": request_id, "prompt": prompt, "stream": options["stream"],
                              "sampling": sampling, "lora_name": sampling.pop("lora_name", None)})
            await self._relay(request_id, queue, state, prompt, options)
        except Exception as err:  # every failure reaches the client as an error response
            self.logger.log_warn(f"[vllm] request {request_id}: Error generating stream: {err}")
            if state.final_queued:
                self.logger.log_warn(f"request {request_id}: could not report the error: its final response had gone out")
            else:
                self.responses.send(state, error_response(f"Error generating stream: {err}"), final=True)
        finally:
            if request_id is not None and self.pending.pop(request_id, None) is not None:
                self._count_running()

    async def _relay(self, request_id, queue, state, prompt, options):
        first = True
        while True:
            if state.cancelled:
                self.logger.log_info(f"request {request_id} was cancelled by the client")
                await self._send({"op": "abort", "id": request_id})
                self.responses.send(state, pb_utils.InferenceResponse(
                    error=triton_error("Request was cancelled", "CANCELLED")), final=True)
                return
            if queue.empty():
                try:
                    msg = await asyncio.wait_for(queue.get(), CANCEL_POLL_S)
                except asyncio.TimeoutError:
                    # Asked off the loop: it is a round trip to the server (response_thread.py).
                    state.cancelled = await self.loop.run_in_executor(None, state.sender.is_cancelled)
                    continue
            else:
                msg = queue.get_nowait()
            if msg.get("error"):
                raise RuntimeError(msg["error"])
            response = build_response(msg, options, prompt if first and options["prepend_input"] else "")
            first = False
            self.responses.send(state, response, final=msg["done"], alone=len(self.pending) <= 1)
            if msg["done"]:
                return

    # --- metrics --------------------------------------------------------------------------

    def _count_running(self):
        if self.metrics is not None:
            self.metrics.set_running(sum(1 for k in self.pending if not k.startswith("health-")))

    # --- shutdown -------------------------------------------------------------------------

    def finalize(self):
        if getattr(self, "watch", None) is not None:
            self.watch.cancel()
        try:
            self._call(self._close(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.responses.stop()  # what was queued goes out first
        if self.metrics is not None:
            self.metrics.stop()  # no update may reach a metric whose family is gone
        if self.engine.poll() is None:
            kill_group(self.engine, signal.SIGTERM)  # the engine shuts vLLM down; its group goes with it
        shutil.rmtree(self.workdir, ignore_errors=True)
        if not self.unloaded_for_restart:  # (finalized maybe long after the new stub loaded)
            self.ledger.forget()

    async def _close(self):
        self.writer.close()

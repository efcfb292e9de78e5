"""tritonkit's `vllm` backend for the local Triton runtime: the Triton side.

The official Triton vLLM backend lives only inside NGC images. This Python-based backend honours
the same contract (model.json, multi_lora.json, inputs, outputs, decoupled streaming, metrics) so
a repository built once serves unchanged under both runtimes.

It runs in the backend stub, whose Python must keep numpy<2 (the 24.10 stub corrupts BYTES inputs
under numpy 2), so vLLM cannot live here: initialize() starts `tritonkit.backend.engine` in the
main environment and talks to it over a Unix socket, one JSON object per line. This file imports
only the standard library, numpy and triton_python_backend_utils.
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

import numpy as np
import triton_python_backend_utils as pb_utils

ENGINE_START_TIMEOUT_S = float(os.environ.get("TRITONKIT_ENGINE_START_TIMEOUT", "1800"))
CANCEL_POLL_S = 0.1
LINE_LIMIT = 64 * 1024 * 1024

BOOL_INPUTS = ["stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens"]
OUTPUTS = [("text_output", "TYPE_STRING"), ("finish_reason", "TYPE_STRING"),
           ("cumulative_logprob", "TYPE_FP32"), ("logprobs", "TYPE_STRING"),
           ("num_input_tokens", "TYPE_UINT32"), ("num_output_tokens", "TYPE_UINT32")]
# Histogram buckets as vLLM uses them for its own Prometheus metrics.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


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
        for name, dtype in OUTPUTS:
            if name not in have_outputs:
                auto_complete_model_config.add_output({"name": name, "data_type": dtype, "dims": [-1]})
        auto_complete_model_config.set_max_batch_size(0)
        auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
        return auto_complete_model_config

    def initialize(self, args):
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise pb_utils.TritonModelException("the vllm backend needs a decoupled transaction policy")
        self.model_name = args["model_name"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        model_json = os.path.join(version_dir, "model.json")
        with open(model_json) as f:
            engine_args = json.load(f)
        lora_json = os.path.join(version_dir, "multi_lora.json")
        self.lora_names = []
        if engine_args.get("enable_lora") and os.path.isfile(lora_json):
            with open(lora_json) as f:
                self.lora_names = sorted(json.load(f))
        params = self.model_config.get("parameters", {})
        self.report_metrics = params.get("REPORT_CUSTOM_METRICS", {}).get("string_value", "false").lower() == "true"
        if self.report_metrics:
            self._init_metrics(args["model_version"])

        self.workdir = tempfile.mkdtemp(prefix="tk-engine-")
        self.socket_path = os.path.join(self.workdir, "engine.sock")
        self.engine = self._start_engine(model_json, lora_json if self.lora_names else None)
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, name="tk-engine-io", daemon=True)
        self.loop_thread.start()
        self.pending = {}
        self._call(self._connect(), timeout=ENGINE_START_TIMEOUT_S + 5)
        self.logger.log_info(f"tritonkit vllm backend: engine ready for model {self.model_name}")

    # --- engine process -------------------------------------------------------------------

    def _start_engine(self, model_json, lora_json):
        python = os.environ.get("TRITONKIT_ENGINE_PYTHON")
        if not python:
            raise pb_utils.TritonModelException(
                "TRITONKIT_ENGINE_PYTHON is not set: start this server with `tritonkit serve`")
        cmd = [python, "-m", "tritonkit.backend.engine", "--model-json", model_json,
               "--socket", self.socket_path, "--model-name", self.model_name]
        if lora_json:
            cmd += ["--multi-lora-json", lora_json]
        # cwd is a neutral directory: the server's own cwd holds the stub's numpy<2, which the
        # engine (python -m puts cwd first on sys.path) must not see.
        env = dict(os.environ)
        if env.get("TRITONKIT_ENGINE_PYTHONPATH"):
            env["PYTHONPATH"] = env["TRITONKIT_ENGINE_PYTHONPATH"]
        return subprocess.Popen(cmd, cwd=self.workdir, env=env)

    async def _connect(self):
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while True:
            code = self.engine.poll()
            if code is not None:
                raise pb_utils.TritonModelException(
                    f"the vLLM engine process exited with code {code} while loading (its log is above)")
            if os.path.exists(self.socket_path):
                try:
                    self.reader, self.writer = await asyncio.open_unix_connection(self.socket_path, limit=LINE_LIMIT)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise pb_utils.TritonModelException(f"the vLLM engine was not ready after {ENGINE_START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        self.reader_task = asyncio.ensure_future(self._read_engine())

    async def _read_engine(self):
        while True:
            line = await self.reader.readline()
            if not line:
                break
            msg = json.loads(line)
            queue = self.pending.get(msg.get("id"))
            if queue is not None:
                queue.put_nowait(msg)
        # The engine went away: fail every request still waiting, so clients hear about it.
        for queue in list(self.pending.values()):
            queue.put_nowait({"error": "the vLLM engine process stopped", "done": True})

    def _call(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _send(self, obj):
        self.writer.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        await self.writer.drain()

    # --- requests -------------------------------------------------------------------------

    def execute(self, requests):
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._generate(request), self.loop)
        return None

    async def _generate(self, request):
        sender = request.get_response_sender()
        request_id = None
        try:
            prompt, options, sampling = self._parse(request)
            request_id = request.request_id() or uuid.uuid4().hex
            request_id = f"{request_id}-{uuid.uuid4().hex[:8]}"  # ids must be unique in the engine
            lora_name = sampling.pop("lora_name", None)
            if lora_name is not None and lora_name not in self.lora_names:
                valid = ", ".join(self.lora_names) or "none (LoRA serving is off for this model)"
                raise ValueError(f"unknown lora_name {lora_name!r}; valid names: {valid}")
            queue = asyncio.Queue()
            self.pending[request_id] = queue
            self._count_running()
            await self._send({"op": "generate", "id": request_id, "prompt": prompt,
                              "sampling": sampling, "lora_name": lora_name})
            await self._relay(request_id, queue, sender, prompt, options)
        except Exception as err:  # every failure reaches the client as an error response
            self.logger.log_warn(f"request {request_id}: {type(err).__name__}: {err}")
            error = pb_utils.TritonError(str(err))
            try:
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as send_err:  # the final response had already gone out
                self.logger.log_warn(f"request {request_id}: could not report the error: {send_err}")
        finally:
            if request_id is not None and self.pending.pop(request_id, None) is not None:
                self._count_running()

    async def _relay(self, request_id, queue, sender, prompt, options):
        stream = options["stream"]
        text_parts, out_tokens = [], 0
        while True:
            if sender.is_cancelled():
                self.logger.log_info(f"request {request_id} was cancelled by the client after {out_tokens} tokens")
                await self._send({"op": "abort", "id": request_id})
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            try:
                msg = await asyncio.wait_for(queue.get(), CANCEL_POLL_S)
            except asyncio.TimeoutError:
                continue
            if msg.get("error"):
                raise RuntimeError(msg["error"])
            done = msg["done"]
            out_tokens += msg["n"]
            if done and self.report_metrics and msg.get("stats"):
                self._observe(msg["stats"])  # before the final response: a scrape after it sees this request
            if stream:
                response = self._response(msg["text"], msg["n"], msg, options)
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if done else 0)
            else:
                text_parts.append(msg["text"])
            if done:
                break
        if not stream:
            text = "".join(text_parts)
            if not options["exclude_input_in_output"]:
                text = prompt + text
            sender.send(self._response(text, out_tokens, msg, options),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _parse(self, request):
        def scalar(name, default=None):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return default if tensor is None else tensor.as_numpy().reshape(-1)[0]

        prompt = scalar("text_input")
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8")
        options = {name: bool(scalar(name, False)) for name in BOOL_INPUTS}
        raw = scalar("sampling_parameters")
        sampling = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw) if raw else {}
        if not isinstance(sampling, dict):
            raise ValueError("sampling_parameters must be a JSON object")
        # HTTP generate: body keys that are not inputs arrive as request parameters.
        extra = json.loads(request.parameters() or "{}")
        for key, value in extra.items():
            sampling.setdefault(key, value)
        return prompt, options, sampling

    def _response(self, text, n_tokens, msg, options):
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        if options["return_finish_reason"] and msg.get("finish_reason"):
            tensors.append(pb_utils.Tensor("finish_reason", np.array([msg["finish_reason"].encode()], dtype=np.object_)))
        if options["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([msg["prompt_tokens"]], dtype=np.uint32)))
        if options["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([n_tokens], dtype=np.uint32)))
        if options["return_cumulative_logprob"] and msg.get("cumulative_logprob") is not None:
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.array([msg["cumulative_logprob"]], dtype=np.float32)))
        if options["return_logprobs"] and msg.get("logprobs") is not None:
            tensors.append(pb_utils.Tensor("logprobs", np.array([json.dumps(msg["logprobs"]).encode()], dtype=np.object_)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    # --- metrics --------------------------------------------------------------------------

    def _init_metrics(self, version):
        labels = {"model": self.model_name, "version": str(version)}

        self.metric_families = []  # a family must outlive its metrics

        def family(name, description, kind):
            self.metric_families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self.metric_families[-1]

        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self.metrics = {
            "running": family("vllm:num_requests_running", "Number of requests in the engine.",
                              pb_utils.MetricFamily.GAUGE).Metric(labels=labels),
            "prompt_tokens": family("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
                                    counter).Metric(labels=labels),
            "generation_tokens": family("vllm:generation_tokens_total", "Number of generation tokens processed.",
                                        counter).Metric(labels=labels),
            "ttft": family("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                           histogram).Metric(labels=labels, buckets=TTFT_BUCKETS),
            "tpot": family("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                           histogram).Metric(labels=labels, buckets=TPOT_BUCKETS),
            "e2e": family("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                          histogram).Metric(labels=labels, buckets=E2E_BUCKETS),
            "req_prompt": family("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                 histogram).Metric(labels=labels, buckets=TOKEN_BUCKETS),
            "req_generation": family("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                     histogram).Metric(labels=labels, buckets=TOKEN_BUCKETS),
        }

    def _count_running(self):
        if self.report_metrics:
            self.metrics["running"].set(len(self.pending))

    def _observe(self, stats):
        m = self.metrics
        m["prompt_tokens"].increment(stats["prompt_tokens"])
        m["generation_tokens"].increment(stats["generation_tokens"])
        m["req_prompt"].observe(stats["prompt_tokens"])
        m["req_generation"].observe(stats["generation_tokens"])
        m["e2e"].observe(stats["e2e_s"])
        if stats.get("ttft_s") is not None:
            m["ttft"].observe(stats["ttft_s"])
        for gap in stats.get("tpot_s", []):
            m["tpot"].observe(gap)

    # --- shutdown -------------------------------------------------------------------------

    def finalize(self):
        try:
            self._call(self._close(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                self.engine.wait(20)
            except subprocess.TimeoutExpired:
                self.engine.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def _close(self):
        self.writer.close()

"""Ground-truth streaming model (stdlib, numpy and triton_python_backend_utils only).

For each request: wait first_delay_ms, send one chunk of one token, then max_tokens - 1 more
chunks gap_ms apart; the last carries finish_reason "length" and the FINAL flag. Requests run
concurrently on an asyncio loop in a thread of their own, and sleeps are scheduled against the
request's arrival time (not chained), so the known delays do not drift with the chunk count.
A cancelled request stops at the next chunk with a bare FINAL flag, as the vLLM backend does.
"""

import asyncio
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FLAGS = ("stream", "exclude_input_in_output", "return_finish_reason",
         "return_num_input_tokens", "return_num_output_tokens")


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.first_delay_ms = float(params.get("FIRST_DELAY_MS", {}).get("string_value", "50"))
        self.gap_ms = float(params.get("GAP_MS", {}).get("string_value", "20"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def execute(self, requests):
        arrived = time.monotonic()
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request, arrived), self.loop)
        return None

    async def _serve(self, request, arrived):
        sender = request.get_response_sender()
        try:
            prompt = _scalar(request, "text_input", b"")
            prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
            opts = {name: bool(_scalar(request, name, False)) for name in FLAGS}
            raw = _scalar(request, "sampling_parameters", b"{}")
            sampling = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            n = int(sampling["max_tokens"])
            first = float(sampling.get("gt_first_delay_ms", self.first_delay_ms)) / 1000
            gap = float(sampling.get("gt_gap_ms", self.gap_ms)) / 1000
            n_in = len(prompt.split())
        except Exception as err:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"bad request: {err}")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        if not opts["stream"]:
            await asyncio.sleep(max(0.0, arrived + first + gap * (n - 1) - time.monotonic()))
            text = " ".join(f"t{i}" for i in range(n))
            text = text if opts["exclude_input_in_output"] else prompt + text
            sender.send(self._response(text, n, n_in, "length", opts),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        for i in range(n):
            await asyncio.sleep(max(0.0, arrived + first + gap * i - time.monotonic()))
            if sender.is_cancelled():
                pb_utils.Logger.log_warn(f"ground_truth: request {request.request_id()!r} cancelled after {i} of {n} chunks")
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            last = i == n - 1
            sender.send(self._response(f"t{i} ", 1, n_in, "length" if last else None, opts),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)

    def _response(self, text, n_out, n_in, reason, opts):
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))]
        if opts["return_finish_reason"] and reason:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
        if opts["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.uint32)))
        if opts["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([n_out], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

"""Responses go to Triton from a thread of their own, not from the engine's event loop.

In the Python backend, response_sender.send() and is_cancelled() each wait for the Triton server
process to take its turn (a round trip through shared memory; the GIL is released meanwhile).
On the loop thread, which also reads the engine's outputs and hands it new requests, two of those
per streamed chunk held every request up: moved here, one H100 served 15-26 % more req/s under
tritonkit's load and 22-39 % more under perf_analyzer's (perf/results/generator-h100-response-thread.log).
The official vLLM backend sends from one response thread too.

One thread and one FIFO keep each request's responses in order. Cancellation is asked there,
after a chunk went out, at most every CANCEL_CHECK_S per request: a short request costs no extra
round trip, a long one learns of a cancel within that time.

A lone request in flight is sent on the loop itself, once the thread has nothing queued or in hand:
it streams as before (handed to the thread, one in six first tokens of a lone request on a 2-core
CPU waited until the request was nearly done); with others in flight the thread takes over.
"""

import queue
import threading
import time

CANCEL_CHECK_S = 0.1
STOP_TIMEOUT_S = 5.0


class RequestState:
    """What the loop and the response thread share about one request."""

    __slots__ = ("sender", "cancelled", "final_queued", "checked_at")

    def __init__(self, sender):
        self.sender = sender
        self.cancelled = False  # set by the response thread (or the loop's own check)
        self.final_queued = False  # the loop queued its last response: nothing may follow
        self.checked_at = time.monotonic()


class ResponseThread:
    def __init__(self, final_flag, log_error):
        self.final_flag = final_flag  # pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self.log_error = log_error
        self.queue = queue.SimpleQueue()
        self.queued = self.finished = 0  # the loop counts what it queued, the thread what it finished
        self.thread = threading.Thread(target=self._run, name="tk-responses", daemon=True)
        self.thread.start()

    def send(self, state, response, final, alone=False):
        """Send one response (called on the loop): queued, or at once for a lone request in flight."""
        if final:
            state.final_queued = True
        if alone and self.finished == self.queued:  # nothing queued or being sent: nothing to overtake
            self._deliver(state, response, final)
            return
        self.queued += 1
        self.queue.put((state, response, final))

    def stop(self):
        self.queue.put(None)
        self.thread.join(STOP_TIMEOUT_S)

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            self._deliver(*item)
            self.finished += 1

    def _deliver(self, state, response, final):
        try:
            state.sender.send(response, flags=self.final_flag if final else 0)
            now = time.monotonic()
            if not final and now - state.checked_at >= CANCEL_CHECK_S:
                state.checked_at = now
                state.cancelled = state.sender.is_cancelled()
        except Exception as err:  # e.g. the client is gone; the next request must still go out
            self.log_error(f"[vllm] could not send a response: {type(err).__name__}: {err}")

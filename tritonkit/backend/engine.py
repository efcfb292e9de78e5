"""The vLLM engine process behind tritonkit's local `vllm` backend.

Started by backend/vllm/model.py (inside Triton's backend stub) with the main environment's
Python. It loads vLLM's AsyncLLM from model.json exactly as the official backend does
(`AsyncEngineArgs(**model_json)`), then serves one Unix-socket connection, one JSON object per
line:

    <- {"op": "hello", "pid", "max_model_len"}                        once vLLM is ready
    -> {"op": "generate", "id", "prompt", "sampling": {...}, "lora_name", "stream"}
    -> {"op": "abort", "id"}
    -> {"op": "health", "id"}            <- {"op": "health", "id", "error" (null when healthy)}
    <- {"id", "outputs": [one per sequence (n): {"text", "n" (tokens), "finish_reason",
        "cumulative_logprob", "logprobs" (list of {token id: {logprob, rank, decoded_token}}
        or null)}], "prompt_tokens", "done"}
       streaming: new text/tokens/logprobs since the last message; else one message with all
    <- {"id", "error", "done": true}
    <- {"op": "stats", ...}              vLLM's own per-iteration stats, for the metrics port

    <- {"op": "beat"}                    every BEAT_S: the stub's supervisor counts silence as a hang

It exits when the connection closes, when vLLM's engine core dies (exit code 3), or, by a
parent-death signal, when its parent (the stub) goes away; vLLM's own child processes get the
same signal from this module, so none outlives its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import json
import os
import signal
import sys
import time

from tritonkit.backend.params import typed_sampling

LINE_LIMIT = 64 * 1024 * 1024
BEAT_S = 0.25
PR_SET_PDEATHSIG = 1
# Tests only: while this file exists, health checks fail (the official backend's CI mocks vLLM's
# check_health the same way).
HEALTH_FAIL_FILE = os.environ.get("TRITONKIT_ENGINE_HEALTH_FAIL_FILE")


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (Linux prctl), and exit now if it already has."""
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return
    if parent == 1 or os.getppid() != parent:
        os._exit(1)


# vLLM starts its engine core and workers with multiprocessing: spawned children import this
# module as __mp_main__ (python -m), forked ones run the at-fork hook. Either way, each dies with
# its parent, so SIGKILL of the engine leaves no orphan.
if __name__ == "__mp_main__":
    die_with_parent()


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-json", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model-name", default="model")
    parser.add_argument("--multi-lora-json")
    parser.add_argument("--stats", action="store_true", help="forward vLLM's stats for the metrics port")
    return parser.parse_args(argv)


def _stat_logger_factory(engine):
    """A vLLM StatLogger that forwards each iteration's stats to the stub, as the official
    backend's logger feeds Triton's metrics from the same numbers."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class ForwardingStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index=0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if iteration_stats is None:
                return
            done = iteration_stats.finished_requests
            cache = getattr(scheduler_stats, "prefix_cache_stats", None)
            engine.emit({"op": "stats", "prompt_tokens": iteration_stats.num_prompt_tokens,
                         "generation_tokens": iteration_stats.num_generation_tokens,
                         # one engine step: how many tokens it ran (prefill and decode together)
                         "step_tokens": iteration_stats.num_prompt_tokens + iteration_stats.num_generation_tokens,
                         "ttft": list(iteration_stats.time_to_first_tokens_iter),
                         "itl": list(iteration_stats.inter_token_latencies_iter),
                         "e2e": [r.e2e_latency for r in done],
                         "req_prompt": [r.num_prompt_tokens for r in done],
                         "req_generation": [r.num_generation_tokens for r in done],
                         "n": list(iteration_stats.n_params_iter),
                         # prompt tokens looked up in / found in vLLM's prefix cache
                         "cache_queries": cache.queries if cache else 0, "cache_hits": cache.hits if cache else 0,
                         "finished_ids": [r.request_id or "" for r in done]})

        def log_engine_initialized(self):
            pass

    return ForwardingStatLogger


class Engine:
    def __init__(self, args):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        with open(args.model_json) as f:
            engine_args = json.load(f)
        self.sink = None  # the connection's send(), once the stub is connected
        self.with_stats = args.stats
        self.finished_ids = collections.deque(maxlen=1024)  # vLLM ids of requests whose stats were recorded
        loggers = [_stat_logger_factory(self)] if args.stats else None
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=loggers)
        self.loras = {}
        if args.multi_lora_json:
            with open(args.multi_lora_json) as f:
                for lora_id, (name, path) in enumerate(sorted(json.load(f).items()), start=1):
                    self.loras[name] = LoRARequest(name, lora_id, path)
        self.tasks: dict[str, asyncio.Task] = {}

    def emit(self, obj):
        if obj.get("op") == "stats":
            self.finished_ids.extend(obj.pop("finished_ids"))
        if self.sink is not None:
            asyncio.ensure_future(self.sink(obj))

    async def _stats_caught_up(self, request_id: str, limit_s: float = 1.0):
        """With stats on, let vLLM record a finished request's stats before its last message goes
        out: a client that scrapes the metrics port after its last response then sees them.
        (vLLM's ids extend ours: a random suffix, an index prefix for each of n sequences.)"""
        deadline = time.monotonic() + limit_s
        while self.with_stats and time.monotonic() < deadline:
            # newest first: it is nearly always among the last few of up to 1,024
            if any(request_id in finished for finished in reversed(self.finished_ids)):
                return
            await asyncio.sleep(0.002)

    async def serve(self, socket_path):
        self.closed = asyncio.Event()
        server = await asyncio.start_unix_server(self._client, path=socket_path, limit=LINE_LIMIT)
        async with server:
            while not self.closed.is_set():
                if self.llm.errored:  # the engine core died (crash, OOM kill): nothing can be served
                    print(f"tritonkit engine: vLLM's engine core died: {self.llm.dead_error}", file=sys.stderr, flush=True)
                    os._exit(3)  # no clean shutdown to wait for; the stub kills what is left of the group
                if self.sink is not None:
                    await self.sink({"op": "beat"})
                try:
                    await asyncio.wait_for(self.closed.wait(), BEAT_S)
                except asyncio.TimeoutError:
                    pass
        self.llm.shutdown()
        return 0

    async def _client(self, reader, writer):
        lock = asyncio.Lock()

        async def send(obj):
            async with lock:
                writer.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
                await writer.drain()

        self.sink = send
        await send({"op": "hello", "pid": os.getpid(),
                    "max_model_len": self.llm.vllm_config.model_config.max_model_len})
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg["op"] == "generate":
                    self.tasks[msg["id"]] = asyncio.ensure_future(self._generate(msg, send))
                elif msg["op"] == "abort":
                    # Cancelling the task ends vLLM's generate(), which aborts the request in the engine.
                    task = self.tasks.pop(msg["id"], None)
                    if task is not None:
                        task.cancel()
                    print(f"tritonkit engine: aborted request {msg['id']} (client cancelled)", file=sys.stderr, flush=True)
                elif msg["op"] == "health":
                    asyncio.ensure_future(self._health(msg["id"], send))
        finally:
            self.sink = None
            for task in self.tasks.values():
                task.cancel()
            self.closed.set()

    async def _health(self, health_id, send):
        try:
            await self.llm.check_health()
            if HEALTH_FAIL_FILE and os.path.exists(HEALTH_FAIL_FILE):
                raise RuntimeError("Simulated vLLM check_health() failure")
            error = None
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        await send({"op": "health", "id": health_id, "error": error})

    async def _generate(self, msg, send):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        request_id = msg["id"]
        try:
            kind = RequestOutputKind.DELTA if msg.get("stream") else RequestOutputKind.FINAL_ONLY
            sampling = SamplingParams(**typed_sampling(msg["sampling"]), output_kind=kind)
            lora = self.loras[msg["lora_name"]] if msg.get("lora_name") else None
            sequences: dict[int, dict] = {}  # index -> last finish_reason / cumulative_logprob
            async for out in self.llm.generate(msg["prompt"], sampling, request_id, lora_request=lora):
                if out.finished:
                    await self._stats_caught_up(request_id)
                await send({"id": request_id, "outputs": _outputs(out, sequences, sampling.n),
                            "prompt_tokens": len(out.prompt_token_ids or []), "done": out.finished})
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await send({"id": request_id, "error": f"{type(err).__name__}: {err}", "done": True})
        finally:
            self.tasks.pop(request_id, None)


def _outputs(out, sequences: dict, n: int) -> list[dict]:
    """One entry per sequence, in index order. With n > 1 a streamed message may carry only
    some sequences: the others get no new text and keep their last finish reason."""
    for completion in out.outputs:
        sequences[completion.index] = {
            "text": completion.text, "n": len(completion.token_ids),
            "finish_reason": completion.finish_reason,
            "cumulative_logprob": completion.cumulative_logprob,
            "logprobs": None if completion.logprobs is None else [
                {str(token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
                 for token_id, lp in position.items()}
                for position in completion.logprobs],
        }
    result = []
    for index in range(max(n, len(sequences))):
        seq = sequences.get(index) or {"text": "", "n": 0, "finish_reason": None,
                                       "cumulative_logprob": None, "logprobs": None}
        result.append(seq)
        # what was new is sent once; the next message starts empty for this sequence
        sequences[index] = {**seq, "text": "", "n": 0, "logprobs": None if seq["logprobs"] is None else []}
    return result


async def _run(args) -> int:
    die_with_parent()
    os.register_at_fork(after_in_child=die_with_parent)
    try:
        engine = Engine(args)  # AsyncLLM wants a running event loop
    except Exception as err:
        print(f"tritonkit engine: could not start vLLM: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return await engine.serve(args.socket)


def main(argv=None):
    return asyncio.run(_run(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

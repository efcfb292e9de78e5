"""The vLLM engine process behind tritonkit's local `vllm` backend.

Started by backend/vllm/model.py (inside Triton's backend stub) with the main environment's
Python. It loads vLLM's AsyncLLM from model.json exactly as the official backend does
(`AsyncEngineArgs(**model_json)`), then serves one Unix-socket connection, one JSON object per
line:

    -> {"op": "generate", "id", "prompt", "sampling": {...SamplingParams}, "lora_name"}
    -> {"op": "abort", "id"}
    <- {"id", "text" (new text), "n" (new tokens), "prompt_tokens", "finish_reason", "done",
        "stats" (on the last message: token counts and timings for the vLLM metrics)}
    <- {"id", "error", "done": true}

It exits when the connection closes or its parent (the stub) goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

LINE_LIMIT = 64 * 1024 * 1024


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-json", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model-name", default="model")
    parser.add_argument("--multi-lora-json")
    return parser.parse_args(argv)


class Engine:
    def __init__(self, args):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        with open(args.model_json) as f:
            engine_args = json.load(f)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args))
        self.loras = {}
        if args.multi_lora_json:
            with open(args.multi_lora_json) as f:
                for lora_id, (name, path) in enumerate(sorted(json.load(f).items()), start=1):
                    self.loras[name] = LoRARequest(name, lora_id, path)
        self.tasks: dict[str, asyncio.Task] = {}

    async def serve(self, socket_path):
        self.closed = asyncio.Event()
        server = await asyncio.start_unix_server(self._client, path=socket_path, limit=LINE_LIMIT)
        parent = os.getppid()
        async with server:
            while not self.closed.is_set():
                if os.getppid() != parent:  # the stub died without closing the socket
                    break
                try:
                    await asyncio.wait_for(self.closed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        self.llm.shutdown()

    async def _client(self, reader, writer):
        lock = asyncio.Lock()

        async def send(obj):
            async with lock:
                writer.write((json.dumps(obj, separators=(",", ":")) + "\n").encode())
                await writer.drain()

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
        finally:
            for task in self.tasks.values():
                task.cancel()
            self.closed.set()

    async def _generate(self, msg, send):
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        request_id = msg["id"]
        arrival = time.perf_counter()
        try:
            sampling = SamplingParams(**_typed(msg["sampling"]), output_kind=RequestOutputKind.DELTA)
            lora = self.loras[msg["lora_name"]] if msg.get("lora_name") else None
            first = last = None
            gaps, generated = [], 0
            async for out in self.llm.generate(msg["prompt"], sampling, request_id, lora_request=lora):
                now = time.perf_counter()
                completion = out.outputs[0]
                n = len(completion.token_ids)
                if n:
                    if first is None:
                        first = now
                    elif last is not None:
                        gaps.append(now - last)
                    last = now
                generated += n
                reply = {"id": request_id, "text": completion.text, "n": n,
                         "prompt_tokens": len(out.prompt_token_ids or []),
                         "finish_reason": completion.finish_reason, "done": out.finished}
                if out.finished:
                    reply["cumulative_logprob"] = completion.cumulative_logprob
                    reply["stats"] = {"prompt_tokens": reply["prompt_tokens"], "generation_tokens": generated,
                                      "ttft_s": None if first is None else first - arrival,
                                      "e2e_s": now - arrival, "tpot_s": gaps}
                await send(reply)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await send({"id": request_id, "error": f"{type(err).__name__}: {err}", "done": True})
        finally:
            self.tasks.pop(request_id, None)


# SamplingParams is strict about types; HTTP request parameters arrive as strings.
_INT_FIELDS = {"max_tokens", "min_tokens", "n", "best_of", "top_k", "seed", "logprobs", "prompt_logprobs"}
_FLOAT_FIELDS = {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
_BOOL_FIELDS = {"ignore_eos", "skip_special_tokens", "spaces_between_special_tokens"}


def _typed(sampling: dict) -> dict:
    out = {}
    for key, value in sampling.items():
        if isinstance(value, str):
            if key in _INT_FIELDS:
                value = int(value)
            elif key in _FLOAT_FIELDS:
                value = float(value)
            elif key in _BOOL_FIELDS:
                value = value.strip().lower() in ("1", "true", "yes")
        out[key] = value
    return out


async def _run(args) -> int:
    try:
        engine = Engine(args)  # AsyncLLM wants a running event loop
    except Exception as err:
        print(f"tritonkit engine: could not start vLLM: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    await engine.serve(args.socket)
    return 0


def main(argv=None):
    return asyncio.run(_run(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

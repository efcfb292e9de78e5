"""A fast OpenAI-compatible ground-truth server (aiohttp): known timings, no model.

POST /v1/completions with stream=true answers max_tokens chunks of one token: the first
--first-ms after the request arrived, the rest --gap-ms apart (scheduled against the arrival,
not chained), each with vLLM-style continuous usage, then `data: [DONE]`. GET /v1/models lists
the one model. It measures the OpenAI SSE path of `tritonkit perf` where the known answer is
the truth: TTFT = first, ITL = gap, E2E = first + (K - 1) * gap, plus the path through HTTP.

    python perf/sse_ground_truth.py --port 8123 [--first-ms 0] [--gap-ms 0] [--model ground_truth]
    [--tail-ms T]     # end the body T ms after `data: [DONE]` (a server slow to close its streams)
    [--processes N]   # N server processes on one port (SO_REUSEPORT) for the fleet-scale benchmark
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import time

from aiohttp import web


def _chunk(model: str, i: int, reason: str | None, n_in: int) -> bytes:
    event = {"id": "gt", "object": "text_completion", "model": model,
             "choices": [{"index": 0, "text": f"t{i} ", "finish_reason": reason}],
             "usage": {"prompt_tokens": n_in, "completion_tokens": i + 1, "total_tokens": n_in + i + 1}}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def app(model: str, first_s: float, gap_s: float, tail_s: float = 0.0) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.json()
        if body.get("model") != model:
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}}, status=404)
        n = int(body.get("max_tokens", 16))
        n_in = len(str(body.get("prompt", "")).split())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(n):
            delay = arrived + first_s + gap_s * i - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(_chunk(model, i, "length" if i == n - 1 else None, n_in))
        await resp.write(b"data: [DONE]\n\n")
        if tail_s > 0:
            await asyncio.sleep(tail_s)
        await resp.write_eof()
        return resp

    application = web.Application()
    application.router.add_get("/v1/models", models)
    application.router.add_post("/v1/completions", completions)
    return application


def _serve(port: int, model: str, first_s: float, gap_s: float, tail_s: float = 0.0) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app(model, first_s, gap_s, tail_s), sock=sock, print=None, access_log=None, backlog=4096)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="ground_truth")
    ap.add_argument("--first-ms", type=float, default=50.0)
    ap.add_argument("--gap-ms", type=float, default=20.0)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--tail-ms", type=float, default=0.0, help="end each body this long after [DONE]")
    args = ap.parse_args()
    targs = (args.port, args.model, args.first_ms / 1000, args.gap_ms / 1000, args.tail_ms / 1000)
    if args.processes <= 1:
        _serve(*targs)
        return
    procs = [mp.Process(target=_serve, args=targs, daemon=True) for _ in range(args.processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()

"""Shared HTTP plumbing for the two server-sent-events protocols (aiohttp)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import AsyncIterator

import aiohttp

from tritonkit.client.base import RequestError, StreamClient, Unreachable


def base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.startswith(("http://", "https://")) else "http://" + url


def new_session() -> aiohttp.ClientSession:
    # No connection cap: an open-loop schedule decides how many requests are in flight.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


class SseClient(StreamClient):
    """A client over HTTP server-sent events: one lazily opened aiohttp session."""

    def __init__(self, url: str, model: str):
        super().__init__(url, model)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def unreachable(url: str, err: Exception) -> Unreachable:
    return Unreachable(f"cannot reach {url}: {err}", "is the server running? or pass the right --url")


@contextlib.contextmanager
def stream_errors(url: str):
    """Turn aiohttp's failures during a stream into tritonkit's request errors."""
    try:
        yield
    except (aiohttp.ClientConnectionError, OSError) as err:
        if isinstance(err, aiohttp.ClientConnectorError):
            raise unreachable(url, err) from None
        raise RequestError(f"connection lost: {err}", "connection_lost") from None
    except aiohttp.ClientPayloadError as err:
        raise RequestError(f"the stream broke: {err}", "connection_lost") from None


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, object]]:
    """(arrival time, decoded JSON or the raw string) for each `data:` line of an SSE stream."""
    async for line in resp.content:
        t = time.perf_counter()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if not payload:
            continue
        try:
            yield t, json.loads(payload)
        except ValueError:
            yield t, payload.decode("utf-8", "replace")


async def raise_for_status(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status < 400:
        return
    body = (await resp.text())[:500]
    try:
        detail = json.loads(body)
        detail = detail.get("error", detail) if isinstance(detail, dict) else detail
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
    except ValueError:
        detail = body.strip()
    raise RequestError(f"{what}: HTTP {resp.status}: {detail}", f"http_{resp.status}")

"""An httpx transport on aiohttp's connection pool and C HTTP parser.

The WHMCS client is an ``httpx.AsyncClient`` (requests, timeouts, responses and errors in
httpx's terms). Its default transport, httpcore's async pool, measured 2.0 ms of client CPU
per call against the WHMCS sandbox at 16 calls in flight; with two calls per Order that was
most of the worker's core during a backlog. Under httpx this transport costs 0.32 ms per
call (aiohttp alone: 0.17 ms) — ``python bench/http_clients.py``.

Semantics kept from httpcore, because the client decides "sent or not" from them:

* nothing sent (no connection, connect or pool timeout) → :class:`httpx.ConnectError` /
  :class:`httpx.ConnectTimeout`;
* sent, answer lost (read timeout, dropped connection, truncated body) →
  :class:`httpx.ReadTimeout` / :class:`httpx.RemoteProtocolError` / :class:`httpx.ReadError`.

The timeouts are httpx's own (``request.extensions["timeout"]``); bodies are neither
decompressed nor re-encoded here (httpx does that), redirects are not followed.

**Send deadline.** A request may carry ``extensions[SEND_DEADLINE]`` (``time.monotonic``
seconds): once the connection is ours and the headers are about to be written — the last
moment before any byte of the request leaves the process, after any wait for a connection
or a TCP handshake — a deadline that has passed aborts the request with :class:`NotSent`.
The worker's ownership lease uses it (``streams.lease``): a process paused after its lease
check and before the write finds, when it resumes, that it may no longer send.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import httpx

_HOP_BY_HOP = {b"host", b"content-length", b"transfer-encoding", b"connection"}
SEND_DEADLINE = "sfprov.send_deadline"


class NotSent(httpx.TransportError):
    """The request was not sent: its send deadline had passed (nothing left the process)."""


async def _check_send_deadline(_session: Any, ctx: Any, _params: Any) -> None:
    deadline = (ctx.trace_request_ctx or {}).get("send_deadline")
    if deadline is not None and time.monotonic() >= deadline:
        raise _DeadlinePassed(f"send deadline passed {time.monotonic() - deadline:.3f} s ago")


class _DeadlinePassed(Exception):
    pass


def _deadline_tracing() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    # awaited in StreamWriter.write_headers, before the headers are buffered: no byte of the
    # request has been written yet, the connection (new or reused) is already ours
    trace.on_request_headers_sent.append(_check_send_deadline)
    return trace


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 64) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections,
                                               limit_per_host=self._max_connections),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
                raise_for_status=False, trace_configs=[_deadline_tracing()])
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limits: dict[str, Any] = request.extensions.get("timeout", {})
        connect = limits.get("connect")
        pool = limits.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None, sock_read=limits.get("read"), sock_connect=connect,
            connect=None if connect is None and pool is None else (connect or 0) + (pool or 0))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() not in _HOP_BY_HOP]
        body = await request.aread()
        deadline = request.extensions.get(SEND_DEADLINE)
        trace_ctx = {"send_deadline": deadline} if deadline is not None else None
        try:
            async with self._http().request(request.method, str(request.url), data=body,
                                            headers=headers, timeout=timeout,
                                            allow_redirects=False,
                                            trace_request_ctx=trace_ctx) as resp:
                content = await resp.read()
                status, raw_headers = resp.status, resp.raw_headers
        except _DeadlinePassed as exc:
            raise NotSent(str(exc), request=request) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (TimeoutError, aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "server disconnected",
                                            request=request) from exc
        except aiohttp.ClientError as exc:  # payload errors, resets, OS errors mid-exchange
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return httpx.Response(status, headers=list(raw_headers), content=content,
                              request=request, extensions={"http_version": b"HTTP/1.1"})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""A lean HTTP/1.1 transport for httpx: keep-alive connections on asyncio protocols.

The WHMCS client is httpx (``httpx.Request`` in, ``httpx.Response`` out, httpx's timeouts and
errors); only the bytes on the wire are ours (decision 0009). The worker's WHMCS client
measured, in client CPU per call at 16 calls in flight (``python -m bench.http_clients``):
on httpcore's pool 2.0 ms, on aiohttp's pool ~0.37 ms, on this transport ~0.22 ms. Two calls
per Order had made the HTTP client the largest share of the worker's CPU.

What it speaks: ``HTTP/1.1`` requests with a ``Content-Length`` body, one at a time per
connection (no pipelining); responses framed by ``Content-Length``, ``chunked`` transfer
coding (extensions and trailers skipped) or the connection's end; interim ``1xx`` answers
skipped. A connection is kept for the next request unless the response says
``Connection: close``, is HTTP/1.0, is framed by the connection's end, or an exchange on it
failed; an idle connection is dropped after :data:`KEEPALIVE_EXPIRY_S` (servers close theirs
after a few seconds; reusing one they are closing loses the request). TLS for ``https``
URLs with the system's trust store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured). No
proxies, no redirects, no decompression (httpx decodes ``Content-Encoding`` itself).

Semantics the client decides "sent or not" from (as httpcore's):

* nothing sent (no connection, connect or pool timeout) → :class:`httpx.ConnectError` /
  :class:`httpx.ConnectTimeout` / :class:`httpx.PoolTimeout`;
* sent, answer lost → :class:`httpx.ReadTimeout` (no byte for ``read`` seconds),
  :class:`httpx.RemoteProtocolError` (closed before a complete answer head, or not HTTP),
  :class:`httpx.ReadError` (closed or reset in the middle of the body).

**Send deadline.** A request may carry ``extensions[SEND_DEADLINE]`` (seconds on the lease
clock, :func:`common.clock.lease_clock`: CLOCK_BOOTTIME on Linux, which counts a host
suspend): once the connection is ours — after any wait for a free slot, a connect or a TLS
handshake — and right before the request's bytes are written, a deadline that has passed
aborts the request with :class:`NotSent`. The worker's ownership lease uses it
(``streams.lease``): a process paused (or a host suspended) after its lease check and before
the write finds, when it resumes, that it may no longer send.

**When the request left.** :meth:`Http11Transport.exchange` calls ``on_write`` right before
the request's bytes are written — after the send deadline's check, so after any connect and
TLS handshake — and never for a request of which nothing was written. The worker counts an
unanswered write's settle moment from it (``streams.provision``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from common.clock import lease_clock

SEND_DEADLINE = "sfprov.send_deadline"
KEEPALIVE_EXPIRY_S = 4.0  # under the common server idle timeouts (Apache 5 s, nginx 75 s)
MAX_HEAD_BYTES = 64 * 1024

_HOP_BY_HOP = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                         b"keep-alive", b"upgrade", b"te", b"trailer"})
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _TO_EOF, _DONE = range(7)


class NotSent(httpx.TransportError):
    """The request was not sent: its send deadline had passed (nothing left the process)."""


class _Lost(Exception):
    """The exchange failed after the request was written; ``kind`` is the httpx error."""

    def __init__(self, kind: type[httpx.TransportError], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _find(buf: bytearray, marker: bytes, what: str) -> int:
    """Where ``marker`` starts in ``buf``, or -1 (more bytes needed); a line or head that has
    grown past :data:`MAX_HEAD_BYTES` without it is not HTTP."""
    end = buf.find(marker)
    if end < 0 and len(buf) > MAX_HEAD_BYTES:
        raise _Lost(httpx.RemoteProtocolError, f"{what} longer than {MAX_HEAD_BYTES} bytes")
    return end


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_lost: Callable[[_Connection], None]) -> None:
        self._loop = loop
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]] | None
        self._waiter = None
        self._state = _DONE
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._keep_alive = False
        self._remaining = 0
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._last_read = 0.0
        self._answer_by: float | None = None  # loop time the whole answer is due by, if any
        self._answer_within = 0.0
        self._head_request = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._abort()  # bytes nobody asked for: this connection's framing is unknown
            return
        self._last_read = self._loop.time()
        self._buf += data
        try:
            self._parse()
        except _Lost as exc:
            self._fail(exc)
        except (ValueError, IndexError) as exc:
            self._fail(_Lost(httpx.RemoteProtocolError, f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._state == _TO_EOF and exc is None:
            self._body.append(bytes(self._buf))
            self._finish(keep=False)
        elif self._state == _HEAD and not self._buf:
            self._fail(_Lost(httpx.RemoteProtocolError,
                             "server disconnected without sending a response"
                             + (f" ({exc})" if exc else "")))
        else:
            self._fail(_Lost(httpx.ReadError, "connection closed before the answer was "
                             "complete" + (f" ({type(exc).__name__}: {exc})" if exc else "")))

    # -- one exchange --------------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes, read_timeout: float | None, *, head: bool = False,
             answer_within: float | None = None
             ) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]]:
        """Write one request; the future resolves to ``(status, headers, body, reusable)``.
        ``head``: the request was a ``HEAD`` (its answer has no body, whatever it says).
        ``read_timeout`` is for silence (each byte restarts it); ``answer_within`` bounds
        the whole answer from the write (a trickled answer, ``102`` after ``102``). Both are
        this connection's timer: an answer that came in while the process was stopped is
        read before the timer runs, and wins."""
        assert self.transport is not None
        self._head_request = head
        self._waiter = self._loop.create_future()
        self._state, self._buf, self._body = _HEAD, bytearray(), []
        self._read_timeout = read_timeout
        self._last_read = self._loop.time()
        self._answer_within = answer_within or 0.0
        self._answer_by = None if answer_within is None else self._last_read + answer_within
        due = self._due()
        if due is not None:
            self._timer = self._loop.call_at(due, self._check_timer)
        self.transport.write(data)
        return self._waiter

    def _due(self) -> float | None:
        due = None if self._read_timeout is None else self._last_read + self._read_timeout
        if self._answer_by is not None and (due is None or self._answer_by < due):
            return self._answer_by
        return due

    def _check_timer(self) -> None:
        self._timer = None
        due = self._due()
        if self._waiter is None or self._waiter.done() or due is None:
            return
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timer)
        elif self._answer_by is not None and due >= self._answer_by:
            self._fail(_Lost(httpx.ReadTimeout,
                             f"no whole answer within {self._answer_within:g} s"))
        else:
            self._fail(_Lost(httpx.ReadTimeout,
                             f"no answer byte for {self._read_timeout:g} s"))

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = _find(buf, b"\r\n\r\n", "answer head")
                if end < 0:
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head(head)
            elif state == _LENGTH:
                if len(buf) < self._remaining:
                    return
                self._body.append(bytes(buf[:self._remaining]))
                del buf[:self._remaining]
                self._finish(keep=self._keep_alive and not buf)
                return
            elif state == _CHUNK_SIZE:
                end = _find(buf, b"\r\n", "chunk size line")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[:end + 2]
                if size < 0:
                    raise ValueError("negative chunk size")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA:
                if len(buf) < self._remaining + 2:
                    return
                if buf[self._remaining:self._remaining + 2] != b"\r\n":
                    raise _Lost(httpx.RemoteProtocolError, "chunk not followed by CRLF")
                self._body.append(bytes(buf[:self._remaining]))
                del buf[:self._remaining + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[:end + 4]
                self._finish(keep=self._keep_alive and not buf)
                return
            else:  # _TO_EOF: the body is whatever comes until the connection ends
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise _Lost(httpx.RemoteProtocolError, f"not an HTTP/1.x answer: {lines[0][:40]!r}")
        status = int(rest[:3])
        headers: list[tuple[bytes, bytes]] = []
        length = chunked = close = None
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or name[:1] in (b" ", b"\t"):
                raise _Lost(httpx.RemoteProtocolError, f"malformed header line {line[:40]!r}")
            value = value.strip()
            headers.append((name, value))
            lname = name.lower()
            if lname == b"content-length":
                if length is not None and int(value) != length:
                    raise _Lost(httpx.RemoteProtocolError, "conflicting Content-Length")
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif lname == b"connection":
                close = b"close" in value.lower()
        if 100 <= status < 200:
            return  # interim answer (100 Continue, 102, 103): the real one follows
        self._status, self._headers = status, headers
        self._keep_alive = version == b"HTTP/1.1" and not close
        if status in (204, 304) or self._head_request:
            self._remaining, self._state = 0, _LENGTH
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length < 0:
                raise _Lost(httpx.RemoteProtocolError, "negative Content-Length")
            self._remaining, self._state = length, _LENGTH
        else:
            self._keep_alive, self._state = False, _TO_EOF

    def _finish(self, *, keep: bool) -> None:
        self._state = _DONE
        self._cancel_timer()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, self._headers, body, keep))

    def _fail(self, exc: _Lost) -> None:
        self._state = _DONE
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abort(self) -> None:
        self.closed = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """The connections to one origin: idle ones (most recent last) and a cap on those in use."""

    def __init__(self, scheme: str, host: str, port: int, limit: int,
                 ssl_context: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.loop = loop
        self.ssl = ssl_context
        self.slots = asyncio.Semaphore(limit)
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()

    async def connect(self, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self.open.discard)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # comes in the loop turn the connection opens, and the call would go on to write
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{self.host}:{self.port}: {exc}") from exc
        self.open.add(conn)
        return conn

    def take_idle(self, now: float) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable() and now - conn.idle_since < KEEPALIVE_EXPIRY_S:
                return conn
            conn._abort()
        return None

    def give_back(self, conn: _Connection, now: float) -> None:
        conn.idle_since = now
        self.idle.append(conn)

    def close(self) -> None:
        for conn in list(self.open):
            conn._abort()
        self.idle.clear()


def request_bytes(method: bytes, url: httpx.URL, headers: Any, body: bytes) -> bytes:
    """A request as written on the wire: request line, ``Host``, ``Content-Length``, the
    other ``headers`` (raw ``(name, value)`` byte pairs; hop-by-hop ones dropped), body."""
    lines = [method, b" ", url.raw_path, b" HTTP/1.1\r\nHost: ", url.netloc,
             b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
    for name, value in headers:
        if name.lower() not in _HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class Http11Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over :class:`_Connection`; one pool per origin, at most
    ``max_connections`` exchanges in flight per origin (more wait, up to the pool timeout)."""

    def __init__(self, *, max_connections: int = 64,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._max_connections = max_connections
        self._ssl_context = ssl_context
        self._pools: dict[tuple[bytes, bytes, int | None], _Pool] = {}

    def _pool(self, url: httpx.URL, loop: asyncio.AbstractEventLoop) -> _Pool:
        key = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(key)
        if pool is not None and pool.loop is not loop:
            # made under another event loop (one asyncio.run per CLI command): its
            # connections belong to that loop and go with it (not closed from here)
            pool = None
        if pool is None:
            tls = url.scheme == "https"
            if url.scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
            if tls and self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            # The host as the Host header and the pool key have it (IDNA 2008, ASCII; an
            # IPv6 literal without its brackets), never ``url.host``: that is the Unicode
            # form, which the resolver and ``ssl`` encode with IDNA 2003 — ``straße.de``
            # would be resolved, and its certificate checked, as ``strasse.de``, another
            # domain than ``xn--strae-oqa.de``, and the credentials posted to its owner
            host = url.raw_host.decode("ascii")
            pool = self._pools[key] = _Pool(url.scheme, host, url.port or (443 if tls else 80),
                                            self._max_connections,
                                            self._ssl_context if tls else None, loop)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        data = request_bytes(request.method.encode(), url, request.headers.raw, body)
        status, headers, content = await self.exchange(
            url, data, request.extensions.get("timeout", {}),
            send_deadline=request.extensions.get(SEND_DEADLINE),
            head=request.method == "HEAD", request=request)
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def exchange(self, url: httpx.URL, data: bytes, timeouts: dict[str, Any], *,
                       send_deadline: float | None = None, head: bool = False,
                       request: httpx.Request | None = None,
                       on_write: Callable[[], None] | None = None
                       ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One exchange of a request already in bytes (:func:`request_bytes`) with ``url``'s
        origin: ``(status, headers, body)``. ``timeouts``: httpx's ``pool`` / ``connect`` /
        ``read`` seconds, and optionally ``answer``: the whole answer's, from the write. The
        same errors and send deadline as :meth:`handle_async_request`, without building an
        ``httpx.Request`` and ``httpx.Response`` around it (a client that sends one kind of
        request, the WHMCS client, saves ~17 µs per call). ``on_write``: called right before
        the request's first byte is written — once the connection is ours and the send
        deadline checked — and not at all when nothing is written."""
        loop = asyncio.get_running_loop()
        pool = self._pool(url, loop)
        slots = pool.slots
        if slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):  # not wait_for: see connect
                    await slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no free connection slot in time",
                                        request=request) from exc
        else:
            await slots.acquire()
        conn: _Connection | None = None
        try:
            # idle times on the lease clock: a host suspend counts (the loop's clock stops,
            # and a connection the server closed meanwhile looked fresh after it)
            conn = pool.take_idle(lease_clock())
            reused = conn is not None
            if conn is None:
                try:
                    conn = await pool.connect(timeouts.get("connect"))
                except httpx.TransportError as exc:
                    if request is not None:
                        exc.request = request
                    raise
                if not conn.usable():  # closed by the server as it opened: nothing written
                    raise httpx.ConnectError("connection closed before the request was "
                                             "written", request=request)
            if send_deadline is not None and (now := lease_clock()) >= send_deadline:
                # untouched: nothing was written on it, and it has been idle since before
                pool.give_back(conn, conn.idle_since if reused else lease_clock())
                conn = None
                raise NotSent(f"send deadline passed {now - send_deadline:.3f} s ago",
                              request=request)
            if on_write is not None:
                on_write()  # the bytes leave now, in this loop turn (conn.send writes them)
            try:
                status, headers, content, reusable = await conn.send(
                    data, timeouts.get("read"), head=head, answer_within=timeouts.get("answer"))
            except _Lost as exc:
                raise exc.kind(str(exc), request=request) from None
            if reusable:
                pool.give_back(conn, lease_clock())
            else:
                conn._abort()
            conn = None
        finally:
            if conn is not None:  # cancelled or failed mid-exchange: its state is unknown
                conn._abort()
            slots.release()
        return status, headers, content

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

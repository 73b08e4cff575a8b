"""The deadline of one whole HTTP exchange with Salesforce (``SF_TIMEOUT_S``), and the one
place this project reaches into urllib3's internals.

requests (REST) and httpx (the token endpoint) bound each socket read, not an exchange: a
head that kept trickling — header lines, or ``100 Continue`` after ``100 Continue``, which
http.client and h11 skip without end — held a call, the client's lock and every caller
queued behind it for as long as it took, past the bound the sink's liveness credit and its
poll-interval budget count on (``sinks.beating``). A :class:`Watchdog` shuts the exchange's
connection down when its time is up, whatever the exchange is blocked on.

httpx tells of a new connection through its public ``trace`` extension
(``common.salesforce.SalesforceAuth._post_within``). urllib3 has no such hook: the
connection and pool classes below override ``HTTPConnection._new_conn`` and
``HTTPConnectionPool._put_conn`` — private methods — and wrap ``HTTPConnection.request``.
They were verified against urllib3 :data:`PINNED_URLLIB3` (``requirements.lock``);
:data:`CONTRACT` holds the hash of each upstream method they rely on, and
``tests/foundation/test_exchange_watchdog_contract.py`` fails when another release changes
one (or the installed version is another).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

import urllib3
import urllib3.connection

PINNED_URLLIB3 = "2.8.0"

#: upstream methods the classes below override or wrap → sha256 of their source (as
#: ``inspect.getsource`` gives it) in urllib3 :data:`PINNED_URLLIB3`
CONTRACT: dict[str, str] = {
    "urllib3.connection.HTTPConnection._new_conn":
        "83e6a5dd7db98a0aa4a1e6db300238324b3d5289c12fb53c839953ec5c04a077",
    "urllib3.connection.HTTPConnection.request":
        "751c8aa0eb50e741d66f4a78eee02bbb20815e63b72a895b9e96f0d3f8446fa5",
    "urllib3.connectionpool.HTTPConnectionPool._put_conn":
        "f4b8abb8b95650c758e0d7487baa531bc6917f15bd9cb5dc2e42385726cb24be",
}


def whole_within(seconds: float) -> str:
    return f"no whole answer within {seconds:g} s (SF_TIMEOUT_S)"


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already, or never connected: nothing to wake
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Shuts an exchange's connection down when its ``within_s`` is up, so that whatever the
    exchange is blocked on — the TLS handshake, a write, the status line, the headers, the
    body — fails at once: requests and httpx bound each socket read only, and a head that
    kept trickling (header lines, or ``100 Continue`` after ``100 Continue``, which
    http.client and h11 skip without end) held the call for as long as it took.

    Ended under its lock before the connection goes back to its pool, and the timer acts
    only if not ended, under the same lock: a later exchange on that connection is never
    touched. It shuts down a copy of the socket's descriptor, its own for the exchange
    (the TLS handshake takes the plain socket's descriptor away; a shutdown reaches the
    connection through any of them). While connecting there is no socket yet: the connect
    timeout bounds that, and a socket watched after the time is up is shut down at once."""

    _current = threading.local()  # the exchange of this thread (requests' adapter)

    def __init__(self, within_s: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._ended = False
        self.fired = False
        self._timer = threading.Timer(within_s, self._fire)
        self._timer.daemon = True

    @classmethod
    def current(cls) -> Watchdog | None:
        return getattr(cls._current, "watchdog", None)

    def __enter__(self) -> Watchdog:
        Watchdog._current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        Watchdog._current.watchdog = None
        self.end()
        for sock in self._socks:
            sock.close()  # the copies only: the connection itself stays as it is

    def watch(self, sock: Any) -> None:
        """The exchange uses ``sock`` (from now until the watchdog ends): a socket, or
        anything with its descriptor — urllib3's ``SSLTransport`` (TLS inside TLS, through
        an ``https://`` proxy) has no ``family`` or ``type``, which the copy takes from the
        descriptor itself."""
        if sock is None:
            return
        try:
            copy = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return  # closed already: nothing to wake
        with self._lock:
            if self._ended:
                copy.close()
                return
            self._socks.append(copy)
            if self.fired:  # connected too late: no answer can come in time now
                _shut(copy)

    def end(self) -> bool:
        """Whether the exchange ended in time (the connection may be used again)."""
        with self._lock:
            self._ended = True
        self._timer.cancel()
        return not self.fired

    def _fire(self) -> None:
        with self._lock:
            if self._ended:
                return
            self.fired = True
            for sock in self._socks:
                _shut(sock)


class _WatchedConnection(urllib3.connection.HTTPConnection):
    """A connection that shows the watchdog of the exchange using it the socket it uses: a
    new one as soon as it is connected (before the TLS handshake), a kept-alive one at
    each request."""

    watchdog: Watchdog | None = None  # of the exchange using the connection

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._watched_by(Watchdog.current(), sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # no socket yet for a new connection: it connects in request
        self._watched_by(Watchdog.current(), self.sock)
        super().request(*args, **kwargs)

    def _watched_by(self, watchdog: Watchdog | None, sock: Any) -> None:
        self.watchdog = watchdog
        if watchdog is not None:
            watchdog.watch(sock)


class _WatchedTLSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection

    def _put_conn(self, conn: Any) -> None:
        # the exchange ends as its connection is released (urllib3 does so itself as the
        # body's last byte is read): one its watchdog shut down is never used again
        watchdog = getattr(conn, "watchdog", None)
        if watchdog is not None:
            conn.watchdog = None
            if not watchdog.end():
                conn.close()
                conn = None
        super()._put_conn(conn)


class _WatchedTLSPool(_WatchedPool, urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


WATCHED_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _WatchedPool, "https": _WatchedTLSPool}

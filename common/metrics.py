"""Prometheus ``/metrics`` and the probes for every process, on one small HTTP thread.

Each process registers its metrics on the default ``prometheus_client`` registry (names
prefixed ``sfprov_``) and passes two callbacks returning ``(ok, details)``: readiness for
``/readyz`` (and its alias ``/healthz``) and liveness for ``/livez`` (see
:mod:`common.probes`). Each answers 200 or 503 with the details as JSON. Port 0 picks a free
port (``server.port`` tells which).
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest

from common.errors import ConfigError
from common.log import scrub

log = logging.getLogger(__name__)
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
T = TypeVar("T")


def reads_while_alive(owner: T, read: Callable[[T], float],
                      default: float = 0.0) -> Callable[[], float]:
    """A gauge's ``set_function`` for a value of ``owner``: ``read(owner)`` while ``owner``
    lives, ``default`` after. The gauges are module-level and live as long as the process;
    a bound method or a closure over ``owner`` would keep it, and the Kafka clients it owns,
    alive past its use (an object built twice in one process — tests, embedding — kept
    every earlier one, and their clients went on connecting to brokers long gone)."""
    ref = weakref.ref(owner)

    def value() -> float:
        alive = ref()
        return default if alive is None else read(alive)
    return value


class _IPv6Server(ThreadingHTTPServer):
    """The server on an IPv6 address (``ThreadingHTTPServer`` is IPv4 only: ``::1`` was a
    ``socket.gaierror`` at start, exit 1, restarted for ever). On ``::`` it takes IPv4
    connections too, as ``0.0.0.0`` would, whatever the system's ``bindv6only``."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _bind_refused(exc: OSError, bare: str, port: int, names: tuple[str, str]) -> str | None:
    """One line naming the setting for an address the probes cannot listen on, or None
    (another error: not a setting's)."""
    host_name, port_name = names
    shown = f"[{bare}]" if ":" in bare else bare
    if isinstance(exc, socket.gaierror):
        return f"{host_name}: cannot resolve {bare!r} ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return f"{port_name}: {shown}:{port} is already in use (by another process)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_name}: {bare} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"{port_name}: {shown}:{port} may not be bound by this user"
    return None


class HealthServer:
    """``names``: the settings of ``host`` and ``port``, for the one line of a
    :class:`~common.errors.ConfigError` when they cannot be listened on (the port in use,
    the host not this machine's): a setting to fix, not a fault to restart on."""

    def __init__(self, port: int, health: HealthCheck, *, live: HealthCheck | None = None,
                 host: str = "127.0.0.1", names: tuple[str, str] = ("host", "port")) -> None:
        self._health = health
        self._live = live or (lambda: (True, {}))
        self.host = host
        handler = self._handler()
        bare = host.strip().removeprefix("[").removesuffix("]")  # "[::1]", as a URL has it
        server = _IPv6Server if ":" in bare else ThreadingHTTPServer
        try:
            self._server = server((bare, port), handler)
        except OSError as exc:
            line = _bind_refused(exc, bare, port, names)
            if line is None:
                raise
            raise ConfigError(line) from None
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http",
                                        daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        probes = {"/readyz": ("ready", self._health), "/healthz": ("ready", self._health),
                  "/livez": ("live", self._live)}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, status = generate_latest(), CONTENT_TYPE_LATEST, 200
                elif path in probes:
                    key, probe = probes[path]
                    try:
                        ok, details = probe()
                    except Exception as exc:  # noqa: BLE001 - a failing check is a "no"
                        ok, details = False, {"reasons": [f"check failed: {exc!r}"]}
                    # "healthy" stays for the clients of the old /healthz; "reasons" and
                    # "checks" are always there (README), whatever the callback gave
                    # masked as a log line is: a reason quotes an error's text, which may
                    # carry what never reaches a log (a URL's password, a token)
                    body = json.dumps({key: ok, "healthy": ok, "reasons": [], "checks": {},
                                       **scrub(details)},
                                      default=str).encode()
                    ctype, status = "application/json", 200 if ok else 503
                else:
                    body, ctype, status = b"not found\n", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        return Handler

    def start(self) -> HealthServer:
        self._thread.start()
        host = self.host.strip()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        log.info("metrics and probes on http://%s:%d/metrics /livez /readyz (/healthz)",
                 host, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


GC_PAUSE = Histogram("sfprov_gc_pause_seconds",
                     "Python garbage-collector pauses (the whole process stops), by generation.",
                     ["generation"], buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
GC_LOG_PAUSE_S = 0.1  # pauses at least this long are logged


class GcMonitor:
    """Times every collection of Python's cyclic garbage collector (``gc.callbacks``).

    A generation-2 collection walks every tracked object of the process and stops everything
    meanwhile — the event loop, the agent, the heartbeats (106–125 ms in the worker under
    ``bench.stages``, before it froze its start-up objects). The histogram says how often;
    a WARNING names each pause of at least
    ``GC_LOG_PAUSE_S`` (``count``: the objects it freed).
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._pauses: dict[int, Histogram] = {}  # generation → its GC_PAUSE child (install())

    def install(self) -> GcMonitor:
        # The children are made here, once: labels() takes the histogram's lock, which a
        # scrape holds while it copies the children — a collection triggered there runs this
        # callback in the scraping thread, and labels() would wait on that thread forever
        # (every later scrape hung, automatic collection stopped). A child's observe() takes
        # only its own values' locks, which are never held across an allocation.
        self._pauses = {generation: GC_PAUSE.labels(str(generation))
                        for generation in range(3)}  # Python's three generations
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = info.get("generation", -1)
        child = self._pauses.get(generation)
        if child is not None:
            child.observe(pause)
        if pause >= GC_LOG_PAUSE_S:
            log.warning("garbage collection of generation %s paused the process for %.0f ms",
                        generation, pause * 1000,
                        extra={"duration_ms": round(pause * 1000),
                               "count": info.get("collected", 0)})

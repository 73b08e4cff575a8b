"""Prometheus ``/metrics`` and ``/healthz`` for every process, on one small HTTP thread.

Each process registers its metrics on the default ``prometheus_client`` registry (names
prefixed ``sfprov_``) and passes a health callback returning ``(healthy, details)``;
``/healthz`` answers 200 or 503 with the details as JSON. Port 0 picks a free port
(``server.port`` tells which).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    def __init__(self, port: int, health: HealthCheck, *, host: str = "127.0.0.1") -> None:
        self._health = health
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http",
                                        daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        health = self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.startswith("/metrics"):
                    body, ctype, status = generate_latest(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    try:
                        ok, details = health()
                    except Exception as exc:  # noqa: BLE001 - a failing check is unhealthy
                        ok, details = False, {"error": repr(exc)}
                    body = json.dumps({"healthy": ok, **details}, default=str).encode()
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
        log.info("metrics and health on http://127.0.0.1:%d/metrics /healthz", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

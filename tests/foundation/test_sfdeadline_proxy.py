"""Salesforce REST through an ``https://`` proxy (HTTPS_PROXY: a CONNECT tunnel over TLS,
so TLS inside TLS): the exchange watchdog met urllib3's ``SSLTransport`` there and every call
raised AttributeError (regression review). Two calls on one kept-alive tunnel."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from common.salesforce import _ContextAdapter, _TimeoutSession, ssl_context
from tests.foundation.test_salesforce_tls import https_server


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def _forward(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _tunnel(client: socket.socket, context: ssl.SSLContext) -> None:
    conn = context.wrap_socket(client, server_side=True)
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    host, port = head.split(b"\r\n")[0].split()[1].decode().rsplit(":", 1)
    upstream = socket.create_connection((host, int(port)))
    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    threading.Thread(target=_forward, args=(conn, upstream), daemon=True).start()
    _forward(upstream, conn)


@pytest.fixture
def tls_proxy(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(origin URL, proxy URL, the CA both certificates are signed by)."""
    origin, ca, context = https_server(tmp_path / "tls", "sfprov proxy test CA", _Origin)
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_tunnel, args=(client, context), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield (f"https://127.0.0.1:{origin.server_address[1]}/x",
               f"https://127.0.0.1:{listener.getsockname()[1]}", ca)
    finally:
        origin.shutdown()
        origin.server_close()
        listener.close()


@pytest.mark.parametrize("bundle", [False, True], ids=["default-cas", "sf-ca-bundle"])
def test_rest_calls_go_through_an_https_proxy(tls_proxy, bundle, monkeypatch):
    url, proxy, ca = tls_proxy
    session = _TimeoutSession(5.0)
    if bundle:  # SF_CA_BUNDLE: the adapter with our context; the proxy's CA the system's
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        session.mount("https://", _ContextAdapter(ssl_context(str(ca)), 5.0))
    for _ in range(2):
        answer = session.get(url, proxies={"https": proxy}, verify=str(ca))
        assert answer.status_code == 200 and answer.json() == {"ok": True}

"""A Salesforce exchange is whole within ``SF_TIMEOUT_S`` from its first byte, the answer's
head included: the deadline was checked only while reading the body, so a head that kept
trickling — ``100 Continue`` after ``100 Continue`` (http.client and h11 skip them without
end), or header lines each inside the read timeout — held a REST call, or the login and
every thread waiting for a token, for as long as it took (8 s, then for ever, with 1 s set).
A real TLS server on 127.0.0.1 whose every trickle stops by itself; no broker."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.errors import SalesforceAuthError, SalesforceError
from common.salesforce import SalesforceClient
from sandbox.salesforce.tlsgen import jwt_keypair
from tests.foundation.test_salesforce_deadline import QUERY, _client
from tests.foundation.test_salesforce_tls import _tls

TRICKLE_S = 4.0  # how long a head trickles at most: an unbounded client ends too
BOUND_S = 3.0  # SF_TIMEOUT_S is 1: a cut exchange (and a login) ends well before this


class _Org:
    """The token endpoint and the REST resources, each answering ``normal`` (kept alive)
    or with a head that trickles: ``continue`` (``100 Continue`` every 0.2 s, then the
    connection closed) or ``headers`` (a header line every 0.2 s, then the answer)."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca, cert, key = _tls(tmp_path / "tls", "sfdeadline CA")
        self.jwt_key, _ = jwt_keypair(tmp_path / "jwt")
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self.token = self.rest = "normal"
        self.rest_connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                reader = tls.makefile("rb")
                first = True
                while line := reader.readline():
                    length = 0
                    while (header := reader.readline()) not in (b"\r\n", b""):
                        name, _, value = header.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    reader.read(length)
                    method = line.split()[0]
                    if method != b"POST" and first:
                        self.rest_connections += 1
                    first = False
                    if not self._answer(tls, method):
                        return
        except OSError:
            pass  # the client gave up: what most tests want

    def _answer(self, tls: ssl.SSLSocket, method: bytes) -> bool:
        """Whether the connection is kept."""
        if method == b"POST":
            mode, status, body = self.token, b"200 OK", json.dumps({
                "access_token": "00Dxx0000000001!tokenvalue", "instance_url": self.url,
                "id": f"{self.url}/id/00Dxx0000000001/005xx0000000001"}).encode()
        elif method == b"PATCH":
            mode, status, body = self.rest, b"204 No Content", b""
        else:
            mode, status, body = self.rest, b"200 OK", json.dumps(QUERY).encode()
        until = time.monotonic() + TRICKLE_S
        if mode == "continue":
            while time.monotonic() < until:
                tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                time.sleep(0.2)
            return False
        tls.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n")
        line = 0
        while mode == "headers" and time.monotonic() < until:
            tls.sendall(b"X-Slow-%d: y\r\n" % line)
            line += 1
            time.sleep(0.2)
        length = b"" if status.startswith(b"204") else b"Content-Length: %d\r\n" % len(body)
        tls.sendall(length + b"\r\n" + body)
        return True


@pytest.fixture
def org(tmp_path: Path) -> Iterator[_Org]:
    org = _Org(tmp_path)
    try:
        yield org
    finally:
        org.close()


def _new_client(org: _Org) -> SalesforceClient:
    return _client((org.url, org.ca, org.jwt_key))


def _took(call: Callable[[], object], error: type[SalesforceError]) -> float:
    began = time.monotonic()
    with pytest.raises(error) as raised:
        call()
    took = time.monotonic() - began
    assert raised.value.retryable, raised.value  # an outage, retried as one
    assert "SF_TIMEOUT_S" in str(raised.value)
    return took


def test_endless_100_continue_from_rest_is_cut_and_its_connection_dropped(org):
    client = _new_client(org)
    client.auth.token()
    org.rest = "continue"
    took = _took(lambda: client.query("SELECT Id FROM Order"), SalesforceError)
    assert took < BOUND_S, took
    org.rest = "normal"
    assert [r["Id"] for r in client.query("SELECT Id FROM Order")] == ["801000000000001AAA"]
    assert org.rest_connections == 2  # the connection that was shut down is not used again


def test_a_trickled_rest_head_is_cut(org):
    client = _new_client(org)
    client.auth.token()
    org.rest = "headers"
    took = _took(lambda: client.update("Order", "801000000000001AAA", {"Status": "x"}),
                 SalesforceError)
    assert took < BOUND_S, took


def test_a_kept_alive_connection_is_watched_too(org):
    client = _new_client(org)
    assert client.count("SELECT COUNT() FROM Order") == 1
    org.rest = "continue"  # the next call goes on the connection kept
    took = _took(lambda: client.query("SELECT Id FROM Order"), SalesforceError)
    assert took < BOUND_S, took
    assert org.rest_connections == 1


@pytest.mark.parametrize("mode", ["headers", "continue"])
def test_a_trickled_token_head_is_cut(org, mode):
    client = _new_client(org)
    org.token = mode
    took = _took(client.auth.token, SalesforceAuthError)
    assert took < BOUND_S, took
    org.token = "normal"
    assert client.auth.token().org_id == "00Dxx0000000001"


def test_a_watchdog_ended_in_time_leaves_the_kept_connection_alone(org):
    """Each exchange's watchdog is ended before its connection goes back to the pool: one
    that fired later would shut a connection down under the next exchange."""
    client = _new_client(org)
    assert client.count("SELECT COUNT() FROM Order") == 1
    time.sleep(1.3)  # past the first exchange's SF_TIMEOUT_S
    assert [r["Id"] for r in client.query("SELECT Id FROM Order")] == ["801000000000001AAA"]
    assert client.count("SELECT COUNT() FROM Order") == 1
    assert org.rest_connections == 1  # one connection, kept throughout


"""One Salesforce call, the login included, is whole within ``SF_TIMEOUT_S``: requests and
httpx bound each socket read, so an answer that kept trickling (a proxy, a degraded link) was
never cut — a guard query held every Order behind the client's lock, with nothing said, for
as long as the answer took (11 s for a 44-byte answer at a byte every 0.25 s, with 1 s set).
A real TLS server on 127.0.0.1; no broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from common.errors import SalesforceAuthError, SalesforceError
from common.salesforce import SalesforceClient
from common.settings import SalesforceSettings
from sandbox.salesforce.tlsgen import jwt_keypair
from tests.foundation.test_salesforce_tls import https_server

QUERY = {"totalSize": 1, "done": True,
         "records": [{"attributes": {"type": "Order"}, "Id": "801000000000001AAA"}]}


class _Org(BaseHTTPRequestHandler):
    trickle: set[str] = set()  # "token", "query": answered a byte every 0.2 s

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        host = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._answer({"access_token": "00Dxx0000000001!tokenvalue", "instance_url": host,
                      "id": f"{host}/id/00Dxx0000000001/005xx0000000001"}, "token")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(QUERY, "query")

    def _answer(self, body: dict, kind: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "query" and "cut" in self.trickle:  # a connection broken mid-answer
            self.wfile.write(data[:15])
            self.wfile.flush()
            self.close_connection = True
            return
        if kind not in self.trickle:
            self.wfile.write(data)
            return
        try:
            for i in range(len(data)):  # never silent for a whole SF_TIMEOUT_S
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up: what the test wants

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def org(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    server, ca, _context = https_server(tmp_path / "tls", "deadline CA", _Org)
    jwt_key, _ = jwt_keypair(tmp_path / "jwt")
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca, jwt_key
    finally:
        _Org.trickle = set()
        server.shutdown()


def _client(org: tuple[str, Path, Path]) -> SalesforceClient:
    url, ca, key = org
    return SalesforceClient(SalesforceSettings.load({
        "SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com", "SF_LOGIN_URL": url,
        "SF_PRIVATE_KEY_PATH": str(key), "SF_CA_BUNDLE": str(ca), "SF_TIMEOUT_S": "1"}))


def test_an_answer_read_whole_and_the_connection_kept(org):
    client = _client(org)
    assert [r["Id"] for r in client.query("SELECT Id FROM Order")] == ["801000000000001AAA"]
    assert client.count("SELECT COUNT() FROM Order") == 1  # the same connection, reused


@pytest.mark.parametrize("trickled, error", [("query", SalesforceError),
                                              ("token", SalesforceAuthError)])
def test_a_trickled_answer_is_cut_at_the_timeout_and_retryable(org, trickled, error):
    _Org.trickle = {trickled}
    client = _client(org)
    began = time.monotonic()
    with pytest.raises(error) as raised:
        client.query("SELECT Id FROM Order")
    took = time.monotonic() - began
    assert raised.value.retryable
    assert took < 5.0, took  # the answer takes ~20 s; 1 s each for the call (and a login)
    _Org.trickle = set()
    assert [r["Id"] for r in client.query("SELECT Id FROM Order")] == ["801000000000001AAA"]


def test_an_answer_broken_mid_body_is_a_retryable_outage(org):
    """Read by the adapter itself, a body cut short raised urllib3's own ProtocolError past
    the client's error mapping: the guard dead-lettered its Orders and the sink exited."""
    _Org.trickle = {"cut"}
    client = _client(org)
    with pytest.raises(SalesforceError) as raised:
        client.query("SELECT Id FROM Order")
    assert raised.value.retryable, raised.value

"""SF_CA_BUNDLE is an *extra* bundle (README): the token endpoint (httpx) and REST (requests)
trust it on top of the default CAs, as the Pub/Sub channel does. Passed as ``verify=path``
it replaced them, so a host signed by a public CA failed while SF_CA_BUNDLE was set."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import common.salesforce
from common.salesforce import SalesforceClient
from common.settings import SalesforceSettings
from sandbox.salesforce.tlsgen import _cert, _key, _write_key, jwt_keypair, tls_material


def _tls(directory: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for 127.0.0.1, the CA named ``ca_name``
    (two CAs of one name would be taken for each other)."""
    directory.mkdir()
    ca_key, server_key = _key(), _key()
    ca = _cert(ca_name, ca_key, ca=True)
    server = _cert("127.0.0.1", server_key, issuer=ca.subject, issuer_key=ca_key,
                   sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(paths[2], server_key)
    return paths


def https_server(directory: Path, ca_name: str, handler: type[BaseHTTPRequestHandler]
                 ) -> tuple[ThreadingHTTPServer, Path, ssl.SSLContext]:
    """An HTTPS server on 127.0.0.1 serving ``handler`` from a thread, its certificate
    signed by a CA of its own: (the server, that CA's file, the server's TLS context)."""
    ca, cert, key = _tls(directory, ca_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ca, context


class _Org(BaseHTTPRequestHandler):
    """The token endpoint and the query resource, as little as the client needs."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        host = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._answer({"access_token": "00D!tok", "instance_url": host,
                      "id": f"{host}/id/00Dxx0000000001/005xx0000000001"})

    def do_GET(self) -> None:  # noqa: N802
        self._answer({"totalSize": 0, "done": True, "records": []})

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def org(tmp_path: Path) -> Iterator[object]:
    """Two HTTPS orgs on 127.0.0.1: one signed by a CA of the default trust store
    (SSL_CERT_FILE), one by the CA of SF_CA_BUNDLE."""
    servers = {}
    for name in ("default", "extra"):
        server, ca, _context = https_server(tmp_path / name, f"sfprov test {name} CA", _Org)
        servers[name] = (server, ca)
    try:
        yield {name: (f"https://127.0.0.1:{s.server_address[1]}", ca)
               for name, (s, ca) in servers.items()}
    finally:
        for server, _ca in servers.values():
            server.shutdown()
            server.server_close()


def _client(org, tmp_path: Path, monkeypatch, signed_by: str) -> SalesforceClient:
    monkeypatch.setenv("SSL_CERT_FILE", str(org["default"][1]))  # the default trust store
    key, _cert = jwt_keypair(tmp_path / "jwt")
    return SalesforceClient(SalesforceSettings.load({
        "SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com", "SF_LOGIN_URL": org[signed_by][0],
        "SF_PRIVATE_KEY_PATH": str(key), "SF_CA_BUNDLE": str(org["extra"][1])}))


@pytest.mark.parametrize("signed_by", ["default", "extra"])
def test_the_token_endpoint_and_rest_trust_the_default_cas_and_the_bundle(
        org, tmp_path, monkeypatch, signed_by):
    client = _client(org, tmp_path, monkeypatch, signed_by)
    assert client.query("SELECT Id FROM Order") == []  # a login (httpx), then REST (requests)
    assert client.auth.logins == 1 and client.calls == 1


def test_requests_loads_no_bundle_of_its_own_into_the_context(org, tmp_path, monkeypatch):
    """requests adds its CA file (certifi's, or REQUESTS_CA_BUNDLE) to the context of every
    new connection: the context must decide alone, the same for the token endpoint and REST."""
    made: list[ssl.SSLContext] = []
    real = common.salesforce.ssl_context

    def spy(bundle: str) -> ssl.SSLContext:
        made.append(real(bundle))
        return made[-1]
    monkeypatch.setattr(common.salesforce, "ssl_context", spy)
    client = _client(org, tmp_path, monkeypatch, "extra")
    held = [c.cert_store_stats() for c in made]
    assert client.query("SELECT Id FROM Order") == []
    assert len(made) == 2 and [c.cert_store_stats() for c in made] == held


def test_the_context_holds_the_default_cas_and_the_bundles(tmp_path):
    from common.salesforce import ssl_context

    bundle = tls_material(tmp_path)["ca"]
    context = ssl_context(str(bundle))
    assert context.cert_store_stats()["x509_ca"] > 1  # the bundle holds one
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "sfprov sandbox CA"} in subjects
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ssl_cert_file_for_whmcs_does_not_replace_the_public_cas_of_the_token_endpoint(
        org, tmp_path, monkeypatch):
    """README: WHMCS's private CA goes in with SSL_CERT_FILE, in every process's
    environment. httpx's default trusted that file alone: the token endpoint's public
    certificate was refused (CERTIFICATE_VERIFY_FAILED), no login. Here certifi's bundle
    (the public CAs) holds the org's CA, SSL_CERT_FILE another, SF_CA_BUNDLE is unset."""
    public = tmp_path / "certifi.pem"
    public.write_bytes(Path(org["default"][1]).read_bytes())
    monkeypatch.setattr(common.salesforce.certifi, "where", lambda: str(public))
    monkeypatch.setenv("SSL_CERT_FILE", str(org["extra"][1]))  # WHMCS's private CA
    key, _cert = jwt_keypair(tmp_path / "jwt")
    client = SalesforceClient(SalesforceSettings.load({
        "SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com", "SF_LOGIN_URL": org["default"][0],
        "SF_PRIVATE_KEY_PATH": str(key)}))
    assert client.auth.token().instance_url == org["default"][0]
    assert client.auth.logins == 1

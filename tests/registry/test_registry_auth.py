"""The registry client of every process takes basic auth and a CA from the settings
(``SCHEMA_REGISTRY_USERNAME`` / ``_PASSWORD`` / ``_CA_LOCATION``), as a hosted registry asks."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from common.avro import AvroSerde, SerdeError, registry_for
from common.settings import KafkaSettings
from sandbox.registry.server import RegistryHTTPServer, Store
from sandbox.salesforce.tlsgen import tls_material

TOPIC = "t.provisioning.outcomes"
OUTCOME = {"order_id": "801000000000001AAA", "status": "Provisioned", "completed_at": 1}


@pytest.fixture
def https_registry(tmp_path) -> Iterator[tuple[str, str]]:
    """The emulator over HTTPS (a local CA) with basic auth: (url, ca file)."""
    tls = tls_material(tmp_path / "tls")
    server = RegistryHTTPServer(("127.0.0.1", 0), Store(), basic_auth=("api-key", "api-secret"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls["cert"], tls["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(tls["ca"])
    finally:
        server.shutdown()
        server.server_close()


def settings(url: str, **env: str) -> KafkaSettings:
    return KafkaSettings.load({"SCHEMA_REGISTRY_URL": url, **env})


def test_basic_auth_and_ca_from_the_settings(https_registry):
    url, ca = https_registry
    kafka = settings(url, SCHEMA_REGISTRY_USERNAME="api-key",
                     SCHEMA_REGISTRY_PASSWORD="api-secret", SCHEMA_REGISTRY_CA_LOCATION=ca)
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry_for(kafka))
    value = serde.encode({**OUTCOME, "completed_at": int(time.time() * 1000)})
    reader = AvroSerde("provisioning_outcome", registry=registry_for(kafka))
    assert reader.decode(value, [])["order_id"] == OUTCOME["order_id"]


def test_wrong_password_is_an_error_that_never_shows_the_password(https_registry):
    url, ca = https_registry
    kafka = settings(url, SCHEMA_REGISTRY_USERNAME="api-key",
                     SCHEMA_REGISTRY_PASSWORD="not-it", SCHEMA_REGISTRY_CA_LOCATION=ca)
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry_for(kafka))
    with pytest.raises(SerdeError, match="HTTP 401") as info:
        serde.encode(OUTCOME)
    assert "not-it" not in str(info.value) and "api-secret" not in str(info.value)


def test_without_the_ca_the_registry_is_not_trusted(https_registry):
    url, _ = https_registry
    kafka = settings(url, SCHEMA_REGISTRY_USERNAME="api-key",
                     SCHEMA_REGISTRY_PASSWORD="api-secret")
    serde = AvroSerde("provisioning_outcome", topic=TOPIC, registry=registry_for(kafka))
    with pytest.raises(SerdeError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        serde.encode(OUTCOME)


def test_a_client_gone_mid_request_is_one_debug_line_not_a_traceback(https_registry, caplog,
                                                                     capfd):
    """It refused our certificate, or closed: socketserver printed a traceback on stderr
    for every such client (a CI run showed one in the middle of its output)."""
    import socket

    from tests.conftest import wait_for

    url, _ = https_registry
    port = int(url.rsplit(":", 1)[1])
    with caplog.at_level("DEBUG", logger="sandbox.registry"):
        untrusting = ssl.create_default_context()  # does not know the local CA
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(raw, server_hostname="127.0.0.1")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"\x00\x01 not http\r\n\r\n")  # a bad request line, then gone
        wait_for("the server to note a client gone mid-request",
                 lambda: any("ended mid-request" in r.getMessage() for r in caplog.records),
                 timeout=10, interval=0.05)
    assert "Exception occurred" not in capfd.readouterr().err

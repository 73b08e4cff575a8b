"""One connection config builds every client; refusals become one line naming a setting."""

from __future__ import annotations

import ssl

import faust
import pytest

from common.connection import KafkaConnection, access_error, as_connection, kafka_config
from common.errors import ConfigError
from common.settings import KafkaSettings, Secret

SCRAM_FAILED = ("sasl_ssl://127.0.0.1:36809/bootstrap: SASL authentication error: "
                "Authentication failed during authentication due to invalid credentials with "
                "SASL mechanism SCRAM-SHA-512 (after 327ms in state AUTH_REQ)")
TLS_FAILED = ("sasl_ssl://127.0.0.1:36809/bootstrap: SSL handshake failed: error:0A000086:SSL "
              "routines::certificate verify failed: broker certificate could not be verified, "
              "verify that ssl.ca.location is correctly configured (after 22ms in state "
              "SSL_HANDSHAKE)")
PLAIN_ON_TLS = ("127.0.0.1:34483/bootstrap: Disconnected: connection closed by peer: receive "
                "0 after POLLIN (after 0ms in state APIVERSION_QUERY)")


@pytest.fixture
def ca(tmp_path):
    from ops.kafka_secure import BrokerSecurity

    return BrokerSecurity(tmp_path / "secure").ensure().ca_file


def sasl_ssl(ca, **more) -> KafkaSettings:
    return KafkaSettings.load({
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9096,b2:9096", "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "sfprov-sink",
        "KAFKA_SASL_PASSWORD": "s3cret-value", "KAFKA_SSL_CA_LOCATION": str(ca), **more})


def test_plaintext_is_the_bootstrap_servers_alone():
    conf = kafka_config(KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}),
                        **{"group.id": "g"})
    assert conf == {"bootstrap.servers": "k:9092", "group.id": "g"}
    assert as_connection("k:9092").librdkafka() == {"bootstrap.servers": "k:9092"}


def test_sasl_ssl_for_confluent_kafka(ca):
    conf = kafka_config(sasl_ssl(ca), **{"acks": "all"})
    assert conf == {"bootstrap.servers": "b1:9096,b2:9096", "security.protocol": "sasl_ssl",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sfprov-sink",
                    "sasl.password": "s3cret-value", "ssl.ca.location": str(ca),
                    "ssl.endpoint.identification.algorithm": "https", "acks": "all"}


def test_sasl_ssl_for_aiokafka_and_faust(ca):
    conn = KafkaConnection.from_settings(sasl_ssl(ca))
    kw = conn.aiokafka()
    assert kw["bootstrap_servers"] == ["b1:9096", "b2:9096"]
    assert (kw["security_protocol"], kw["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("sfprov-sink",
                                                                      "s3cret-value")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname and kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    app_kw = conn.faust()
    assert app_kw["broker"] == ["kafka://b1:9096", "kafka://b2:9096"]
    creds = app_kw["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "sfprov-sink" and creds.password == "s3cret-value"
    # faust builds every aiokafka client from the app's settings: check what it hands them
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == "s3cret-value"


def test_mutual_tls_and_plain_ssl(ca, tmp_path):
    cert = tmp_path / "client.pem"
    key = tmp_path / "client-key.pem"
    _client_pair(cert, key)
    settings = KafkaSettings.load({
        "KAFKA_BOOTSTRAP_SERVERS": "b:9094", "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(ca), "KAFKA_SSL_CERTIFICATE_LOCATION": str(cert),
        "KAFKA_SSL_KEY_LOCATION": str(key), "KAFKA_SSL_ENDPOINT_IDENTIFICATION": "false"})
    conf = kafka_config(settings)
    assert conf["security.protocol"] == "ssl" and "sasl.username" not in conf
    assert conf["ssl.certificate.location"] == str(cert)
    assert conf["ssl.key.location"] == str(key)
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    creds = KafkaConnection.from_settings(settings).faust()["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.check_hostname is False


def _client_pair(cert_path, key_path):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfprov-worker")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_java_properties_for_kafkas_own_tools(ca):
    text = KafkaConnection.from_settings(sasl_ssl(ca)).java_properties()
    assert "security.protocol=SASL_SSL\n" in text
    assert "sasl.mechanism=SCRAM-SHA-512\n" in text
    assert ('ScramLoginModule required username="sfprov-sink" password="s3cret-value";'
            in text)
    assert f"ssl.truststore.location={ca}\n" in text and "ssl.truststore.type=PEM\n" in text


def test_secrets_never_print(ca):
    settings = sasl_ssl(ca, KAFKA_SSL_KEY_PASSWORD="key-pass",
                        SCHEMA_REGISTRY_USERNAME="key", SCHEMA_REGISTRY_PASSWORD="reg-pass")
    conn = KafkaConnection.from_settings(settings)
    for text in (repr(settings), str(settings), repr(conn)):
        assert "s3cret-value" not in text and "key-pass" not in text
        assert "reg-pass" not in text
    assert isinstance(settings.sasl_password, Secret)


@pytest.mark.parametrize("env,name", [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
     "KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SSL_CA_LOCATION": "/nowhere/ca.pem"}, "KAFKA_SSL_CA_LOCATION"),
    ({"KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/hostname"}, "KAFKA_SSL_KEY_LOCATION"),
    ({"SCHEMA_REGISTRY_PASSWORD": "p"}, "SCHEMA_REGISTRY_USERNAME"),
])
def test_bad_security_settings_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=f"^{name}:") as info:
        KafkaSettings.load(env)
    assert "\n" not in str(info.value)


def test_refusals_name_the_setting(ca):
    conn = KafkaConnection.from_settings(sasl_ssl(ca))
    line = access_error(conn, ["1/1 brokers are down", SCRAM_FAILED])
    assert line is not None and line.startswith("KAFKA_SASL_PASSWORD: ")
    assert "User:sfprov-sink" in line and "s3cret-value" not in line and "\n" not in line
    line = access_error(conn, [TLS_FAILED])
    assert line is not None and line.startswith("KAFKA_SSL_CA_LOCATION: ") and str(ca) in line
    # a connection closed during the first request is a protocol mismatch only when it lasts
    assert access_error(KafkaConnection("b:9096"), [PLAIN_ON_TLS]) is None
    line = access_error(KafkaConnection("b:9096"), [PLAIN_ON_TLS], final=True)
    assert line is not None and line.startswith("KAFKA_SECURITY_PROTOCOL: ")
    assert access_error(conn, ["1/1 brokers are down"], final=True) is None


class _SilentBroker:
    """An admin client whose broker does not answer until call ``answers_at``; call
    ``stopped_in`` takes ``stopped_s`` longer (the process was stopped during it)."""

    def __init__(self, clock: list[float], *, answers_at: int, stopped_in: int = 0,
                 stopped_s: float = 0.0) -> None:
        self.clock, self.answers_at = clock, answers_at
        self.stopped_in, self.stopped_s = stopped_in, stopped_s
        self.calls = 0

    def __call__(self, _conf: dict) -> _SilentBroker:
        return self

    def list_topics(self, timeout: float) -> str:
        from confluent_kafka import KafkaError, KafkaException
        self.calls += 1
        if self.calls == self.answers_at:
            return "metadata"
        self.clock[0] += timeout + (self.stopped_s if self.calls == self.stopped_in else 0.0)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    def poll(self, _timeout: float) -> int:
        return 0


@pytest.mark.parametrize("stopped_s", [0.0, 45.0])
def test_connect_gives_up_after_its_timeout_of_running_time(monkeypatch, stopped_s):
    """A broker silent for the whole timeout is an error; a process stopped for longer than
    the timeout while it waited is not given up at once on resuming: the stop does not
    count, and the broker that answers after it is reached."""
    from common import kafka
    from common.errors import KafkaError as OurKafkaError
    clock = [1000.0]
    monkeypatch.setattr(kafka.time, "monotonic", lambda: clock[0])
    conn = KafkaConnection.from_settings(KafkaSettings.load({"KAFKA_BOOTSTRAP_SERVERS": "k:1"}))
    silent = _SilentBroker(clock, answers_at=10**6, stopped_in=3, stopped_s=stopped_s)
    monkeypatch.setattr(kafka, "AdminClient", silent)
    with pytest.raises(OurKafkaError, match="cannot reach Kafka"):
        kafka.connect(conn, timeout=30)
    ran = clock[0] - 1000.0 - max(0.0, stopped_s - kafka.PAUSE_SLACK_S)  # time not stopped
    assert 30 <= ran <= 34, ran
    clock[0] = 1000.0
    stopped_then_answers = _SilentBroker(clock, answers_at=5, stopped_in=3, stopped_s=45.0)
    monkeypatch.setattr(kafka, "AdminClient", stopped_then_answers)
    assert kafka.connect(conn, timeout=30)[1] == "metadata"

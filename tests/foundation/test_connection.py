"""One connection config builds every client; refusals become one line naming a setting."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import faust
import pytest

from common.connection import KafkaConnection, access_error, as_connection, kafka_config
from common.envparse import Secret
from common.errors import ConfigError
from common.settings import KafkaSettings

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


def _client_pair(cert_path, key_path, issuer=None):
    """A client certificate and key: self-signed, or signed by ``issuer`` (its cert and
    key files; the client then has a chain of two)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         "sfprov-worker" if issuer else "sfprov test CA")])
    issuer_name, signer = name, key
    if issuer:
        issuer_name = x509.load_pem_x509_certificate(issuer[0].read_bytes()).subject
        signer = serialization.load_pem_private_key(issuer[1].read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(2 if issuer else 1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(signer, hashes.SHA256()))
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


def _java_properties(text: str) -> dict[str, str]:
    """``text`` read as java.util.Properties.load reads it (no line continuations: a line
    break inside a value must come escaped)."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip()[0] in "#!":
            continue
        key, sep, raw = line.partition("=")
        continued = (len(raw) - len(raw.rstrip("\\"))) % 2  # an odd trailing backslash
        assert sep and not continued, f"not one key=value line: {line!r}"
        raw = raw.lstrip(" \t\f")  # blanks before a value are no part of it
        value, i = [], 0
        while i < len(raw):
            ch = raw[i]
            if ch == "\\":
                i += 1
                if raw[i] == "u":
                    ch, i = chr(int(raw[i + 1:i + 5], 16)), i + 4
                else:
                    ch = {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(raw[i], raw[i])
            value.append(ch)
            i += 1
        props[key] = "".join(value).encode("utf-16", "surrogatepass").decode("utf-16")
    return props


KEY_PASSWORD = 'k\\ey "pass" \u00fc\U0001f511'


def _mutual_tls(ca, tmp_path, *, key_password: str = KEY_PASSWORD,
                pbes1: bool = False) -> KafkaConnection:
    """SSL with a client certificate chain (leaf + issuer) and a PKCS#8 key (encrypted when
    ``key_password``: PBES2 by ``cryptography``, PBES1 by ``openssl`` when ``pbes1``, the
    only scheme Kafka's PEM keystore decrypts on Java 17), in a directory whose name needs
    escaping in a properties file."""
    import os
    import subprocess

    from cryptography.hazmat.primitives import serialization

    where = tmp_path / "d\\ir \u00e9"
    where.mkdir(parents=True)
    cert, key = where / "client.pem", where / "client-key.pem"
    issuer_cert, issuer_key = where / "issuer.pem", where / "issuer-key.pem"
    _client_pair(issuer_cert, issuer_key)
    _client_pair(cert, key, issuer=(issuer_cert, issuer_key))
    if key_password and pbes1:
        plain = key.with_suffix(".plain")
        key.rename(plain)
        subprocess.run(["openssl", "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(plain),
                        "-out", str(key), "-passout", "env:KEY_PASSWORD"], check=True,
                       env={**os.environ, "KEY_PASSWORD": key_password})
    elif key_password:
        private = serialization.load_pem_private_key(key.read_bytes(), None)
        key.write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(key_password.encode())))
    cert.write_text(cert.read_text() + issuer_cert.read_text())
    trust = where / "ca.pem"
    trust.write_text(ca.read_text())
    return KafkaConnection.from_settings(KafkaSettings.load({
        "KAFKA_BOOTSTRAP_SERVERS": "b:9094", "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(trust), "KAFKA_SSL_CERTIFICATE_LOCATION": str(cert),
        "KAFKA_SSL_KEY_LOCATION": str(key), "KAFKA_SSL_KEY_PASSWORD": key_password}))


def test_java_properties_for_mutual_tls_carry_the_key_and_the_chain(ca, tmp_path):
    """Kafka's PEM keystore takes the key and the certificate chain inline (a file given as
    ssl.keystore.location must hold both), and the key's password as ssl.key.password."""
    conn = _mutual_tls(ca, tmp_path)
    props = _java_properties(conn.java_properties())
    assert props["ssl.keystore.type"] == "PEM" and "ssl.keystore.location" not in props
    assert props["ssl.keystore.key"] == Path(conn.ssl_key_location).read_text()
    assert "ENCRYPTED PRIVATE KEY" in props["ssl.keystore.key"]
    chain = Path(conn.ssl_certificate_location).read_text()
    assert props["ssl.keystore.certificate.chain"] == chain
    assert props["ssl.keystore.certificate.chain"].count("BEGIN CERTIFICATE") == 2
    assert props["ssl.key.password"] == KEY_PASSWORD
    assert "ssl.keystore.password" not in props  # refused by Kafka with a PEM keystore
    blank = replace(conn, ssl_key_password=Secret(" leading blank"))
    assert _java_properties(blank.java_properties())["ssl.key.password"] == " leading blank"
    assert props["ssl.truststore.location"] == conn.ssl_ca_location
    assert conn.java_properties().isascii()  # CLI tools read the file as ISO-8859-1
    unencrypted = _java_properties(_mutual_tls(ca, tmp_path / "plain", key_password="")
                                   .java_properties())
    assert "ssl.key.password" not in unencrypted
    assert "BEGIN PRIVATE KEY" in unencrypted["ssl.keystore.key"]


def test_java_properties_quote_the_sasl_password_for_jaas(ca):
    conn = KafkaConnection.from_settings(sasl_ssl(ca, KAFKA_SASL_PASSWORD='pa"ss\\w\u00f6rd'))
    jaas = _java_properties(conn.java_properties())["sasl.jaas.config"]
    assert jaas.endswith('username="sfprov-sink" password="pa\\"ss\\\\w\u00f6rd";')


CHECK_JAVA = """
import java.io.*; import java.util.*;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.security.JaasContext;
import org.apache.kafka.common.security.ssl.DefaultSslEngineFactory;
public class Check { public static void main(String[] a) {
  try { check(a[0]); } catch (Exception e) { System.out.println("FAILED: " + e); System.exit(1); }
}
static void check(String file) throws Exception {
  Properties p = new Properties();
  try (InputStream in = new FileInputStream(file)) { p.load(in); }  // as Utils.loadProps
  Map<String, Object> m = new HashMap<>();
  for (String k : p.stringPropertyNames()) m.put(k, p.getProperty(k));
  m.put("bootstrap.servers", "127.0.0.1:9");
  Map<String, Object> parsed = new HashMap<>(new AdminClientConfig(m).values());
  if (p.getProperty("ssl.keystore.type") != null) {
    DefaultSslEngineFactory f = new DefaultSslEngineFactory();
    f.configure(parsed);
    java.security.KeyStore ks = f.keystore();
    String alias = ks.aliases().nextElement();
    System.out.println("chain " + ks.getCertificateChain(alias).length);
  }
  if (p.getProperty("sasl.jaas.config") != null) {
    JaasContext jaas = JaasContext.loadClientContext(parsed);
    System.out.println("password " + jaas.configurationEntries().get(0)
        .getOptions().get("password").toString().codePoints().boxed().toList());
  }
}}
"""


@pytest.mark.broker
def test_java_properties_load_in_kafkas_own_classes(ca, tmp_path):
    """Kafka's DefaultSslEngineFactory builds the keystore from the rendered file, and its
    JAAS parser reads back the password (the Kafka jars of the local broker). An encrypted
    key must be PBES1: Kafka 3.9 on Java 17 cannot decrypt PBES2 (openssl's default)."""
    import shutil
    import subprocess

    from ops import kafka_local
    from tests.conftest import _unavailable

    if shutil.which("java") is None:
        _unavailable("java not found on PATH")
    try:
        libs = kafka_local.ensure_jars()
    except kafka_local.BrokerError as exc:
        _unavailable(str(exc))
    modules = subprocess.run(["java", "--list-modules"], capture_output=True, text=True)
    if "jdk.compiler@" not in modules.stdout:  # skipped locally, a failure under CI=true
        _unavailable("this Java runtime cannot run a source file (no jdk.compiler)")
    if shutil.which("openssl") is None:  # the encrypted-key case needs it: never dropped
        _unavailable("openssl not found on PATH (the encrypted-key case)")
    source = tmp_path / "Check.java"
    source.write_text(CHECK_JAVA)
    password = 'pa"ss\\w\u00f6rd'
    rendered = {"mtls": _mutual_tls(ca, tmp_path / "m", key_password="").java_properties(),
                "sasl": KafkaConnection.from_settings(
                    sasl_ssl(ca, KAFKA_SASL_PASSWORD=password)).java_properties()}
    # an encrypted key: ssl.key.password read back and used
    # (Java's PBE keys take printable ASCII only; Kafka trims a password's blanks)
    rendered["mtls-encrypted"] = _mutual_tls(
        ca, tmp_path / "e", pbes1=True, key_password='k\\ey "pass" #!=:').java_properties()
    for name, text in rendered.items():
        path = tmp_path / f"{name}.properties"
        path.write_text(text)
        run = subprocess.run(["java", "-cp", f"{libs}/*", str(source), str(path)],
                             capture_output=True, text=True, timeout=120)
        lines = run.stdout.splitlines()
        assert run.returncode == 0, f"{name}: {lines or run.stderr}"
        if name.startswith("mtls"):
            assert lines == ["chain 2"]
        else:
            assert lines == [f"password {[ord(c) for c in password]}"]


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
    # a connection closed during the first request is a protocol mismatch only when it
    # lasts, and something answers in the other protocol (test_a_front_whose_brokers_…)
    assert access_error(KafkaConnection("b:9096"), [PLAIN_ON_TLS]) is None
    assert access_error(KafkaConnection("b:9096"), [PLAIN_ON_TLS], final=True) is None
    line = access_error(KafkaConnection("b:9096"), [PLAIN_ON_TLS.replace(
        "APIVERSION_QUERY", "AUTH_HANDSHAKE")], final=True)
    assert line is not None and line.startswith("KAFKA_SECURITY_PROTOCOL: ")
    assert access_error(conn, ["1/1 brokers are down"], final=True) is None


class _Listener:
    """A local listener whose connections ``answer`` (socket → None) handles, one at a
    time, in a thread, until closed."""

    def __init__(self, answer) -> None:
        import socket
        import threading

        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port, self._answer = self._server.getsockname()[1], answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._server.accept()
            except OSError:
                continue
            try:
                raw.settimeout(3)
                self._answer(raw)
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


def _closes(raw) -> None:
    """A TCP front whose brokers behind it are down: accepts, then closes."""


def _answers_api_versions(raw) -> None:
    """A plaintext broker's first answer: the request's correlation id echoed."""
    request = raw.recv(64)
    raw.sendall(b"\x00\x00\x00\x06" + request[8:12] + b"\x00\x23")


def test_a_front_whose_brokers_are_down_is_retried_not_blamed_on_the_protocol(tmp_path):
    """A load balancer, proxy or PrivateLink endpoint (or ops/netcut's forwarder) whose
    brokers are down accepts and closes every connection, which librdkafka words as a
    listener of another protocol does: every process exited 64 (final, never restarted)
    naming KAFKA_SECURITY_PROTOCOL, and stayed down once the brokers were back. A probe in
    the other protocol tells them apart: nothing answers — retried."""
    from common.errors import KafkaAccessError, KafkaError
    from common.kafka import connect

    pki = _pki(tmp_path)
    front = _Listener(_closes)
    try:
        for protocol in ("PLAINTEXT", "SSL"):
            conn = KafkaConnection(f"127.0.0.1:{front.port}", security_protocol=protocol,
                                   ssl_ca_location=str(pki["ca"]))
            assert access_error(conn, [PLAIN_ON_TLS], final=True) is None, protocol
        with pytest.raises(KafkaError) as raised:
            connect(KafkaConnection(f"127.0.0.1:{front.port}"), timeout=3)
        assert not isinstance(raised.value, KafkaAccessError) and raised.value.retryable
        assert "brokers down behind a load balancer or proxy?" in str(raised.value)
    finally:
        front.close()

    # a TLS listener reached in plaintext: its handshake completes — the protocol is wrong
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["server"], pki["server-key"])

    def tls(raw) -> None:
        with server.wrap_socket(raw, server_side=True) as wrapped:
            wrapped.recv(1)
    listener = _Listener(tls)
    try:
        line = access_error(KafkaConnection(f"127.0.0.1:{listener.port}"), [PLAIN_ON_TLS],
                            final=True)
        assert line is not None and line.startswith("KAFKA_SECURITY_PROTOCOL: "), line
        assert "is PLAINTEXT the protocol of its listener?" in line
        with pytest.raises(KafkaAccessError, match="^KAFKA_SECURITY_PROTOCOL: "):
            connect(KafkaConnection(f"127.0.0.1:{listener.port}"), timeout=3)
    finally:
        listener.close()

    # a plaintext broker reached over TLS: it answers a plaintext ApiVersions
    broker = _Listener(_answers_api_versions)
    try:
        conn = KafkaConnection(f"127.0.0.1:{broker.port}", security_protocol="SSL",
                               ssl_ca_location=str(pki["ca"]))
        report = (f"ssl://127.0.0.1:{broker.port}/bootstrap: Disconnected (after 2ms in "
                  "state SSL_HANDSHAKE)")
        line = access_error(conn, [report], final=True)
        assert line is not None and "is SSL the protocol of its listener?" in line, line
    finally:
        broker.close()


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


# -- TLS files loaded at start; a host name the certificate lacks named as such -------------

def _pki(tmp_path):
    """A CA, a certificate for "otherhost" it signed (its key unencrypted), a client key
    encrypted with "right", and another CA: (paths by name)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(cn, key, issuer=None, issuer_key=None, ca=False):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(issuer.subject if issuer else name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn)]), False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    def key_pem(k, password=None):
        enc = (serialization.BestAvailableEncryption(password) if password
               else serialization.NoEncryption())
        return k.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.PKCS8, enc)
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test-ca", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    files = {"ca": pem(ca_cert), "other-ca": pem(cert("other-ca", other_key, ca=True)),
             "server": pem(cert("otherhost", server_key, ca_cert, ca_key)),
             "server-key": key_pem(server_key),
             "client": pem(cert("client", client_key, ca_cert, ca_key)),
             "client-key": key_pem(client_key, b"right"),
             "not-pem": b"not a certificate\n",
             "rsa-key": key_pem(rsa.generate_private_key(public_exponent=65537,
                                                         key_size=2048))}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("change, name", [
    ({"KAFKA_SSL_KEY_PASSWORD": "wrong"}, "KAFKA_SSL_KEY_PASSWORD"),
    ({"KAFKA_SSL_KEY_PASSWORD": ""}, "KAFKA_SSL_KEY_PASSWORD"),
    ({"KAFKA_SSL_KEY_LOCATION": "server-key"}, "KAFKA_SSL_KEY_LOCATION"),
    ({"KAFKA_SSL_KEY_LOCATION": "rsa-key"}, "KAFKA_SSL_KEY_LOCATION"),  # another type
    ({"KAFKA_SSL_CA_LOCATION": "not-pem"}, "KAFKA_SSL_CA_LOCATION"),
])
def test_tls_files_the_clients_cannot_load_name_their_setting_at_start(tmp_path, change,
                                                                       name):
    """librdkafka loads them when a client is made: its error was a traceback, exit 1,
    restarted for ever, with no line naming the setting."""
    pki = _pki(tmp_path)
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b:9093", "KAFKA_SECURITY_PROTOCOL": "SSL",
           "KAFKA_SSL_CA_LOCATION": str(pki["ca"]),
           "KAFKA_SSL_CERTIFICATE_LOCATION": str(pki["client"]),
           "KAFKA_SSL_KEY_LOCATION": str(pki["client-key"]), "KAFKA_SSL_KEY_PASSWORD": "right"}
    KafkaSettings.load(env)  # as given: loads
    changed = {k: (str(pki[v]) if v in pki else v) for k, v in change.items()}
    with pytest.raises(ConfigError, match=f"^{name}:") as info:
        KafkaSettings.load({**env, **changed})
    assert "\n" not in str(info.value) and "right" not in str(info.value).replace(
        "not the one", "")


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_a_host_name_the_brokers_certificate_lacks_is_not_blamed_on_the_ca(tmp_path, protocol):
    """OpenSSL words a host name mismatch as an untrusted certificate ("certificate verify
    failed"): the line sent operators to KAFKA_SSL_CA_LOCATION, which was right."""
    import socket
    import ssl
    import threading

    pki = _pki(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["server"], pki["server-key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        listener.settimeout(10)
        for _ in range(2):
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with server.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    report = (f"{protocol.lower()}://localhost:{port}/bootstrap: SSL handshake failed: error:0A000086:SSL "
              "routines::certificate verify failed: broker certificate could not be verified "
              "(after 1ms in state SSL_HANDSHAKE)")
    try:
        trusted = KafkaConnection(f"localhost:{port}", security_protocol=protocol,
                                  ssl_ca_location=str(pki["ca"]))
        line = access_error(trusted, [report])
        assert line is not None and line.startswith("KAFKA_BOOTSTRAP_SERVERS: "), line
        assert f"does not name localhost:{port}" in line
        untrusted = KafkaConnection(f"localhost:{port}", security_protocol=protocol,
                                    ssl_ca_location=str(pki["other-ca"]))
        line = access_error(untrusted, [report])
        assert line is not None and line.startswith("KAFKA_SSL_CA_LOCATION: "), line
    finally:
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_listener_requiring_a_client_certificate_is_named_not_retried(tmp_path, version):
    """Mutual TLS without a client certificate: librdkafka's line is the broker's TLS
    alert; a plaintext client's is a connection closed in its first request, and the probe's
    own handshake meets the alert. Both are certain (exit 64), not a front to wait out."""
    from common.errors import KafkaAccessError
    from common.kafka import connect

    pki = _pki(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["server"], pki["server-key"])
    server.load_verify_locations(pki["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    server.maximum_version = getattr(ssl.TLSVersion, version)

    def tls(raw) -> None:
        with server.wrap_socket(raw, server_side=True) as wrapped:
            wrapped.recv(1)
    listener = _Listener(tls)
    try:
        tls_conn = KafkaConnection(f"127.0.0.1:{listener.port}", security_protocol="SSL",
                                   ssl_ca_location=str(pki["ca"]),
                                   ssl_endpoint_identification=False)
        with pytest.raises(KafkaAccessError, match="^KAFKA_SSL_CERTIFICATE_LOCATION: the "
                                                   "broker refused the TLS handshake"):
            connect(tls_conn, timeout=4)
        with pytest.raises(KafkaAccessError, match="^KAFKA_SECURITY_PROTOCOL: "):
            connect(KafkaConnection(f"127.0.0.1:{listener.port}"), timeout=4)
    finally:
        listener.close()


def test_the_probe_reaches_bootstrap_items_without_a_port(monkeypatch):
    """librdkafka takes `kafka1` as kafka1:9092: the probe parsed no port from it, tried
    nothing, and a real protocol mismatch was retried for ever."""
    import socket

    from common.connection import _speaks_other_protocol

    tried: list[tuple[str, int]] = []

    def create_connection(address, timeout=None):
        tried.append(address)
        raise OSError("refused")
    monkeypatch.setattr(socket, "create_connection", create_connection)
    assert not _speaks_other_protocol(KafkaConnection("kafka1,[::1],kafka3:9093"))
    assert tried == [("kafka1", 9092), ("::1", 9092), ("kafka3", 9093)]

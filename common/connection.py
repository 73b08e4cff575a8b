"""One connection config for every Kafka client: confluent-kafka and faust/aiokafka alike.

:class:`KafkaConnection` holds where the brokers are and how to reach them (TLS, SASL,
mutual TLS; secrets stay :class:`~common.envparse.Secret` until a client is built) and
renders it for each library, so no client is ever built from the bootstrap servers
alone::

    conn = KafkaConnection.from_settings(kafka)
    Producer(conn.librdkafka(**{"acks": "all"}))          # confluent-kafka
    faust.App(..., **conn.faust())                         # broker URLs + broker_credentials
    AIOKafkaConsumer(..., **conn.aiokafka())               # aiokafka directly
    conn.java_properties()                                 # Kafka's CLI tools: --command-config

The settings are ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*`` and ``KAFKA_SSL_*`` (see
:class:`~common.settings.KafkaSettings`). :func:`access_error` turns what librdkafka
reports about a refused connection into one line naming the setting to fix.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

from common.envparse import Secret
from common.settings import KafkaSettings


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_endpoint_identification: bool = True

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> KafkaConnection:
        return cls(bootstrap_servers=kafka.bootstrap_servers,
                   security_protocol=kafka.security_protocol,
                   sasl_mechanism=kafka.sasl_mechanism, sasl_username=kafka.sasl_username,
                   sasl_password=kafka.sasl_password, ssl_ca_location=kafka.ssl_ca_location,
                   ssl_certificate_location=kafka.ssl_certificate_location,
                   ssl_key_location=kafka.ssl_key_location,
                   ssl_key_password=kafka.ssl_key_password,
                   ssl_endpoint_identification=kafka.ssl_endpoint_identification)

    def with_bootstrap(self, bootstrap_servers: str) -> KafkaConnection:
        return replace(self, bootstrap_servers=bootstrap_servers)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def principal(self) -> str:
        """Who the broker will see (for messages): the SASL user, else the protocol."""
        if self.uses_sasl:
            return f"User:{self.sasl_username}"
        if self.ssl_certificate_location:
            return f"the certificate {self.ssl_certificate_location}"
        return "User:ANONYMOUS"

    # -- confluent-kafka (librdkafka) ----------------------------------------------------

    def librdkafka(self, **extra: Any) -> dict[str, Any]:
        """The configuration dict of a confluent-kafka Producer, Consumer or AdminClient;
        ``extra`` adds the client's own properties (keys with dots: pass a dict with **)."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol.lower()
        if self.uses_sasl:
            conf.update({"sasl.mechanism": self.sasl_mechanism,
                         "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password.reveal()})
        if self.uses_tls:
            if self.ssl_ca_location:
                conf["ssl.ca.location"] = self.ssl_ca_location
            if self.ssl_certificate_location:
                conf["ssl.certificate.location"] = self.ssl_certificate_location
                conf["ssl.key.location"] = self.ssl_key_location
            if self.ssl_key_password:
                conf["ssl.key.password"] = self.ssl_key_password.reveal()
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_endpoint_identification else "none")
        conf.update(extra)
        return conf

    # -- aiokafka and faust ------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context aiokafka uses (None without TLS)."""
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_location or None)
        context.check_hostname = self.ssl_endpoint_identification
        if self.ssl_certificate_location:
            context.load_cert_chain(self.ssl_certificate_location, self.ssl_key_location,
                                    password=self.ssl_key_password.reveal() or None)
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of an aiokafka client (besides its own)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers.split(","),
                                  "security_protocol": self.security_protocol}
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism,
                          sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.reveal())
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def faust(self) -> dict[str, Any]:
        """``broker`` and ``broker_credentials`` of a ``faust.App`` (faust hands the
        credentials to every aiokafka client it builds: consumer, producer, topic admin)."""
        import faust

        brokers = [f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(",")]
        credentials: Any = None
        if self.uses_sasl:
            credentials = faust.SASLCredentials(
                username=self.sasl_username, password=self.sasl_password.reveal(),
                mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        elif self.uses_tls:
            credentials = faust.SSLCredentials(self.ssl_context())
        return {"broker": brokers, "broker_credentials": credentials}

    # -- Kafka's own tools -------------------------------------------------------------

    def java_properties(self) -> str:
        """A client.properties for Kafka's CLI tools (``--command-config``). It holds the
        password (and a client key) in clear text: write it to a file only the operator
        can read. Mutual TLS inlines the PEM key and certificate chain (Kafka's PEM keystore
        wants both, and a key in PKCS#8, if encrypted then under PBES1: Java 17 decrypts no
        PBES2); values are escaped for java.util.Properties (read as ISO-8859-1 by the
        tools: anything else as ``\\uXXXX``)."""
        entries = [("security.protocol", self.security_protocol)]
        if self.uses_sasl:
            module = ("org.apache.kafka.common.security.plain.PlainLoginModule"
                      if self.sasl_mechanism == "PLAIN"
                      else "org.apache.kafka.common.security.scram.ScramLoginModule")

            def jaas(value: str) -> str:  # a quoted string of Kafka's JAAS parser
                return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

            entries += [("sasl.mechanism", self.sasl_mechanism),
                        ("sasl.jaas.config", f"{module} required "
                                             f"username={jaas(self.sasl_username)} "
                                             f"password={jaas(self.sasl_password.reveal())};")]
        if self.uses_tls:
            if self.ssl_ca_location:
                entries += [("ssl.truststore.type", "PEM"),
                            ("ssl.truststore.location", self.ssl_ca_location)]
            if self.ssl_certificate_location:
                # PEM is ASCII; Kafka reads nothing but the blocks (whatever else a file says)
                with open(self.ssl_key_location, encoding="utf-8", errors="replace") as key, \
                        open(self.ssl_certificate_location, encoding="utf-8",
                             errors="replace") as chain:
                    entries += [("ssl.keystore.type", "PEM"),
                                ("ssl.keystore.key", key.read()),
                                ("ssl.keystore.certificate.chain", chain.read())]
                if self.ssl_key_password:
                    entries.append(("ssl.key.password", self.ssl_key_password.reveal()))
            if not self.ssl_endpoint_identification:
                entries.append(("ssl.endpoint.identification.algorithm", ""))

        def escaped(value: str) -> str:
            escapes = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}
            out = []
            for i, ch in enumerate(value):
                if ch in escapes:
                    out.append(escapes[ch])
                elif ch == " " and i == 0:  # a leading blank would be skipped
                    out.append("\\ ")
                elif " " <= ch <= "~":
                    out.append(ch)
                else:  # UTF-16 code units, as java.lang.String holds them
                    units = ch.encode("utf-16-be", "surrogatepass")
                    out += [f"\\u{units[j]:02x}{units[j + 1]:02x}"
                            for j in range(0, len(units), 2)]
            return "".join(out)

        return "".join(f"{key}={escaped(value)}\n" for key, value in entries)


Connectable = KafkaConnection | KafkaSettings | str


def as_connection(target: Connectable) -> KafkaConnection:
    """A connection from settings, a connection, or a bare bootstrap address (plaintext:
    tests and benchmarks against the local broker)."""
    if isinstance(target, KafkaConnection):
        return target
    if isinstance(target, KafkaSettings):
        return KafkaConnection.from_settings(target)
    return KafkaConnection(target)


def kafka_config(target: Connectable, **extra: Any) -> dict[str, Any]:
    """Shorthand: the confluent-kafka configuration of a client of ``target``'s cluster."""
    return as_connection(target).librdkafka(**extra)


# A connection closed before the broker's first answer: a listener of another protocol —
# or a TCP front (a load balancer, a proxy, a PrivateLink endpoint) whose brokers behind it
# are down, which accepts and closes alike. Only a probe tells them apart
# (:func:`_speaks_other_protocol`).
_CLOSED_IN_HANDSHAKE = ("in state apiversion_query", "incorrect security.protocol",
                        "in state ssl_handshake")

# librdkafka's words for a refused connection, and the setting each points to. The first
# three are certain the moment they appear; a connection closed during the first request
# only means a protocol mismatch when it never gets better (see ``final``).
_SIGNS = (
    (("authentication failed", "invalid credentials", "sasl authentication error",
      "invalid username or password"),
     "KAFKA_SASL_PASSWORD", "the broker refused the SASL credentials of {principal} "
                            "(KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD, "
                            "KAFKA_SASL_MECHANISM={mechanism})", False),
    (("certificate verify failed", "broker certificate could not be verified",
      "self-signed certificate", "self signed certificate", "unable to get local issuer"),
     "KAFKA_SSL_CA_LOCATION", "the broker's TLS certificate could not be verified with "
                              "{ca}", False),
    (("unsupported sasl mechanism", "sasl mechanism not supported", "no sasl mechanism"),
     "KAFKA_SASL_MECHANISM", "the broker does not offer SASL mechanism {mechanism}", False),
    (("in state auth_handshake",),  # its ApiVersions was answered: a broker, alive
     "KAFKA_SECURITY_PROTOCOL", "the broker closes every connection during the handshake: "
                                "is {protocol} the protocol of its listener?", True),
    # the broker's own TLS alert: a TLS listener, alive, refusing this client's certificate
    # (none given, or one it does not trust) — certain
    (("alert certificate required", "alert handshake failure", "alert bad certificate",
      "alert unknown ca", "alert certificate unknown", "alert access denied"),
     "KAFKA_SSL_CERTIFICATE_LOCATION", "the broker refused the TLS handshake: does its "
                                       "listener require a client certificate it trusts "
                                       "(KAFKA_SSL_CERTIFICATE_LOCATION, KAFKA_SSL_KEY_LOCATION)?",
     False),
    (_CLOSED_IN_HANDSHAKE,
     "KAFKA_SECURITY_PROTOCOL", "the broker closes every connection during the handshake: "
                                "is {protocol} the protocol of its listener?", True),
)

# broker error codes that mean "this principal may not" (confluent_kafka.KafkaError codes)
REFUSAL_CODES = {29: "TOPIC_AUTHORIZATION_FAILED", 30: "GROUP_AUTHORIZATION_FAILED",
                 31: "CLUSTER_AUTHORIZATION_FAILED", 53: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                 58: "SASL_AUTHENTICATION_FAILED", -169: "_AUTHENTICATION"}


def access_error(conn: KafkaConnection, reports: list[str], *, final: bool = False) -> str | None:
    """One line naming the setting to fix, when librdkafka's error and log ``reports`` show
    the broker refused this client (credentials, TLS trust, mechanism; with ``final`` — no
    connection ever succeeded — also the protocol). None when they do not."""
    for signs, setting, message, needs_final in _SIGNS:
        if needs_final and not final:
            continue
        hits = [r for r in reports if any(sign in r.lower() for sign in signs)]
        if hits and signs is _CLOSED_IN_HANDSHAKE and not _speaks_other_protocol(conn):
            continue  # nothing answers either way: brokers down behind a front (retried)
        if hits and setting == "KAFKA_SSL_CA_LOCATION" and conn.ssl_endpoint_identification \
                and (host := _unnamed_host(conn, hits[-1])) is not None:
            return (f"KAFKA_BOOTSTRAP_SERVERS: the broker's TLS certificate does not name "
                    f"{host} (it is trusted: the CA is right) — connect through a name the "
                    "certificate has, in KAFKA_BOOTSTRAP_SERVERS or the broker's advertised "
                    f"listeners ({hits[-1][:300]})")
        if hits:
            detail = message.format(principal=conn.principal, mechanism=conn.sasl_mechanism,
                                    protocol=conn.security_protocol,
                                    ca=conn.ssl_ca_location or "the system's CA bundle")
            return f"{setting}: {detail} at {conn.bootstrap_servers} ({hits[-1][:300]})"
    return None


def closed_in_handshake(reports: list[str]) -> bool:
    """Every connection closed before the broker's first answer (``reports``: librdkafka's
    errors and log lines), as a front whose brokers are down does: the hint for a retried
    failure's message."""
    return any(sign in r.lower() for r in reports for sign in _CLOSED_IN_HANDSHAKE)


#: ApiVersions v0 (api key 18), correlation id 7, client id "sfprov-probe": a request every
#: Kafka broker answers before any authentication
_API_VERSIONS = (b"\x00\x00\x00\x16" b"\x00\x12\x00\x00\x00\x00\x00\x07"
                 b"\x00\x0csfprov-probe")


def _speaks_other_protocol(conn: KafkaConnection, timeout_s: float = 3.0) -> bool:
    """True when a bootstrap address answers in the protocol ``conn`` does not speak: a TLS
    handshake completes where ``conn`` is plaintext, or a broker answers a plaintext
    ApiVersions where ``conn`` speaks TLS. False when nothing answers either way (a front
    that accepts and closes, its brokers down) or it cannot tell."""
    import socket

    from common.envparse import host_port

    for item in conn.bootstrap_servers.split(",")[:3]:
        address = host_port(item)
        if address is None:
            continue
        host, port = address
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as raw:
                raw.settimeout(timeout_s)
                if conn.uses_tls:
                    raw.sendall(_API_VERSIONS)
                    answer = raw.recv(8)
                    if len(answer) >= 8 and answer[4:8] == b"\x00\x00\x00\x07":
                        return True
                else:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    with context.wrap_socket(raw, server_hostname=host):
                        return True  # the handshake completed: its listener speaks TLS
        except ssl.SSLEOFError:
            continue  # closed mid-handshake: what a front with nothing behind it does
        except ssl.SSLError:
            if not conn.uses_tls:
                return True  # a TLS alert (a client certificate required): a TLS peer
        except (OSError, ValueError):
            continue
    return False


_FAILED_AT = re.compile(r"(?<![\w])(?:sasl_)?ssl://(\[[^\]]+\]|[^:/\s]+):(\d+)/")
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64


def _unnamed_host(conn: KafkaConnection, report: str, timeout_s: float = 3.0) -> str | None:
    """librdkafka words a host name the broker's certificate does not name as it words an
    untrusted certificate ("certificate verify failed"). One TLS handshake with Python's
    ssl, to the address that failed, tells them apart: the host (``host:port``) when the
    certificate is trusted but does not name it; None otherwise (or when it cannot tell)."""
    import socket

    found = _FAILED_AT.search(report)
    if found is None:
        return None
    host, port = found.group(1).strip("[]"), int(found.group(2))
    try:
        context = ssl.create_default_context(cafile=conn.ssl_ca_location or None)
        if conn.ssl_certificate_location and conn.ssl_key_location:
            context.load_cert_chain(conn.ssl_certificate_location, conn.ssl_key_location,
                                    conn.ssl_key_password.reveal() or None)
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return None  # it verifies from here: not a name librdkafka was refused for
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
            return f"{host}:{port}"
        return None
    except (OSError, ValueError):
        return None


def is_refusal(err: Any) -> bool:
    """True for a confluent-kafka error that means the broker refused this principal (an
    aiokafka one: :func:`aiokafka_refusal`)."""
    return err is not None and err.code() in REFUSAL_CODES


# aiokafka's errors for the same refusals (aiokafka.errors, by broker error code). Told by
# their code and module, not imported: only streams.faust_seam imports aiokafka.
AIOKAFKA_REFUSALS = {"TopicAuthorizationFailedError": 29, "GroupAuthorizationFailedError": 30,
                     "ClusterAuthorizationFailedError": 31,
                     "TransactionalIdAuthorizationFailed": 53}
# one named in an error's text: "record not sent: TopicAuthorizationFailedError('t')"
_AIOKAFKA_NAMED = re.compile(rf"\b({'|'.join(AIOKAFKA_REFUSALS)})\((?:'([^']*)')?")


@dataclass(frozen=True)
class Refusal:
    """An aiokafka authorization error, as :func:`refusal_message` renders it: ``code`` the
    broker's, ``resource`` the topic (or group) aiokafka named, when it did."""

    code: int
    resource: str | None = None

    def __str__(self) -> str:  # as confluent_kafka.KafkaError.str() words it
        name = REFUSAL_CODES[self.code]
        return f"{name.replace('_', ' ').capitalize()} ({name})"


def aiokafka_refusal(exc: BaseException | None) -> Refusal | None:
    """The authorization refusal (topic, group, cluster, transactional id) that ``exc`` is,
    or was caused by, when the error came from aiokafka; None otherwise. Found however it
    was delivered: raised by a send, set on its future, chained (``raise … from``), or only
    named in the text of the error that replaced it (the worker's record writer fails the
    records of a send cut short with ``DurabilityError("record not sent: …Error('t')")``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if isinstance(code, int) and code in AIOKAFKA_REFUSALS.values() and \
                type(exc).__module__.startswith("aiokafka"):
            resource = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
            return Refusal(code, resource or None)
        named = _AIOKAFKA_NAMED.search(str(exc))
        if named:
            return Refusal(AIOKAFKA_REFUSALS[named.group(1)], named.group(2) or None)
        exc = exc.__cause__ or exc.__context__
    return None


def refusal_message(conn_or_principal: KafkaConnection | str, what: str, err: Any) -> str:
    """The line a process logs when an operation is refused (ACLs, not a retry)."""
    principal = (conn_or_principal.principal if isinstance(conn_or_principal, KafkaConnection)
                 else conn_or_principal)
    detail = err.str() if callable(getattr(err, "str", None)) else str(err)  # or a Refusal
    return (f"the broker refused {principal} to {what}: {detail} — an ACL is missing or "
            "the process runs under the wrong principal (see `sfprov acls`); not retrying")

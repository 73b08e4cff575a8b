"""The local broker, secured: a SASL_SSL listener, SCRAM users and the StandardAuthorizer.

:class:`BrokerSecurity` is an overlay for :class:`ops.kafka_local.LocalBroker` (its
``security`` field): it generates, once, under ``<broker home>/secure/`` (mode 0700)

* a CA and a broker certificate signed by it, for ``localhost`` and ``127.0.0.1``
  (``ca.pem``; the broker's key and chain in ``broker.p12``);
* a password per user (``users.json``, mode 0600): ``sfprov-admin`` (the broker's own
  inter-broker and controller identity, and the only super user) and one principal per
  process — ``sfprov-connector``, ``sfprov-worker``, ``sfprov-sink``, ``sfprov-ops``;

and changes the broker's properties so that its one client listener (``port``) speaks
SASL_SSL with SCRAM-SHA-512, the controller listener SASL_PLAINTEXT with PLAIN (SCRAM
credentials live in the metadata log the controller serves, so it cannot use them), and
``StandardAuthorizer`` denies whatever no ACL allows. The SCRAM users are created when the
storage directory is formatted (``kafka-storage format --add-scram``).

The ACLs themselves depend on the topic names and are not the broker's business: they come
from :mod:`ops.acls` and are applied by whoever starts the pipeline (``ops.stack``, the test
harness) with :meth:`BrokerSecurity.admin`.

Nothing here is a production secret: the files are regenerated with the broker's data
(``make clean``) and never leave ``.state/``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.connection import KafkaConnection
from common.envparse import Secret

ADMIN = "sfprov-admin"
PROCESS_USERS = {"connector": "sfprov-connector", "worker": "sfprov-worker",
                 "sink": "sfprov-sink", "ops": "sfprov-ops"}
MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"


def _private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def _certificates(directory: Path, keystore_password: str) -> None:
    """A CA and a broker certificate for localhost/127.0.0.1 (PKCS#12 for the JVM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(issuer or name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=825))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = build("sfprov local Kafka CA", ca_key, None, None, ca=True)
    broker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    broker = build("localhost", broker_key, ca.subject, ca_key, ca=False)
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(50000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256()).build(keystore_password.encode()))
    _private_file(directory / "broker.p12", pkcs12.serialize_key_and_certificates(
        b"broker", broker_key, broker, [ca], encryption))


def overlay_properties(text: str, changes: dict[str, str]) -> str:
    """``text`` (a server.properties) with ``changes`` applied: keys replaced in place,
    new ones appended. Keeps whatever else the base configuration says."""
    lines, seen = [], set()
    for line in text.splitlines():
        key = line.partition("=")[0].strip()
        if line and not line.startswith("#") and key in changes:
            lines.append(f"{key}={changes[key]}")
            seen.add(key)
        else:
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    lines += [f"{k}={v}" for k, v in changes.items() if k not in seen]
    return "\n".join(lines) + "\n"


@dataclass
class BrokerSecurity:
    """SASL_SSL + SCRAM + ACLs for one local broker; secrets under ``directory``."""

    directory: Path
    users: dict[str, Secret] = field(default_factory=dict)
    keystore_password: Secret = field(default_factory=lambda: Secret(""))

    @classmethod
    def for_broker_home(cls, home: Path) -> BrokerSecurity:
        return cls(home / "secure").ensure()

    def ensure(self) -> BrokerSecurity:
        """Create the certificates and passwords once; later calls read them back."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        users_file = self.directory / "users.json"
        if not users_file.exists():
            stored = {name: secrets.token_urlsafe(24)
                      for name in (ADMIN, *PROCESS_USERS.values())}
            stored["__keystore__"] = secrets.token_urlsafe(24)
            _certificates(self.directory, stored["__keystore__"])
            _private_file(users_file, json.dumps(stored, indent=1).encode())
        stored = json.loads(users_file.read_text())
        self.keystore_password = Secret(stored.pop("__keystore__"))
        self.users = {name: Secret(password) for name, password in stored.items()}
        return self

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    # -- the broker's side ---------------------------------------------------------------

    def broker_properties(self, host: str, port: int, controller_port: int) -> dict[str, str]:
        """What changes in server.properties: listeners, TLS, SASL, the authorizer."""
        admin = self.users[ADMIN].reveal()
        scram = (f"org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{ADMIN}" password="{admin}";')
        plain = (f"org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{ADMIN}" password="{admin}" user_{ADMIN}="{admin}";')
        ks = self.keystore_password.reveal()
        return {
            "listeners": f"{LISTENER}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"{LISTENER}://{host}:{port}",
            "listener.security.protocol.map": f"{LISTENER}:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": LISTENER,
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.{LISTENER.lower()}.{MECHANISM.lower()}.sasl.jaas.config": scram,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.directory / "broker.p12"),
            "ssl.keystore.password": ks,
            "ssl.key.password": ks,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name":
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN}",
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every SCRAM user. They hold the
        passwords in clear text: pass them in a private argument file (``LocalBroker.prepare``
        does), never on a command line, which every local user can read."""
        return [f"--add-scram={MECHANISM}=[name={name},password={password.reveal()}]"
                for name, password in self.users.items()]

    # -- the clients' side -----------------------------------------------------------------

    def connection(self, bootstrap: str, user: str = ADMIN) -> KafkaConnection:
        return KafkaConnection(bootstrap, security_protocol="SASL_SSL",
                               sasl_mechanism=MECHANISM, sasl_username=user,
                               sasl_password=self.users[user],
                               ssl_ca_location=str(self.ca_file))

    def env(self, user: str) -> dict[str, str]:
        """The ``KAFKA_*`` settings of a process connecting as ``user``."""
        return {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": MECHANISM,
                "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": self.users[user].reveal(),
                "KAFKA_SSL_CA_LOCATION": str(self.ca_file)}

    def write_client_properties(self, bootstrap: str, user: str = ADMIN) -> Path:
        """``<secure>/<user>.properties`` for Kafka's CLI tools (``--command-config``)."""
        path = self.directory / f"{user}.properties"
        _private_file(path, self.connection(bootstrap, user).java_properties().encode())
        return path

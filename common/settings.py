"""Settings, read from the environment (and an optional ``.env``) in one place.

Each process loads only the sections it needs (``KafkaSettings.load()``,
``SalesforceSettings.load()``, ...), so the connector does not demand WHMCS credentials.
Every field names its environment variable; a missing or invalid value raises
:class:`~common.errors.ConfigError` with one line naming the variable. Secrets are
:class:`~common.envparse.Secret`, whose ``repr``/``str`` never show the value. How a raw
string becomes a field's value (the parsers, the ``.env`` file) is :mod:`common.envparse`.

The README's configuration table is checked against :func:`all_variables` by a test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from common.envparse import (
    HOME,
    KEY_NOT_SHOWN,
    TOPIC_CHARS,
    TOPIC_MAX_LENGTH,
    UNSET,
    Secret,
    choice,
    env,
    environment,
    hide_userinfo,
    looks_like_key_material,
    parse_base64_key,
    parse_bool,
    parse_float,
    parse_host_list,
    parse_host_port,
    parse_http_url,
    parse_non_negative_float,
    parse_non_negative_int,
    parse_plain_http_url,
    parse_port,
    parse_positive_float,
    parse_positive_int,
    parse_start_position,
    parse_store_url,
    read_field,
    split_userinfo,
)
from common.errors import ConfigError

log = logging.getLogger(__name__)

# Numbers of the processes' code that bound settings here (tests/foundation/test_settings
# keeps them equal to the code's):
#: streams.lease.RENEW_BEFORE_MS in seconds: an intent is renewed (a durable flush) before
#: a WHMCS write once less than this is left of its lease
INTENT_RENEW_BEFORE_S = 1.0
#: the max.poll.interval.ms the sink's consumer is built with (sinks.app); librdkafka
#: refuses a consumer whose session.timeout.ms is longer
SINK_MAX_POLL_INTERVAL_MS = 300_000
#: Salesforce sends a quiet subscription a keepalive "at least every 270 s" (REFERENCE §1)
PUBSUB_KEEPALIVE_S = 270.0
#: the longest "Activating for at least" a reconciliation pass takes (10 years): beyond it no
#: Order is old enough, and far beyond it the pass's SOQL datetime is out of range (every
#: pass failed); ``sfprov reconcile --older-than`` has the same limit (ops.cli.duration_s)
RECONCILE_OLDER_THAN_MAX_S = 315_360_000.0
#: what the worker appends to its app id (with the topic prefix) for the topics it makes:
#: its tables' changelogs (common.kafka.changelog_topics) and faust's leader topic
#: (ops.acls.worker_topics)
WORKER_TOPIC_SUFFIXES = ("-idem-changelog", "-intents-changelog", "-__assignor-__leader")


S = TypeVar("S", bound="_Section")


class _Section:
    @classmethod
    def load(cls: type[S], source: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Build the section from ``source`` (default: environment + .env)."""
        src = environment() if source is None else source
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            value = read_field(f, src)
            if value is not UNSET:
                values[f.name] = value
        cls._derive(values)
        section = cls(**values)
        section.validate()
        return section

    @classmethod
    def _derive(cls, values: dict[str, Any]) -> None:
        """Defaults that depend on other fields: fill ``values`` (the fields set) in place."""

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError naming the variable."""

    def __repr__(self) -> str:
        """The dataclass repr, with a URL's credentials (``https://KEY:SECRET@host``) shown
        as ``***`` (Secret fields print themselves masked)."""
        shown = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if isinstance(value, str) and f.metadata.get("parse") in (parse_http_url,
                                                                      parse_plain_http_url):
                value = hide_userinfo(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__qualname__}({', '.join(shown)})"


def setting(section: type[_Section], attr: str, source: Mapping[str, str]) -> Any:
    """One field of ``section`` as :meth:`_Section.load` reads it from ``source`` (its
    default when unset), without the section's other fields and checks: what ``make up``
    needs of a process's settings (:func:`ops.stack._pipeline_processes`). A value that does
    not parse is a :class:`ConfigError`, as for the process."""
    f = next(f for f in dataclasses.fields(section)  # type: ignore[arg-type]
             if f.name == attr)
    value = read_field(f, source)
    if value is not UNSET:
        return value
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _secret_default() -> Secret:
    return Secret("")


def _check_file(name: str, path: str, instead: str = "") -> None:
    """``path``, the value of setting ``name``, names a file: else a ConfigError naming the
    setting — for a name the OS refuses too (base64 key material: "File name too long" was
    a traceback, exit 1, restarted for ever). A key pasted in place of the path
    (:func:`~common.envparse.looks_like_key_material`) is never quoted: the message printed
    it whole, in every restart's log; ``instead`` says where such a value goes."""
    try:
        if Path(path).is_file():
            with Path(path).open("rb"):  # readable by this process's user too
                return
        reason = "no such file"
    except PermissionError as exc:  # a 0600 file mounted into a container of another uid
        raise ConfigError(f"{name}: cannot read {path} ({exc.strerror}): this process runs "
                          f"as uid {os.getuid()}") from None
    except OSError as exc:
        reason = f"not a file's path ({exc.strerror or type(exc).__name__})"
    if looks_like_key_material(path):
        raise ConfigError(f"{name}: expected the path of a PEM file {KEY_NOT_SHOWN}"
                          f"{instead}")
    raise ConfigError(f"{name}: {reason}: {path}")


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class CommonSettings(_Section):
    log_level: str = env("LOG_LEVEL", "INFO", parse=choice("DEBUG", "INFO", "WARNING", "ERROR"),
                         doc="Log level of every process.")
    log_format: str = env("LOG_FORMAT", "JSON", parse=choice("JSON", "TEXT"),
                          doc="JSON lines (default) or human-readable text.")
    state_dir: Path = env("SFPROV_STATE_DIR", HOME / ".state", parse=Path,
                          doc="Where local state lives: broker data, sandbox databases, logs, "
                              "worker tables.")
    tracing: str = env("SFPROV_TRACING", "OFF", parse=choice("OFF", "CONSOLE", "FILE", "OTLP"),
                       doc="OpenTelemetry tracing, one trace per Order across the processes: "
                           "OFF, CONSOLE (stderr), FILE (JSON lines) or OTLP (HTTP).")
    tracing_file: str = env("SFPROV_TRACING_FILE", "",
                            doc="FILE tracing: where spans go (default "
                                "$SFPROV_STATE_DIR/traces/<process>.jsonl).")
    otlp_endpoint: str = env("SFPROV_TRACING_OTLP_ENDPOINT", "http://localhost:4318/v1/traces",
                             parse=parse_http_url,
                             doc="OTLP tracing: the collector's OTLP/HTTP traces endpoint.")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class _KeyPasswordNeeded(Exception):
    """An encrypted key met with no password (:meth:`KafkaSettings._check_tls_material`)."""


def _no_password() -> str:
    raise _KeyPasswordNeeded


def _decrypts(key_file: str, password: str) -> bool:
    """``password`` opens the PEM key in ``key_file`` (True when it cannot tell: the
    caller's own error stands)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(Path(key_file).read_bytes(), password.encode())
    except ValueError as exc:
        return "decrypt" not in str(exc).lower() and "password" not in str(exc).lower()
    except (TypeError, OSError):
        return True
    return True


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class KafkaSettings(_Section):
    bootstrap_servers: str = env("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092",
                                 parse=parse_host_list,
                                 doc="Kafka bootstrap servers, comma-separated (no empty "
                                     "item).")
    topic_prefix: str = env("KAFKA_TOPIC_PREFIX", "",
                            doc="Prefix for every topic and consumer group name "
                                "(isolates environments and tests): letters, digits, '.', "
                                "'_' and '-', as every topic name.")
    requests_topic: str = env("KAFKA_TOPIC_REQUESTS", "salesforce.order-provision-requested",
                              doc="Requests topic: platform events written by the connector.")
    outcomes_topic: str = env("KAFKA_TOPIC_OUTCOMES", "provisioning.outcomes",
                              doc="Outcomes topic: one record per provisioning decision.")
    dead_letters_topic: str = env("KAFKA_TOPIC_DEAD_LETTERS", "provisioning.dead-letters",
                                  doc="Dead letters of every stage, with the reason in headers.")
    connector_offsets_topic: str = env("KAFKA_TOPIC_CONNECTOR_OFFSETS",
                                       "salesforce.connector-offsets",
                                       doc="Compacted replay-id store of the source connector.")
    replay_gaps_topic: str = env("KAFKA_TOPIC_REPLAY_GAPS", "salesforce.replay-gaps",
                                 doc="Replay gaps: a stored replay id Salesforce refused, "
                                     "or a LATEST resubscribe before any position was "
                                     "committed.")
    partitions: int = env("KAFKA_PARTITIONS", 6, parse=parse_positive_int,
                          doc="Partitions of the requests and outcomes topics when they are "
                              "created. Must be the requests topic's count: the worker "
                              "refuses to start (exit 64) when the requests topic exists with "
                              "another count; its changelog topics take the requests topic's.")
    replication_factor: int = env("KAFKA_REPLICATION_FACTOR", 1, parse=parse_positive_int,
                                  doc="Replication factor of every topic.")
    min_insync_replicas: int = env("KAFKA_MIN_INSYNC_REPLICAS", 1, parse=parse_positive_int,
                                   doc="min.insync.replicas of every topic. Unset: 2 when "
                                       "KAFKA_REPLICATION_FACTOR is 3 or more (an acks=all "
                                       "write then survives a leader's loss), else 1.")
    requests_retention_ms: int = env("KAFKA_REQUESTS_RETENTION_MS", 30 * 24 * 3600 * 1000,
                                     parse=int,
                                     doc="Retention of the requests topic in ms "
                                         "(default 30 days; -1 keeps forever; at least "
                                         "72 hours, Salesforce's own retention). Its "
                                         "segments roll daily: an event is deleted at most "
                                         "a day after its retention.")
    outcomes_retention_ms: int = env("KAFKA_OUTCOMES_RETENTION_MS", 365 * 24 * 3600 * 1000,
                                     parse=int, doc="Retention of outcomes and dead letters in ms.")
    schema_registry_url: str = env("SCHEMA_REGISTRY_URL", "", parse=parse_http_url,
                                   doc="Optional Confluent-compatible schema registry; when set, "
                                       "every process reads Confluent-format records through "
                                       "it and (unless `AVRO_WIRE_FORMAT=PLAIN`) writes that "
                                       "format (`make up` sets it to its registry emulator in "
                                       "sandbox mode). Keep it set while any topic still holds "
                                       "Confluent records: without it they cannot be decoded.")
    avro_wire_format: str = env("AVRO_WIRE_FORMAT", "AUTO",
                                parse=choice("AUTO", "CONFLUENT", "PLAIN"),
                                doc="Format the processes write: CONFLUENT (needs "
                                    "`SCHEMA_REGISTRY_URL`), PLAIN (Avro with the "
                                    "`sfprov.schema` header), or AUTO: CONFLUENT when "
                                    "`SCHEMA_REGISTRY_URL` is set, else PLAIN. Reading does not "
                                    "depend on it: with `SCHEMA_REGISTRY_URL` set, Confluent "
                                    "records are read with either format — PLAIN with the URL "
                                    "kept is the way back from a registry (README, *Schema "
                                    "registry*).")
    schema_registry_username: str = env("SCHEMA_REGISTRY_USERNAME", "",
                                        doc="Basic-auth user of the schema registry (e.g. a "
                                            "Confluent Cloud API key).")
    schema_registry_password: Secret = env("SCHEMA_REGISTRY_PASSWORD", _secret_default(),
                                           parse=str, secret=True,
                                           doc="Basic-auth password of the schema registry.")
    schema_registry_ca_location: str = env("SCHEMA_REGISTRY_CA_LOCATION", "",
                                           doc="PEM CA bundle to trust for an HTTPS registry "
                                               "(default: the system's).")
    # -- connection security: every client (confluent-kafka and faust/aiokafka) is built
    # from these by common.connection.KafkaConnection
    security_protocol: str = env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
                                 parse=choice(*SECURITY_PROTOCOLS),
                                 doc="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str = env("KAFKA_SASL_MECHANISM", "PLAIN", parse=choice(*SASL_MECHANISMS),
                              doc="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*).")
    sasl_username: str = env("KAFKA_SASL_USERNAME", "",
                             doc="SASL user: the process's principal (with SASL_*).")
    sasl_password: Secret = env("KAFKA_SASL_PASSWORD", _secret_default(), parse=str,
                                secret=True, doc="SASL password (with SASL_*).")
    ssl_ca_location: str = env("KAFKA_SSL_CA_LOCATION", "",
                               doc="PEM CA bundle that signed the brokers' certificates "
                                   "(with SSL/SASL_SSL; default: the system's).")
    ssl_certificate_location: str = env("KAFKA_SSL_CERTIFICATE_LOCATION", "",
                                        doc="PEM client certificate, for mutual TLS.")
    ssl_key_location: str = env("KAFKA_SSL_KEY_LOCATION", "",
                                doc="PEM private key of the client certificate.")
    ssl_key_password: Secret = env("KAFKA_SSL_KEY_PASSWORD", _secret_default(), parse=str,
                                   secret=True,
                                   doc="Password of an encrypted client key.")
    ssl_endpoint_identification: bool = env("KAFKA_SSL_ENDPOINT_IDENTIFICATION", True,
                                            parse=parse_bool,
                                            doc="Check that the broker's certificate names "
                                                "the host connected to (keep it on).")

    @classmethod
    def _derive(cls, values: dict[str, Any]) -> None:
        # with 3 replicas and min.insync.replicas 1 an acks=all write may be acknowledged by
        # the leader alone, and lost with it: a committed request or outcome gone
        if "min_insync_replicas" not in values:
            values["min_insync_replicas"] = 2 if values.get("replication_factor", 1) >= 3 else 1

    def validate(self) -> None:
        if self.requests_retention_ms != -1 and self.requests_retention_ms < 72 * 3_600_000:
            # the topic is what lets the pipeline replay after Salesforce has forgotten its
            # events (72 h): keeping them less would lose what Salesforce still holds
            raise ConfigError("KAFKA_REQUESTS_RETENTION_MS: must be -1 or at least 72 hours "
                              "(259200000), Salesforce's own retention of the events")
        if self.outcomes_retention_ms != -1 and self.outcomes_retention_ms < 3_600_000:
            raise ConfigError("KAFKA_OUTCOMES_RETENTION_MS: must be -1 or at least one hour "
                              "(outcomes and dead letters the sink and operators still read)")
        if self.min_insync_replicas > self.replication_factor:
            raise ConfigError(f"KAFKA_MIN_INSYNC_REPLICAS: at most KAFKA_REPLICATION_FACTOR "
                              f"({self.replication_factor}): no acks=all write could succeed")
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not self.sasl_username:
            raise ConfigError(f"KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL="
                              f"{self.security_protocol}")
        if sasl and not self.sasl_password:
            raise ConfigError(f"KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL="
                              f"{self.security_protocol}")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            missing = ("KAFKA_SSL_KEY_LOCATION" if self.ssl_certificate_location
                       else "KAFKA_SSL_CERTIFICATE_LOCATION")
            raise ConfigError(f"{missing}: a client certificate needs both "
                              "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION")
        for name, path in (("KAFKA_SSL_CA_LOCATION", self.ssl_ca_location),
                           ("KAFKA_SSL_CERTIFICATE_LOCATION", self.ssl_certificate_location),
                           ("KAFKA_SSL_KEY_LOCATION", self.ssl_key_location),
                           ("SCHEMA_REGISTRY_CA_LOCATION", self.schema_registry_ca_location)):
            if path:
                _check_file(name, path)
        self._check_protocol_uses_its_settings()
        self._check_tls_material()
        if self.schema_registry_password and not self.schema_registry_username:
            raise ConfigError("SCHEMA_REGISTRY_USERNAME: required with "
                              "SCHEMA_REGISTRY_PASSWORD")
        if self.avro_wire_format == "CONFLUENT" and not self.schema_registry_url:
            raise ConfigError("SCHEMA_REGISTRY_URL: required with AVRO_WIRE_FORMAT=CONFLUENT")
        self._check_topic_names()

    def _check_tls_material(self) -> None:
        """Load the TLS files as the clients will: librdkafka loads them when a client is
        made, and its error (a wrong key password, a key not the certificate's, a CA file
        that is not PEM) was a traceback and exit 1 — restarted for ever, no line naming
        the setting."""
        import ssl

        for name, path in (("KAFKA_SSL_CA_LOCATION", self.ssl_ca_location),
                           ("SCHEMA_REGISTRY_CA_LOCATION", self.schema_registry_ca_location)):
            if path:
                try:
                    ssl.create_default_context(cafile=path)
                except (ssl.SSLError, ValueError) as exc:
                    raise ConfigError(f"{name}: {path} holds no PEM certificate the TLS "
                                      f"library can read ({exc})") from None
        if self.ssl_certificate_location and self.ssl_key_location:
            password = self.ssl_key_password.reveal() or None
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    self.ssl_certificate_location, self.ssl_key_location,
                    password=password if password is not None else _no_password)
            except _KeyPasswordNeeded:
                raise ConfigError("KAFKA_SSL_KEY_PASSWORD: the key in KAFKA_SSL_KEY_LOCATION "
                                  f"({self.ssl_key_location}) is encrypted: its password is "
                                  "required") from None
            except ssl.SSLError as exc:
                if password is not None and not _decrypts(self.ssl_key_location, password):
                    raise ConfigError("KAFKA_SSL_KEY_PASSWORD: it does not decrypt the key in "
                                      f"KAFKA_SSL_KEY_LOCATION ({self.ssl_key_location})"
                                      ) from None
                if "mismatch" in str(exc).lower() or "no certificate assigned" in \
                        str(exc).lower().replace("_", " "):  # a key of another type
                    raise ConfigError("KAFKA_SSL_KEY_LOCATION: the key "
                                      f"({self.ssl_key_location}) is not the one of the "
                                      "certificate in KAFKA_SSL_CERTIFICATE_LOCATION "
                                      f"({self.ssl_certificate_location})") from None
                raise ConfigError("KAFKA_SSL_CERTIFICATE_LOCATION/KAFKA_SSL_KEY_LOCATION: "
                                  f"{self.ssl_certificate_location} and "
                                  f"{self.ssl_key_location} are not a PEM certificate and its "
                                  f"key the TLS library can read ({exc})") from None

    def _check_protocol_uses_its_settings(self) -> None:
        """SASL credentials or TLS files the protocol does not use were dropped without a
        word: the process connected in plain text (or was refused), its operator believing
        it authenticated and encrypted."""
        protocol = self.security_protocol
        if not protocol.startswith("SASL_"):
            given = [name for name, value in (("KAFKA_SASL_USERNAME", self.sasl_username),
                                              ("KAFKA_SASL_PASSWORD", self.sasl_password),
                                              ("KAFKA_SASL_MECHANISM",
                                               self.sasl_mechanism != "PLAIN")) if value]
            if given:
                raise ConfigError(f"KAFKA_SECURITY_PROTOCOL: {' and '.join(given)} set, but "
                                  f"{protocol} uses no SASL: set it to SASL_SSL or "
                                  f"SASL_PLAINTEXT (or unset {' and '.join(given)})")
        if protocol not in ("SSL", "SASL_SSL"):
            given = [name for name, value in (
                ("KAFKA_SSL_CA_LOCATION", self.ssl_ca_location),
                ("KAFKA_SSL_CERTIFICATE_LOCATION", self.ssl_certificate_location),
                ("KAFKA_SSL_KEY_LOCATION", self.ssl_key_location),
                ("KAFKA_SSL_KEY_PASSWORD", self.ssl_key_password)) if value]
            if given:
                raise ConfigError(f"KAFKA_SECURITY_PROTOCOL: {' and '.join(given)} set, but "
                                  f"{protocol} uses no TLS: set it to SSL or SASL_SSL (or "
                                  f"unset {' and '.join(given)})")

    def _check_topic_names(self) -> None:
        """A name the broker refuses (a space, a slash, too long) failed at the first
        create with INVALID_TOPIC: exit 1, restarted for ever."""
        prefix = self.topic_prefix
        if prefix and not TOPIC_CHARS.fullmatch(prefix):
            raise ConfigError(f"KAFKA_TOPIC_PREFIX: {prefix!r} begins every topic name, which "
                              "may hold only letters, digits, '.', '_' and '-'")
        for name, topic in (("KAFKA_TOPIC_REQUESTS", self.requests_topic),
                            ("KAFKA_TOPIC_OUTCOMES", self.outcomes_topic),
                            ("KAFKA_TOPIC_DEAD_LETTERS", self.dead_letters_topic),
                            ("KAFKA_TOPIC_CONNECTOR_OFFSETS", self.connector_offsets_topic),
                            ("KAFKA_TOPIC_REPLAY_GAPS", self.replay_gaps_topic)):
            if (not TOPIC_CHARS.fullmatch(topic) or len(topic) > TOPIC_MAX_LENGTH
                    or prefix + topic in (".", "..")):
                raise ConfigError(f"{name}: not a topic name Kafka accepts: letters, digits, "
                                  f"'.', '_' and '-', at most {TOPIC_MAX_LENGTH} characters, "
                                  f"not '.' or '..' (got {topic[:80]!r})")
            if len(prefix + topic) > TOPIC_MAX_LENGTH:
                raise ConfigError(f"KAFKA_TOPIC_PREFIX: with it {name} is "
                                  f"{len(prefix + topic)} characters long, Kafka allows "
                                  f"{TOPIC_MAX_LENGTH}")

    @property
    def writes_confluent(self) -> bool:
        """Values are written in the Confluent wire format (``AVRO_WIRE_FORMAT``); reading
        through the registry depends on ``SCHEMA_REGISTRY_URL`` alone."""
        if self.avro_wire_format == "AUTO":
            return bool(self.schema_registry_url)
        return self.avro_wire_format == "CONFLUENT"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def requests(self) -> str:
        return self.topic(self.requests_topic)

    @property
    def outcomes(self) -> str:
        return self.topic(self.outcomes_topic)

    @property
    def dead_letters(self) -> str:
        return self.topic(self.dead_letters_topic)

    @property
    def connector_offsets(self) -> str:
        return self.topic(self.connector_offsets_topic)

    @property
    def replay_gaps(self) -> str:
        return self.topic(self.replay_gaps_topic)


_API_VERSION = re.compile(r"\d+\.\d+")


def parse_api_version(raw: str) -> str:
    """``SF_API_VERSION``: ``62.0``. The paths add the ``v`` (``/services/data/v62.0/``):
    ``v62.0`` built ``/vv62.0/``, a 404 on every call."""
    value = raw.strip()
    if not _API_VERSION.fullmatch(value):
        raise ValueError(f"expected the version number alone, e.g. 62.0, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class SalesforceSettings(_Section):
    login_url: str = env("SF_LOGIN_URL", "https://login.salesforce.com",
                         parse=parse_http_url,
                         doc="OAuth login URL (login/test.salesforce.com, My Domain, or the "
                             "sandbox). Credentials in it (https://user:password@host, "
                             "percent-encoded, for a gateway in front of it) are sent as Basic authentication and "
                             "kept out of the JWT `aud` and of every message.")
    client_id: str = env("SF_CLIENT_ID", doc="Connected app consumer key (JWT `iss`).")
    username: str = env("SF_USERNAME", doc="Integration user (JWT `sub`).")
    private_key_path: str = env("SF_PRIVATE_KEY_PATH", "",
                                doc="PEM private key of the connected app's certificate (required "
                                    "unless SF_PRIVATE_KEY_BASE64 is set).")
    private_key_base64: Secret = env("SF_PRIVATE_KEY_BASE64", _secret_default(),
                                     parse=parse_base64_key, secret=True,
                                     doc="The same key, base64-encoded (instead of the path). "
                                         "One line in an env file (`base64 -w0 key.pem`): "
                                         "line breaks, as `base64` wraps it, are fine only "
                                         "in a real environment variable.")
    audience: str = env("SF_AUDIENCE", "",
                        doc="JWT `aud`; defaults to SF_LOGIN_URL (without its credentials), "
                            "or for a My Domain SF_LOGIN_URL to https://login.salesforce.com "
                            "(https://test.salesforce.com for a sandbox's or scratch org's "
                            "My Domain): Salesforce refuses a My Domain audience.")
    api_version: str = env("SF_API_VERSION", "62.0", parse=parse_api_version,
                           doc="REST API version, as in /services/data/v62.0/: the number "
                               "alone (62.0).")
    ca_bundle: str = env("SF_CA_BUNDLE", "",
                         doc="Extra CA bundle to trust for Salesforce HTTPS/gRPC "
                             "(the sandbox's certificate; PEM, checked at start).")
    timeout_s: float = env("SF_TIMEOUT_S", 30.0, parse=parse_positive_float,
                           doc="Timeout of one Salesforce REST call or login, seconds: "
                               "the whole exchange, from connecting to the answer's last "
                               "byte (an answer that keeps trickling in, its headers as its "
                               "body, 100 Continue included, is cut there, retried as an "
                               "outage).")

    def validate(self) -> None:
        if not self.private_key_path and not self.private_key_base64:
            raise ConfigError("SF_PRIVATE_KEY_PATH: required setting is not set "
                              "(or set SF_PRIVATE_KEY_BASE64)")
        if self.private_key_path:
            _check_file("SF_PRIVATE_KEY_PATH", self.private_key_path,
                        "; to give the key itself, set SF_PRIVATE_KEY_BASE64 to its base64 "
                        "(base64 -w0 key.pem) and unset SF_PRIVATE_KEY_PATH")
        self._check_key()
        self._check_ca_bundle()

    def _check_ca_bundle(self) -> None:
        """A missing or unreadable bundle raised in SalesforceClient: a traceback, exit 1,
        restarted for ever."""
        if not self.ca_bundle:
            return
        _check_file("SF_CA_BUNDLE", self.ca_bundle)
        import ssl

        try:
            ssl.create_default_context().load_verify_locations(cafile=self.ca_bundle)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = (getattr(exc, "reason", None) or getattr(exc, "strerror", None)
                      or type(exc).__name__)
            raise ConfigError(f"SF_CA_BUNDLE: {self.ca_bundle} holds no usable PEM "
                              f"certificate ({reason})") from None

    def _check_key(self) -> None:
        """The key must sign the RS256 assertion: a certificate or an encrypted key passed
        before, and every login failed later with an error no retry mends (events
        dead-lettered, the sink crash-looping). The message never holds key material."""
        # here, not at the top: every process imports this module, not every one needs it
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        if self.private_key_base64:
            name, what = "SF_PRIVATE_KEY_BASE64", "does not decode to"
        else:
            name, what = "SF_PRIVATE_KEY_PATH", f"{self.private_key_path} is not"
        try:
            key = load_pem_private_key(self.private_key().reveal().encode(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"{name}: {what} an unencrypted PEM private key (a certificate? "
                              "an encrypted key?)") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{name}: {what} an RSA private key (the JWT is signed RS256)")

    def private_key(self) -> Secret:
        if self.private_key_base64:
            return self.private_key_base64
        return Secret(Path(self.private_key_path).read_text())

    @property
    def jwt_audience(self) -> str:
        """``aud`` of the JWT: ``SF_AUDIENCE``, else the login server's own name — for a My
        Domain login URL (``*.my.salesforce.com``) ``https://login.salesforce.com``, or
        ``https://test.salesforce.com`` for a sandbox's (``….sandbox.my.salesforce.com``,
        ``name--sandbox.my.salesforce.com``, a scratch org's): Salesforce refuses a My
        Domain audience ("audience is invalid") although the token is asked of the My
        Domain. Any other URL (an emulator, a gateway) is its own audience, without the
        credentials a gateway in front of Salesforce takes (sent as Basic authentication,
        never in the signed assertion)."""
        if self.audience:
            return self.audience.rstrip("/")
        url = split_userinfo(self.login_url)[0].rstrip("/")
        host = (urlsplit(url).hostname or "").lower()
        if host.endswith(".my.salesforce.com"):
            first = host.split(".", 1)[0]
            sandbox = "--" in first or host.endswith(
                (".sandbox.my.salesforce.com", ".scratch.my.salesforce.com"))
            return "https://test.salesforce.com" if sandbox else "https://login.salesforce.com"
        return url


#: gRPC takes a channel's durations in ms as a C int: the most it takes (24.8 days)
_GRPC_MAX_MS = 2**31 - 1


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class ConnectorSettings(_Section):
    events_enabled: bool = env("SF_EVENTS_ENABLED", True, parse=parse_bool,
                               doc="Subscribe to platform events at all: false makes the connector exit 0 at "
                                   "start (no subscription, no gap re-requests) and `make up` "
                                   "leave it out.")
    channel: str = env("SF_PROVISION_EVENT_CHANNEL", "/event/OrderProvisionRequested__e",
                       doc="Pub/Sub topic of the provisioning event.")
    replay: str = env("SF_EVENTS_REPLAY", "LATEST", parse=choice("LATEST", "EARLIEST"),
                      doc="Where to start when no position is stored in Kafka.")
    invalid_replay: str = env("SF_EVENTS_INVALID_REPLAY", "EARLIEST",
                              parse=choice("EARLIEST", "LATEST", "FAIL"),
                              doc="Policy when Salesforce refuses the stored replay id.")
    pubsub_endpoint: str = env("SF_PUBSUB_ENDPOINT", "api.pubsub.salesforce.com:7443",
                               parse=parse_host_port,
                               doc="Pub/Sub API gRPC endpoint host:port (no scheme; IPv6 as "
                                   "[::1]:7443).")
    pubsub_tls: bool = env("SF_PUBSUB_TLS", True, parse=parse_bool,
                           doc="TLS to the Pub/Sub endpoint (false only for the sandbox).")
    num_requested: int = env("SF_PUBSUB_NUM_REQUESTED", 100, parse=parse_positive_int,
                             doc="Events kept requested (flow control), at most 100.")
    keepalive_timeout_s: float = env("SF_PUBSUB_STALL_TIMEOUT_S", 300.0, parse=parse_positive_float,
                                     doc="Watchdog: resubscribe when nothing (events or "
                                         "keepalive) arrived for this long. Keep it above "
                                         "270 s: Salesforce may leave a quiet stream up to "
                                         "270 s without a keepalive, and a watchdog that "
                                         "fires first stores no keepalive position (at or "
                                         "below, a warning at start).")
    keepalive_commit_interval_s: float = env("SF_PUBSUB_KEEPALIVE_COMMIT_S", 60.0,
                                             parse=parse_non_negative_float,
                                             doc="Throttle for committing keepalive "
                                                 "positions (at most one per interval; the "
                                                 "first one interval after the start — at "
                                                 "once while no position is stored).")
    name: str = env("CONNECTOR_NAME", "sfprov-connector",
                    doc="Connector name: part of its transactional.id and of its offsets key.")
    http_port: int = env("CONNECTOR_HTTP_PORT", 9101, parse=parse_port,
                         doc="Port of the connector's /metrics and /healthz (0 = off).")
    http_host: str = env("CONNECTOR_HTTP_HOST", "127.0.0.1",
                         doc="Address the connector's /metrics and /healthz listen on "
                             "(0.0.0.0 in a container, so a published port "
                             "reaches them).")
    max_batch: int = env("CONNECTOR_MAX_BATCH", 500, parse=parse_positive_int,
                         doc="Events per Kafka transaction (with their offset record): a "
                             "transaction ends once this many events are in it; one fetch "
                             "response (≤ 100 events) is never split, so up to 99 more.")
    max_buffered: int = env("CONNECTOR_MAX_BUFFERED", 1000, parse=parse_positive_int,
                            doc="Events received but not yet written, beyond which no more "
                                "are requested from Salesforce (backpressure); a value below "
                                "SF_PUBSUB_NUM_REQUESTED is raised to it.")
    transaction_timeout_s: float = env("CONNECTOR_TRANSACTION_TIMEOUT_S", 60.0,
                                       parse=parse_float,
                                       doc="Kafka transaction.timeout.ms, in seconds (1–900): "
                                           "a transaction open longer (a paused process) is "
                                           "aborted by the broker. One above the broker's "
                                           "transaction.max.timeout.ms (900 s by default) is "
                                           "refused at start: exit 64.")
    backoff_initial_s: float = env("SF_PUBSUB_BACKOFF_INITIAL_S", 0.5, parse=parse_positive_float,
                                   doc="First resubscribe delay after an error (doubles, "
                                       "jittered).")
    backoff_max_s: float = env("SF_PUBSUB_BACKOFF_MAX_S", 30.0, parse=parse_positive_float,
                               doc="Cap of the resubscribe backoff.")
    limit_backoff_s: float = env("SF_PUBSUB_LIMIT_BACKOFF_S", 300.0, parse=parse_positive_float,
                                 doc="Wait after a delivery-limit or concurrent-client error.")
    grpc_keepalive_s: float = env("SF_PUBSUB_GRPC_KEEPALIVE_S", 360.0,
                                  parse=parse_positive_float,
                                  doc="gRPC HTTP/2 ping interval while a subscription is open "
                                      "(finds half-open connections). Keep it above 300: a "
                                      "gRPC server's default policy ends a connection pinged "
                                      "more often than every 5 minutes without data. At most "
                                      "2147483.647 (gRPC takes it in ms as a C int).")
    reconcile_interval_s: float = env("CONNECTOR_RECONCILE_INTERVAL_S", 600.0,
                                      parse=parse_non_negative_float,
                                      doc="How often the connector re-requests Orders left "
                                          "Activating with no request or no outcome (0 = "
                                          "never; a recorded replay gap still triggers a "
                                          "pass).")
    reconcile_older_than_s: float = env("CONNECTOR_RECONCILE_OLDER_THAN_S", 900.0,
                                        parse=parse_non_negative_float,
                                        doc="The periodic pass re-requests only Orders "
                                            "Activating (unchanged) for at least this long "
                                            "(0 to 315360000 = 10 years).")
    reconcile_max_per_pass: int = env("CONNECTOR_RECONCILE_MAX_PER_PASS", 100,
                                      parse=parse_positive_int,
                                      doc="Most Orders one reconciliation pass re-requests "
                                          "(the rest wait for the next pass).")

    def validate(self) -> None:
        if self.num_requested > 100:
            raise ConfigError("SF_PUBSUB_NUM_REQUESTED: at most 100 (Pub/Sub API limit)")
        # librdkafka's floor is 1 s; brokers refuse more than transaction.max.timeout.ms
        # (15 min by default) at init_transactions.
        if not 1.0 <= self.transaction_timeout_s <= 900.0:
            raise ConfigError("CONNECTOR_TRANSACTION_TIMEOUT_S: between 1 and 900 seconds")
        if not 0 <= self.reconcile_older_than_s <= RECONCILE_OLDER_THAN_MAX_S:
            raise ConfigError(f"CONNECTOR_RECONCILE_OLDER_THAN_S: at most "
                              f"{RECONCILE_OLDER_THAN_MAX_S:.0f} s (10 years) and not "
                              f"negative, got {self.reconcile_older_than_s:g}")
        if int(self.grpc_keepalive_s * 1000) > _GRPC_MAX_MS:
            # as connectors.pubsub.client.channel_options converts it: gRPC's OverflowError
            # making the channel was a traceback, exit 1, restarted for ever
            raise ConfigError(f"SF_PUBSUB_GRPC_KEEPALIVE_S: at most {_GRPC_MAX_MS / 1000} s "
                              f"(gRPC takes it in ms as a C int), got "
                              f"{self.grpc_keepalive_s:.10g}")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ConfigError(f"SF_PUBSUB_BACKOFF_INITIAL_S: at most SF_PUBSUB_BACKOFF_MAX_S "
                              f"({self.backoff_max_s:g})")
        if self.keepalive_timeout_s <= PUBSUB_KEEPALIVE_S:
            # a warning, not a refusal: tests against the sandbox (keepalives every second)
            # use a watchdog of a few seconds on purpose
            log.warning("SF_PUBSUB_STALL_TIMEOUT_S: %g s is not above Salesforce's keepalive "
                        "interval (a keepalive at least every %g s): a quiet subscription may "
                        "be resubscribed before its keepalive arrives, so no keepalive "
                        "position is stored (fine only against a sandbox sending keepalives "
                        "sooner)",
                        self.keepalive_timeout_s, PUBSUB_KEEPALIVE_S)


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class WhmcsSettings(_Section):
    api_url: str = env("WHMCS_API_URL", parse=parse_plain_http_url,
                       doc="Full URL of WHMCS includes/api.php (no `user:password@` in it: "
                           "WHMCS authenticates with WHMCS_API_IDENTIFIER and "
                           "WHMCS_API_SECRET).")
    identifier: Secret = env("WHMCS_API_IDENTIFIER", parse=str, secret=True,
                             doc="WHMCS API credential identifier.")
    secret: Secret = env("WHMCS_API_SECRET", parse=str, secret=True,
                         doc="WHMCS API credential secret.")
    access_key: Secret = env("WHMCS_API_ACCESS_KEY", _secret_default(), parse=str, secret=True,
                             doc="Optional API access key (bypasses the IP allow-list).")
    payment_method: str = env("WHMCS_PAYMENT_METHOD", "mailin",
                              doc="Payment gateway for AddOrder.")
    no_invoice: bool = env("WHMCS_NO_INVOICE", False, parse=parse_bool,
                           doc="AddOrder noinvoice.")
    no_email: bool = env("WHMCS_NO_EMAIL", True, parse=parse_bool, doc="AddOrder noemail.")
    autosetup: bool = env("WHMCS_AUTOSETUP", True, parse=parse_bool,
                          doc="AcceptOrder autosetup (run the provisioning module).")
    timeout_s: float = env("WHMCS_TIMEOUT_S", 15.0, parse=parse_positive_float,
                           doc="Timeout of one WHMCS call, seconds: no answer byte for this "
                               "long ends it, and so does an answer not whole this long after "
                               "the request was written (a trickled answer, repeated 102 "
                               "Processing); connecting may take up to 5 s more.")


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class WorkerSettings(_Section):
    app_id: str = env("WORKER_APP_ID", "sfprov-worker",
                      doc="Faust app id (consumer group and changelog topic prefix): "
                          "letters, digits, '.', '_' and '-'.")
    store: str = env("WORKER_STORE", "rocksdb://", parse=parse_store_url,
                     doc="Faust table store (rocksdb:// or memory:// for tests).")
    max_in_flight: int = env("WORKER_MAX_IN_FLIGHT", 500, parse=parse_positive_int,
                             doc="Events taken in and not yet finished, at most "
                                 "(backpressure: beyond it no more are fetched).")
    partition_window: int = env("WORKER_PARTITION_WINDOW", 10_000, parse=parse_positive_int,
                                doc="A partition whose uncommitted span (offsets behind an "
                                    "unfinished event, e.g. a hung WHMCS call) grows past "
                                    "this is paused until it halves (memory bound).")
    guard_batch: int = env("WORKER_GUARD_BATCH", 200, parse=parse_positive_int,
                           doc="Orders read from Salesforce in one guard query, at most.")
    guard_linger_s: float = env("WORKER_GUARD_LINGER_S", 0.05, parse=parse_float,
                                doc="How long an Order waits for others to share its guard "
                                    "query.")
    guard_linger_busy_s: float = env(
        "WORKER_GUARD_LINGER_BUSY_S", 0.2, parse=parse_float,
        doc="The same wait while the worker has a backlog (200 or more Orders in flight): "
            "a burst shares fewer, larger queries (Salesforce API calls).")
    guard_max_age_s: float = env(
        "WORKER_GUARD_MAX_AGE_S", 5.0, parse=parse_non_negative_float,
        doc="How old the guard read (the Order still Activating, no WHMCS_Order_Id__c) may "
            "be when an Order's AddOrder goes out, seconds: an older one — the Order waited "
            "for a WHMCS slot behind a backlog or slow WHMCS — is read again first, and so "
            "is one read before a wait (for an earlier AddOrder to settle, a retry, refused "
            "WHMCS access, the ownership lease). Set back from Activating meanwhile, the "
            "Order ends Skipped with no AddOrder. Those reads share queries as the first "
            "reads do. 0 = read again before every AddOrder (before its wait for a "
            "WHMCS slot and again with the slot held).")
    whmcs_parallelism: int = env("WORKER_WHMCS_PARALLELISM", 16, parse=parse_positive_int,
                                 doc="WHMCS calls in flight at once (each Order's AddOrder "
                                     "and AcceptOrder take one slot each, in turn).")
    commit_interval_s: float = env("WORKER_COMMIT_INTERVAL_S", 1.0, parse=parse_float,
                                   doc="How often the finished prefix of each requests "
                                       "partition is committed.")
    drain_timeout_s: float = env("WORKER_DRAIN_TIMEOUT_S", 20.0, parse=parse_non_negative_float,
                                 doc="On SIGTERM, how long events in flight may take to "
                                     "finish before the worker stops (the rest is "
                                     "redelivered).")
    dedupe_ttl_days: float = env("WORKER_DEDUPE_TTL_DAYS", 35.0, parse=parse_positive_float,
                                 doc="How long an IdemKey (from its newest event) and a "
                                     "finished intent are remembered (≥ requests retention plus a day and an hour, else "
                                     "the worker "
                                     "warns at start: a replay of an older event may get a "
                                     "second outcome record); an intent that names a WHMCS "
                                     "order, or whose AddOrder may have landed, is kept "
                                     "(about 1 KB per provisioned Order). An Order's memory "
                                     "keeps at most its 200 newest IdemKeys (256 KiB); older "
                                     "ones whose outcome was sent are forgotten early.")
    retry_deadline_s: float = env("WORKER_RETRY_DEADLINE_S", 120.0, parse=parse_positive_float,
                                  doc="A run of transient WHMCS errors is retried for this "
                                      "long, counted from its first error (the waits before "
                                      "it, and the ownership-lease, refused-access and "
                                      "Salesforce guard-read waits during it, do not count), "
                                      "then the Order is Failed "
                                      "(WHMCS_UNAVAILABLE); Salesforce's have no deadline "
                                      "(the Order waits).")
    http_port: int = env("WORKER_HTTP_PORT", 9102, parse=parse_port,
                         doc="Port of the worker's web server (/metrics, /healthz; 0 = off).")
    http_host: str = env("WORKER_HTTP_HOST", "127.0.0.1",
                         doc="Address the worker's /metrics and /healthz listen on "
                             "(0.0.0.0 in a container, so a published port "
                             "reaches them).")
    lookup_grace_s: float = env("WORKER_LOOKUP_GRACE_S", 2.0, parse=parse_float,
                                doc="A lookup for an order an earlier attempt may have "
                                    "created waits until that attempt's last possible "
                                    "AddOrder is WHMCS_TIMEOUT_S plus this old (covers "
                                    "WHMCS committing late and clock skew between workers; "
                                    "≥ 0).")
    recovery_after_s: float = env("WORKER_RECOVERY_AFTER_S", 600.0, parse=parse_non_negative_float,
                                  doc="A pending intent older than this, with no event in "
                                      "flight and its event committed past by the group, is "
                                      "recovered by the sweep (WHMCS lookup, then an "
                                      "outcome); an unsent outcome older than this, with no "
                                      "event in flight, is sent again. An Order with an "
                                      "event in flight is left to a later sweep, which never "
                                      "waits for it.")
    sweep_interval_s: float = env("WORKER_SWEEP_INTERVAL_S", 60.0, parse=parse_float,
                                  doc="How often the recovery sweep runs, at least every "
                                      "1 s (dedupe expiry runs at its full scans: after a "
                                      "new assignment and every 6 hours).")
    standby_replicas: int = env("WORKER_STANDBY_REPLICAS", 0, parse=parse_non_negative_int,
                                doc="Faust table standby replicas (0: a takeover restores "
                                    "from the changelog).")
    session_timeout_s: float = env("WORKER_SESSION_TIMEOUT_S", 30.0, parse=parse_positive_float,
                                   doc="Consumer group session timeout: how soon a dead "
                                       "worker's partitions move to another (the group's "
                                       "rebalance timeout is at least this, so the "
                                       "ownership lease never outlasts membership). "
                                       "Outside Kafka's default bounds (6 s to 30 min: the "
                                       "brokers' group.min/max.session.timeout.ms) the "
                                       "worker warns at start: brokers keeping them refuse "
                                       "the join, and it then waits without a word.")
    stall_timeout_s: float = env("WORKER_STALL_TIMEOUT_S", 120.0, parse=parse_non_negative_float,
                                 doc="When records wait on this worker's partitions and no "
                                     "batch ran for half this long, seek back to the "
                                     "committed offsets; after this long, exit (code 75, to "
                                     "be restarted). 0 = off.")
    instance_id: str = env("WORKER_INSTANCE_ID", "",
                           doc="Static group membership id (a restarted worker with the "
                               "same id takes its partitions back without a rebalance). "
                               "Unique per live process, and a frozen one counts as live: "
                               "set it only where the old process is certainly gone before "
                               "its replacement starts (README, The ownership lease).")
    lease_margin_s: float = env("WORKER_LEASE_MARGIN_S", 0.0, parse=parse_float,
                                doc="Ownership lease: the worker writes to WHMCS only while "
                                    "its last accepted group heartbeat is younger than the "
                                    "session timeout minus this margin (0 = a third of "
                                    "WORKER_SESSION_TIMEOUT_S). That lease must last at "
                                    "least a heartbeat interval (min(3 s, a third of the "
                                    "session timeout)) plus 1 s, an intent's renewal "
                                    "headroom: 4 s with a session of 9 s or more.")
    faust_log_level: str = env("WORKER_FAUST_LOG_LEVEL", "",
                               parse=choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                               doc="Log level of faust's, mode's and aiokafka's loggers "
                                   "(DEBUG, INFO, WARNING, ERROR or CRITICAL; INFO shows "
                                   "rebalances and table recovery). Unset: LOG_LEVEL.")
    event_loop: str = env("WORKER_EVENT_LOOP", "UVLOOP", parse=choice("UVLOOP", "ASYNCIO"),
                          doc="The worker's event loop: uvloop (libuv; ~10 % less CPU per "
                              "Order, docs/decisions/0010) or Python's own asyncio loop.")
    ready_grace_s: float = env("WORKER_READY_GRACE_S", 60.0, parse=parse_float,
                               doc="How long Salesforce queries must keep failing, WHMCS keep "
                                   "refusing the credentials, IP or API role, the group's offsets "
                                   "stay unreadable, or a chunk's decode keep waiting for the "
                                   "schema registry before /readyz answers 503 (a failed "
                                   "call is retried: no reason to take the worker out).")
    intent_lease_s: float = env("WORKER_INTENT_LEASE_S", 10.0, parse=parse_float,
                                doc="How far ahead an intent records that its writer may "
                                    "still send to WHMCS (renewed before a later call); a "
                                    "new owner of the Order waits this out, plus "
                                    "WHMCS_TIMEOUT_S and WORKER_LOOKUP_GRACE_S, before its "
                                    "lookup. At least 2 s: twice the 1 s left at which an "
                                    "intent is renewed.")

    @property
    def lease_margin(self) -> float:
        return self.lease_margin_s or self.session_timeout_s / 3

    @property
    def heartbeat_interval_s(self) -> float:
        """The group heartbeat interval the worker runs with (streams.app)."""
        return min(3.0, self.session_timeout_s / 3)

    def validate(self) -> None:
        # its group and, with the topic prefix, its changelog and leader topics
        # (WORKER_TOPIC_SUFFIXES): a name the broker refused failed at the first create
        longest = max(map(len, WORKER_TOPIC_SUFFIXES))
        if not TOPIC_CHARS.fullmatch(self.app_id) or len(self.app_id) + longest > \
                TOPIC_MAX_LENGTH:
            raise ConfigError(f"WORKER_APP_ID: {self.app_id[:80]!r} names the worker's topics "
                              f"(<app id>{WORKER_TOPIC_SUFFIXES[-1]}): letters, digits, '.', "
                              f"'_' and '-', at most {TOPIC_MAX_LENGTH - longest} characters")
        if self.lease_margin_s < 0:
            raise ConfigError("WORKER_LEASE_MARGIN_S: must be >= 0 (0 = a third of "
                              "WORKER_SESSION_TIMEOUT_S)")
        # The ownership lease (streams.lease) runs to a heartbeat's send time plus
        # session - margin, and is renewed one heartbeat interval later (plus the round
        # trip). Shorter than that interval, it lapses between heartbeats (at about the
        # round trip, it is never valid: every write waits); it must also keep an intent's
        # renewal headroom (streams.lease.RENEW_BEFORE_MS) left, since an intent's lease
        # ends with it, or every WHMCS write renews (flushes) its intent first.
        lease = self.session_timeout_s - self.lease_margin
        floor = self.heartbeat_interval_s + INTENT_RENEW_BEFORE_S
        if lease < floor - 1e-9:
            name = "WORKER_LEASE_MARGIN_S" if self.lease_margin_s else "WORKER_SESSION_TIMEOUT_S"
            raise ConfigError(
                f"{name}: the ownership lease (WORKER_SESSION_TIMEOUT_S minus "
                f"WORKER_LEASE_MARGIN_S, 0 = a third) must last at least {floor:g} s, the "
                f"heartbeat interval ({self.heartbeat_interval_s:g} s) plus the "
                f"{INTENT_RENEW_BEFORE_S:g} s an intent is renewed before; "
                f"{self.session_timeout_s:g} - {self.lease_margin:g} leaves {lease:.4g} s")
        # An intent with less than the headroom left is renewed before a write, to at most
        # this far ahead: at twice the headroom a renewed intent lasts a headroom before the
        # next renewal; below 1 ms (0 ms) every send deadline had already passed.
        if self.intent_lease_s < 2 * INTENT_RENEW_BEFORE_S:
            raise ConfigError(f"WORKER_INTENT_LEASE_S: at least {2 * INTENT_RENEW_BEFORE_S:g} s "
                              f"(twice the {INTENT_RENEW_BEFORE_S:g} s left at which an intent "
                              "is renewed before a WHMCS write), got "
                              f"{self.intent_lease_s:g}")
        if self.lookup_grace_s < 0:
            raise ConfigError("WORKER_LOOKUP_GRACE_S: must be >= 0 (a lookup earlier than "
                              "an old writer's last AddOrder plus WHMCS_TIMEOUT_S can miss it "
                              f"and create a second WHMCS order), got {self.lookup_grace_s:g}")
        if self.sweep_interval_s < 1.0:
            raise ConfigError("WORKER_SWEEP_INTERVAL_S: at least 1 s (shorter runs the "
                              f"recovery sweep back to back, a core busy), got "
                              f"{self.sweep_interval_s:g}")
        if self.ready_grace_s <= 0:
            raise ConfigError("WORKER_READY_GRACE_S: must be positive")
        if self.guard_batch > 200:
            raise ConfigError("WORKER_GUARD_BATCH: at most 200 Orders per guard query")
        if self.guard_linger_s < 0:
            raise ConfigError(f"WORKER_GUARD_LINGER_S: must be >= 0, got "
                              f"{self.guard_linger_s:g}")
        if self.guard_linger_s > self.guard_linger_busy_s:
            raise ConfigError("WORKER_GUARD_LINGER_BUSY_S: at least WORKER_GUARD_LINGER_S "
                              f"({self.guard_linger_s:g})")
        if self.commit_interval_s <= 0:
            raise ConfigError("WORKER_COMMIT_INTERVAL_S: must be positive")


@dataclass(frozen=True, kw_only=True, repr=False)  # _Section.__repr__
class SinkSettings(_Section):
    group_id: str = env("SINK_GROUP_ID", "sfprov-sink", doc="Consumer group of the sink.")
    batch_size: int = env("SINK_BATCH_SIZE", 200, parse=parse_positive_int,
                          doc="Records per sObject Collections call (≤ 200).")
    linger_s: float = env("SINK_LINGER_S", 0.5, parse=parse_non_negative_float,
                          doc="Flush a partial batch at the latest this long after its "
                              "oldest outcome arrived; while a backlog is read, up to 10× "
                              "this (fuller calls).")
    idle_flush_s: float = env("SINK_IDLE_FLUSH_S", 0.05, parse=parse_non_negative_float,
                              doc="Flush a partial batch earlier, once no outcome arrived "
                                  "for this long (the input is idle: waiting would only add "
                                  "latency). 0 = flush partial batches by the linger only.")
    set_order_activated: bool = env("SINK_SET_ORDER_ACTIVATED", False, parse=parse_bool,
                                    doc="Also set Order.Status = 'Activated' when provisioned.")
    http_port: int = env("SINK_HTTP_PORT", 9103, parse=parse_port,
                         doc="Port of the sink's /metrics and /healthz (0 = off).")
    http_host: str = env("SINK_HTTP_HOST", "127.0.0.1",
                         doc="Address the sink's /metrics and /healthz listen on "
                             "(0.0.0.0 in a container, so a published port "
                             "reaches them).")
    retry_backoff_s: float = env("SINK_RETRY_BACKOFF_S", 0.5, parse=parse_positive_float,
                                 doc="First backoff after a transient Salesforce error "
                                     "(doubles per attempt).")
    retry_backoff_max_s: float = env("SINK_RETRY_BACKOFF_MAX_S", 60.0, parse=parse_positive_float,
                                     doc="Cap of the transient-error backoff, seconds.")
    limit_backoff_s: float = env("SINK_LIMIT_BACKOFF_S", 60.0, parse=parse_positive_float,
                                 doc="Pause after REQUEST_LIMIT_EXCEEDED before probing again "
                                     "(doubles while the limit persists, up to 16x).")
    max_attempts: int = env("SINK_MAX_ATTEMPTS", 10, parse=parse_positive_int,
                            doc="A record failing with a transient per-record error "
                                "(UNABLE_TO_LOCK_ROW) this many times is dead-lettered.")
    max_pending: int = env("SINK_MAX_PENDING", 5000, parse=parse_positive_int,
                           doc="Outcomes held unacknowledged before consumption pauses "
                               "(backpressure).")
    drain_timeout_s: float = env("SINK_DRAIN_TIMEOUT_S", 30.0, parse=parse_non_negative_float,
                                 doc="On SIGTERM, how long to keep flushing before exiting, "
                                     "counted from the SIGTERM; no call starts after it, "
                                     "one under way may take SF_TIMEOUT_S more "
                                     "(unacknowledged offsets stay uncommitted).")
    instance_id: str = env("SINK_INSTANCE_ID", "",
                           doc="Optional static group membership (group.instance.id): a "
                               "restarted sink takes its partitions back without a rebalance.")
    session_timeout_ms: int = env("SINK_SESSION_TIMEOUT_MS", 45000, parse=parse_positive_int,
                                  doc="Consumer session.timeout.ms: how soon a dead sink's "
                                      "partitions move to another member (at most 300000, "
                                      "the sink's max.poll.interval.ms).")
    outcome_fence: bool = env("SINK_OUTCOME_FENCE", True, parse=parse_bool,
                              doc="Write each outcome's completed_at (epoch ms) into "
                                  "SINK_OUTCOME_MS_FIELD of the Order and Opportunity, so the "
                                  "org's validation rule refuses an older outcome over a newer "
                                  "one (a sink that resumes after a pause); the field is checked "
                                  "at start-up. false = off, with a warning.")
    start_position: str = env("SINK_START_POSITION", "", parse=parse_start_position,
                              doc="Where the sink's group starts on an outcomes partition it "
                                  "has no committed offset for and that holds records (a new "
                                  "SINK_GROUP_ID or KAFKA_TOPIC_PREFIX, offsets expired): an "
                                  "ISO-8601 time (e.g. 2026-12-01T09:30:00Z: no later than "
                                  "the old group last had no lag; an outcome before it is "
                                  "not written back), earliest or latest. Unset: such a "
                                  "partition whose records are all less than an hour old (a "
                                  "new installation) is read from its first; an older one "
                                  "stops the sink (exit 64) instead of writing its history "
                                  "again over newer Salesforce data.")
    outcome_ms_field: str = env("SINK_OUTCOME_MS_FIELD", "Activation_Outcome_Ms__c",
                                doc="API name of that Number(18, 0) field, the same on Order "
                                    "and Opportunity.")

    def validate(self) -> None:
        if self.batch_size > 200:
            raise ConfigError("SINK_BATCH_SIZE: at most 200 (sObject Collections limit)")
        if self.session_timeout_ms > SINK_MAX_POLL_INTERVAL_MS:
            raise ConfigError(f"SINK_SESSION_TIMEOUT_MS: at most {SINK_MAX_POLL_INTERVAL_MS} "
                              "(the sink consumer's max.poll.interval.ms: librdkafka refuses "
                              f"a longer session timeout), got {self.session_timeout_ms}")
        if self.retry_backoff_s > self.retry_backoff_max_s:
            raise ConfigError(f"SINK_RETRY_BACKOFF_S: at most SINK_RETRY_BACKOFF_MAX_S "
                              f"({self.retry_backoff_max_s:g})")
        if not _FIELD_NAME.fullmatch(self.outcome_ms_field):
            raise ConfigError(f"SINK_OUTCOME_MS_FIELD: {self.outcome_ms_field!r} is not a "
                              "field API name (e.g. Activation_Outcome_Ms__c)")

    @property
    def fence_field(self) -> str | None:
        """The field the sink writes the outcome's epoch ms into; None when the fence is off."""
        return self.outcome_ms_field if self.outcome_fence else None


_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


SECTIONS: tuple[type[_Section], ...] = (
    CommonSettings, KafkaSettings, SalesforceSettings, ConnectorSettings, WhmcsSettings,
    WorkerSettings, SinkSettings,
)


def all_variables() -> list[tuple[str, str, Any, bool]]:
    """(variable, doc, default or None if required, secret) for every setting."""
    rows = []
    for section in SECTIONS:
        for f in dataclasses.fields(section):  # type: ignore[arg-type]
            meta = f.metadata
            default: Any = None
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            rows.append((meta["env"], meta["doc"], default, meta["secret"]))
    return rows

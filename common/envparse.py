"""How a raw environment string becomes a settings value: the parsing layer of
:mod:`common.settings`.

:func:`env` declares a section's field (its variable, parser, doc, whether it is secret or
required) and :func:`read_field` reads it from a mapping: unset, empty or blank (only
whitespace) is the default (or
a :class:`~common.errors.ConfigError` when required), a value its parser refuses is a
ConfigError naming the variable. The ``parse_*`` functions and :func:`choice` are those
parsers; :class:`Secret` holds a value that never prints. The values come from
:func:`environment`: the process environment over the ``.env`` file
(:func:`load_dotenv_file`, read as docker compose reads it). :func:`exits_64_on_config_error`
makes a bad setting one line and exit 64 in an operator tool.

Only the standard library: the Makefile reads the state directory through
``common.settings`` before any virtualenv exists.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from common.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# where .env and .state are looked for by default: the checkout when running from one, the
# working directory when installed from the wheel (ROOT is site-packages then)
HOME = ROOT if (ROOT / "pyproject.toml").is_file() else Path.cwd()

#: Kafka's rule for a topic name (kafka.common.internals.Topic): these characters, at most
#: 249 of them, and neither "." nor ".."
TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
TOPIC_MAX_LENGTH = 249


class Secret:
    """A value that never prints. Call :meth:`reveal` where the value is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # pickling would leak it into files and queues
        raise TypeError("Secret values are not picklable")


_REQUIRED: Any = object()


def env(name: str, default: Any = _REQUIRED, *, parse: Callable[[str], Any] = str,
        doc: str = "", secret: bool = False) -> Any:
    """Declare a settings field read from environment variable ``name``."""
    meta = {"env": name, "parse": parse, "doc": doc, "secret": secret,
            "required": default is _REQUIRED}
    if default is _REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


UNSET: Any = object()


def read_field(f: dataclasses.Field[Any], src: Mapping[str, str]) -> Any:
    """Field ``f`` parsed from ``src``; ``UNSET`` when not set (its default applies). A
    blank value (``" "``) is not set either: ``parse_bool`` read it as false, so
    ``KAFKA_SSL_ENDPOINT_IDENTIFICATION=" "`` turned a check off that ``""`` kept on."""
    meta = f.metadata
    name = meta["env"]
    raw = src.get(name)
    if raw is None or not raw.strip():
        if meta["required"]:
            raise ConfigError(f"{name}: required setting is not set ({meta['doc']})")
        return UNSET
    try:
        parsed = meta["parse"](raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: invalid value: {exc}") from None
    return Secret(parsed) if meta["secret"] else parsed


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def parse_positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def parse_non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def parse_positive_float(raw: str) -> float:
    """A duration that must pass (a timeout, a backoff): 0 would spin or never wait."""
    value = parse_float(raw)
    if value <= 0:
        raise ValueError(f"must be > 0, got {raw!r}")
    return value


def parse_non_negative_float(raw: str) -> float:
    value = parse_float(raw)
    if value < 0:
        raise ValueError(f"must be >= 0, got {raw!r}")
    return value


def parse_port(raw: str) -> int:
    """A TCP port to listen on, 0-65535 (0: off, where the setting says so)."""
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {raw.strip()!r}")
    return value


def parse_fixed_port(raw: str) -> int:
    """A TCP port that must be one, 1-65535 (a broker's, a sandbox's: others connect to it)."""
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {raw.strip()!r}")
    return value


def parse_host_list(raw: str) -> str:
    """A comma-separated list of ``host[:port]`` (Kafka's bootstrap servers), the blanks
    around each dropped. An empty item (``kafka1:9092,kafka2:9092,``) is refused: faust made
    ``kafka://`` of it, which it reads as 127.0.0.1:9092. So is an item that is no
    ``host[:port]``: a scheme (``SASL_SSL://host:9092``, which librdkafka strips but the
    worker's aiokafka reads as host ``sasl_ssl``: it never connected, exit 1 for ever), a
    port out of range, items separated by spaces."""
    items = [item.strip() for item in raw.split(",")]
    if not all(items):
        raise ValueError(f"an empty item in the comma-separated list {raw.strip()!r}")
    for item in items:
        if "://" in item:
            raise ValueError(f"{item!r}: no scheme here (host:port); the protocol is "
                             "KAFKA_SECURITY_PROTOCOL")
        address = host_port(item)
        if address is None or not 1 <= address[1] <= 65535:
            raise ValueError(f"{item!r} is not host:port (port 1-65535; IPv6 as "
                             "[::1]:9092; items separated by commas)")
    return ",".join(items)


#: the table stores faust offers the worker
_STORES = ("rocksdb://", "memory://")


def host_port(item: str, default_port: int = 9092) -> tuple[str, int] | None:
    """``(host, port)`` of one bootstrap item (``host[:port]``, IPv6 as ``[::1]:9092``; the
    port defaults as librdkafka's does), None when it is no such item."""
    item = item.strip()
    match = _HOST_PORT.fullmatch(item if ":" in item.lstrip("[").split("]")[-1]
                                 else f"{item}:{default_port}")
    if match is None:
        return None
    return match["ipv6"] or match["host"], int(match["port"])


def parse_store_url(raw: str) -> str:
    """A faust table store: ``rocksdb://`` or ``memory://`` (anything else failed the worker
    at its first table read, a traceback restarted for ever)."""
    value = raw.strip()
    if value.lower() not in _STORES:
        raise ValueError(f"expected rocksdb:// or memory://, got {value!r}")
    return value.lower()


_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")


def parse_host_port(raw: str) -> str:
    """A gRPC target ``host:port`` (an IPv6 address in brackets: ``[::1]:7443``). With a
    scheme (``https://host:7443``) gRPC looked the whole string up as a name: UNAVAILABLE,
    retried for ever."""
    value = raw.strip()
    match = _HOST_PORT.fullmatch(value)
    valid = match is not None and 1 <= int(match["port"]) <= 65535
    if valid and match is not None and match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            valid = False
    if not valid:
        raise ValueError(f"expected host:port (no scheme; port 1-65535; IPv6 as "
                         f"[::1]:7443), got {value!r}")
    return value


#: what a message says instead of a URL that may hold credentials (an '@' in it)
_NOT_SHOWN = "(value not shown: it holds credentials)"
#: what a message says instead of a file setting's value that is no path but a key
KEY_NOT_SHOWN = "(value not shown: it looks like key material, not a file's path)"
#: base64 text (a DER key, or a PEM encoded whole: ``base64 -w0 key.pem``)
_BASE64 = re.compile(r"[A-Za-z0-9+/]{32,}={0,2}")
#: either alphabet, padded or not
_ANY_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
#: the longest file name (one path component) Linux allows
_NAME_MAX = 255


def looks_like_key_material(value: str) -> bool:
    """``value`` of a file setting is a key or certificate pasted in place of its path
    (as easy in a Kubernetes Secret as mounting it): a PEM (line breaks, literal ``\\n``,
    ``-----BEGIN``), a part longer than any file name, over 255 characters of base64's
    characters (blanks and ``\\n`` between them), or base64 — padded or not, standard or
    URL-safe — of a DER structure, a PEM or an OpenSSH key. A message never quotes it: the
    key went into every log line of a crash loop. A path that merely looks like base64
    (``secrets/kafka/production/clusterca``) is still quoted."""
    if any(mark in value for mark in ("\n", "\r", "\\n", "-----BEGIN")):
        return True
    if any(len(part) > _NAME_MAX for part in value.split("/")):
        return True
    text = "".join(value.split())
    if len(value) > _NAME_MAX and _BASE64.fullmatch(text):
        return True  # no path this long is made only of base64's characters
    if len(text) < 32 or not _ANY_BASE64.fullmatch(text):
        return False
    try:
        decoded = base64.b64decode(text.replace("-", "+").replace("_", "/")
                                   + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return False
    return (decoded[:1] == b"0"  # DER: a SEQUENCE
            or b"-----BEGIN" in decoded[:64] or decoded.startswith(b"openssh-key-v1"))


def shown_path(value: str) -> str:
    """A file setting's ``value`` as a message may quote it (:func:`looks_like_key_material`:
    :data:`KEY_NOT_SHOWN` instead)."""
    return KEY_NOT_SHOWN if looks_like_key_material(value) else value


def _misread_credentials(value: str, parts: SplitResult) -> int | None:
    """Where the ``@`` that ends credentials misread as host and path is in ``value``, or
    None. A password's unencoded ``/``, ``#`` or ``?`` ends the authority early:
    ``https://KEY:ab/cd@host`` reads as host ``KEY``, port ``ab``, path ``/cd@host`` — and
    ``https://user:2024/s3cret@host`` as a valid port 2024. Told apart from a legal ``@``
    past the host (``?site=eu@corp``) by what precedes it: no ``=`` or ``&``."""
    if "@" in parts.netloc:
        return None
    start = value.find("://") + 3 + len(parts.netloc)
    at = value.find("@", start)
    if at < 0:
        return None
    head = value[start:at]
    return None if "=" in head or "&" in head else at


def parse_http_url(raw: str) -> str:
    """An ``http(s)://host[:port][...]`` URL: without its scheme, ``host/path`` parses as a
    path (httpx: ``UnsupportedProtocol``; the registry: credentials read as a scheme). The
    port is 1-65535 when given (``:808l``, ``:99999`` ended in httpx's ``InvalidURL`` at the
    first call: a traceback, restarted for ever). Credentials must be percent-encoded: in
    ``https://KEY:ab/cd@host`` the ``/`` ends the authority, the host read is ``KEY`` and its
    port ``ab`` (a piece of the password in httpx's error). A value with an ``@`` is never
    quoted in a message."""
    value = raw.strip()
    shown = f" {_NOT_SHOWN}" if "@" in value else f", got {value!r}"
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed "[" of an IPv6 address
        raise ValueError(f"not a URL{shown}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host{shown}")
    if _misread_credentials(value, parts) is not None:
        # the "host" and "port" are pieces of credentials whose '/', '#' or '?' ended the
        # authority: the URL would go to the wrong host, the password into errors and the
        # JWT audience (an '@' after an '=' or '&' is legal: ?site=eu@corp; one in a path
        # is written %40)
        raise ValueError("an '@' after the host part: percent-encode the credentials ('/' "
                         f"as %2F, '#' as %23, '?' as %3F; an '@' in a path as %40) "
                         f"{_NOT_SHOWN}")
    try:
        port = parts.port
    except ValueError:  # not a number, or beyond 65535; its text quotes the port
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535{shown}")
    return value


def parse_plain_http_url(raw: str) -> str:
    """An http(s) URL of a client that sends no credentials of its URL (WHMCS: its own
    transport makes no Basic authentication of them; WHMCS authenticates in the request
    body): refused rather than left to end as a proxy's 401 on every call. (The Salesforce
    login goes through httpx's client, which does send them: its URL keeps them.)"""
    value = parse_http_url(raw)
    if "@" in urlsplit(value).netloc:
        raise ValueError("credentials in the URL (user:password@) are not sent; remove them "
                         "(value not shown: it holds credentials)")
    return value


def parse_base64_key(raw: str) -> str:
    """The PEM key ``raw`` encodes; line breaks and blanks are dropped first (``base64``
    wraps its output at 76 characters, a Kubernetes Secret keeps them), anything else not
    base64 is refused."""
    try:
        return base64.b64decode("".join(raw.split()), validate=True).decode()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a config error
        raise ValueError("not valid base64 of a PEM private key") from exc


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without the credentials of its authority, and those credentials (user and
    password, percent-decoded), or None: a client sends them as Basic authentication, while
    the URL itself is what may be shown, compared (a JWT's audience) or put in an error."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return (urlunsplit(parts._replace(netloc=host)),
            (unquote(user), unquote(password)))


def hide_userinfo(url: str) -> str:
    """``url`` with the credentials of its authority (``https://KEY:SECRET@host``) shown as
    ``***``: for a repr, never for use. Credentials misread as host and path (a value
    :func:`parse_http_url` refuses: ``https://KEY:ab/cd@host``) are masked to their ``@``;
    a legal ``@`` past the host (``?site=eu@corp``) is left as it is."""
    if "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}***@{url.rpartition('@')[2]}"
    if "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
    at = _misread_credentials(url, parts)
    if at is None:
        return url
    return f"{parts.scheme}://***@{url[at + 1:]}"


EARLIEST = "earliest"
LATEST = "latest"
_DATE_ONLY = re.compile(r"\d{4}-?\d{2}-?\d{2}(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?")


def parse_start_position(raw: str) -> str:
    """``earliest``, ``latest`` or an ISO-8601 time with its offset (``Z`` for UTC), as
    the time's canonical UTC form; ValueError for anything else."""
    value = raw.strip()
    if value.lower() in (EARLIEST, LATEST):
        return value.lower()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected earliest, latest or an ISO-8601 time such as "
                         f"2026-12-01T09:30:00Z, got {raw!r}") from None
    if _DATE_ONLY.fullmatch(value):
        raise ValueError(f"{raw!r} has no time of day: write one, e.g. "
                         "2026-12-01T00:00:00Z")
    if when.tzinfo is None:
        raise ValueError(f"{raw!r} has no UTC offset: add Z (UTC) or +hh:mm, so the start "
                         "does not depend on the sink's time zone")
    if when.timestamp() < 0:  # Kafka reads -1 and -2 as the log's end and start
        raise ValueError(f"{raw!r} is before 1970: no outcome is that old; write earliest")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")
        return value
    return parse


# a quoted value, up to its closing quote, then maybe a comment:
# single quotes take no escapes; in double quotes a backslash escapes the next character
# (a value ending in an escaped backslash still ends at its quote)
_QUOTED = re.compile(r"""(?:'([^']*)'|"((?:[^"\\]|\\.)*)")\s*(?:#.*)?""")


def _dotenv_value(raw: str) -> str:
    """A value as docker compose (compose-go's dotenv) reads the same line, without its
    interpolation and escapes: a quoted one ends at its closing quote (``"s3cr#t" # prod`` is
    ``s3cr#t``); in an unquoted one `` #`` starts a comment (``staging. # per env`` is
    ``staging.``; ``abc#def`` stays)."""
    value = raw.strip()
    quoted = _QUOTED.fullmatch(value)
    if quoted is not None:
        return quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]  # quoted whole, as read before comments were
    return value.partition(" #")[0].rstrip()


def load_dotenv_file(path: Path | None = None) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines of a .env file (no interpolation; quotes stripped; inline
    comments as docker compose reads them).

    Without ``path``: ``SFPROV_ENV_FILE`` when set — it must name a readable file (an empty
    one, or /dev/null, for no settings): ignoring a file named on purpose ran another stack
    (sandbox mode) than the one it describes — else the checkout's ``.env``, which may be
    missing. A file that cannot be read or is not UTF-8 is a :class:`ConfigError` naming it
    (one line, exit 64 in a process; never the content that did not decode)."""
    # blank counts as unset, as for every other variable
    named = os.environ.get("SFPROV_ENV_FILE", "").strip() if path is None else ""
    path = path or (Path(named) if named else HOME / ".env")
    label = "SFPROV_ENV_FILE" if named else ".env"
    values: dict[str, str] = {}
    if not named and not path.exists():
        return values
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file: {shown_path(str(path))}") from None
    except OSError as exc:  # the strerror alone: str(exc) quotes the path
        raise ConfigError(f"{label}: cannot read {shown_path(str(path))}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{label}: {path} is not UTF-8 text (line {line_no}): save it as "
                          "UTF-8") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        values[key] = _dotenv_value(value)
    return values


def environment() -> dict[str, str]:
    """The process environment over the .env file (the environment wins)."""
    merged = load_dotenv_file()
    merged.update(os.environ)
    return merged


def environment_at_import() -> dict[str, str]:
    """:func:`environment` for a module's constants (the operator tools' state directory):
    the process environment alone when the env file cannot be read — importing must not
    fail; the command that reads the settings next reports it in one line
    (:func:`exits_64_on_config_error`)."""
    try:
        return environment()
    except ConfigError:
        return dict(os.environ)


def exits_64_on_config_error(main: Callable[..., int]) -> Callable[..., int]:
    """An operator tool's ``main``: a bad setting or env file is one line on stderr
    (``error: VAR: …``) and exit 64, never a traceback."""
    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 64
    return wrapped

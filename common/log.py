"""Logging: JSON lines (or text) with process, order id and correlation id.

Pass context with ``extra``: ``log.info("provisioned", extra={"order_id": oid})``. Values
that look like secrets are never rendered, whatever their shape: :class:`~common.envparse.Secret`
prints as stars, and both formatters mask credentials in the message, in every context
field (``cause=str(exc)`` included; dicts walked key by key), in tracebacks and stacks:
PEM keys, bearer tokens, bare Salesforce session ids (``00D…!…``), JWTs, and the value of
any secret-named key (:data:`SECRET_KEYS`, after any prefix, camelCase too) written ``k=v``,
``'k': 'v'``, ``"k": "v"`` or ``k=b'v'``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

CONTEXT_FIELDS = ("order_id", "correlation_id", "idem_key", "event_uuid", "replay_id",
                  "whmcs_order_id", "status", "error_code", "topic", "partition", "offset",
                  "attempt", "count", "duration_ms", "steps_ms", "cause", "stage")

# a key block to its END line, or, cut before it (a message or a field truncated), to the
# end of the text: what follows the BEGIN line is the key until shown otherwise
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----"
                  r"|.*\Z)", re.S)
# the password of a URL's user info, ``scheme://user:password@host`` (a proxy or registry URL
# echoed in an error); the user name stays, as it says which login was used. The password
# runs to the last "@" of the unbroken text (one pasted unencoded may hold "/" or "@"), or
# to the end of a text cut short before its "@"; a port there (``host:8080/…``) is no
# password (:func:`_mask_url_password`). It never runs across another "://" (a URL later in
# the text is looked at on its own: each part is read once, linear on any text)
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]{0,31}://[^/\s:@]{0,256}:)"
                           r"(?:((?:(?!://)\S)+)@|((?:(?!://)[^\s@])+)\Z)")
# a port, not a password: digits and then a path (``host:8080/api/@me``), or, in a text cut
# short, digits then its end or a closing mark (``(http://127.0.0.1:8443)``); all digits
# before an "@" are a password (``user:12345@host``)
_PORT_PATH = re.compile(r"\d{1,5}[/?#]")
_PORT_END = re.compile(r"\d{1,5}(?:[/?#]|[)\]}>.,;'\"]*\Z)")
# ``Authorization: <scheme> <credentials>`` with any scheme (Basic, Token, Digest, …)
_BEARER = re.compile(r"(?i)(bearer\s+|accesstoken['\"=:\s]+|access_token['\"=:\s]+"
                     r"|authorization['\"]?\s*[=:]\s*['\"]?[A-Za-z][A-Za-z0-9-]*\s+)"
                     r"[A-Za-z0-9!._\-+/=]{8,}")
#: names whose value is a credential, in any shape: ``secret=x``, ``'secret': 'x'``,
#: ``"secret": "x"``, ``secret: x`` (also a dict passed as a context field, by key)
SECRET_KEYS = ("secret", "client_secret", "password", "passwd", "accesskey", "access_key",
               "api_key", "apikey", "assertion", "identifier", "access_token", "accesstoken",
               "refresh_token", "private_key", "private_key_base64", "privatekey",
               "privatekeybase64", "session_id", "sessionid", "token", "authorization",
               # aiokafka's DEBUG lines print its SASL requests and answers:
               # SaslAuthenticateRequest_v1(sasl_auth_bytes=b'user\x00user\x00PASSWORD')
               "auth_bytes")
# a key may carry a prefix, as environment variables, settings and JSON do: WHMCS_API_SECRET=…,
# KAFKA_SASL_PASSWORD=…, 'SF_PRIVATE_KEY_BASE64': …, "clientSecret": … (the match starts at
# the name, wherever it is in the key: the prefix is kept as it is; the lookahead on the names'
# first letters only spares trying every name at every position). A value is unquoted
# (to a separator), or quoted — a bytes repr's b'…' too — to its closing quote past escaped
# ones (\"), or, cut short before it, to the end of the text
_SECRET_KV = re.compile(r"(?i)(?=[\"'" + "".join(sorted({k[0] for k in SECRET_KEYS})) + r"])"
                        r"([\"']?(?:"
                        + "|".join(SECRET_KEYS)
                        + r")[\"']?\s*[=:]\s*)"
                        r"(?:(b?)([\"'])((?:\\.|(?!\3)[^\\])*)(\3)?|([^\"'&\s,;}\]]+))")
# A Salesforce session id (an access token) needs no label to be one: <org id>!<token>
_SESSION_ID = re.compile(r"\b00D[A-Za-z0-9]{0,15}![A-Za-z0-9._]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_SECRET_KEY_SET = frozenset(SECRET_KEYS)


# Each shape above needs its own mark to match: "-----" (a PEM key), "bearer", "access
# token" or "authorization" (a labelled token), "!" (a session id), "://" (a URL's password), "eyJ" (a
# JWT), "=" or ":" (``k=v``, ``'k': v``, with a secret's name). ``redact`` runs a pattern only where its mark is (most
# messages and ids have none). No replacement brings a mark in.
_BEARER_MARK = re.compile(r"(?i)bearer|access_?token|authorization")
# ``k=v`` needs a secret's name too (the words of SECRET_KEYS; "access" and "key" cover
# accesskey, access_key, api_key, apikey, private_key, …)
_KV_WORDS = ("secret", "passw", "access", "key", "assertion", "identifier", "token",
             "session", "authorization", "auth_bytes")


def _kv_marked(text: str) -> bool:
    low = text.lower()  # substring tests: ~5x faster than one case-insensitive alternation
    return any(word in low for word in _KV_WORDS)


def redact(text: str) -> str:
    """``text`` with every credential shape masked (keys, tokens, session ids, JWTs):
    what :func:`_redact_all` gives, with only the patterns whose mark is in the text."""
    if "-----" in text:
        text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    if _BEARER_MARK.search(text):
        text = _BEARER.sub(lambda m: m.group(1) + "[REDACTED]", text)
    if "!" in text:
        text = _SESSION_ID.sub("[REDACTED SESSION ID]", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(_mask_url_password, text)
    if "eyJ" in text:
        text = _JWT.sub("[REDACTED JWT]", text)
    if ("=" in text or ":" in text) and _kv_marked(text):
        text = _SECRET_KV.sub(_mask_value, text)
    return text


def _redact_all(text: str) -> str:
    """Every pattern, in order (the reference :func:`redact` is tested against)."""
    text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    text = _BEARER.sub(lambda m: m.group(1) + "[REDACTED]", text)
    text = _SESSION_ID.sub("[REDACTED SESSION ID]", text)
    text = _URL_PASSWORD.sub(_mask_url_password, text)
    text = _JWT.sub("[REDACTED JWT]", text)
    return _SECRET_KV.sub(_mask_value, text)


def _mask_url_password(m: re.Match[str]) -> str:
    if m.group(2) is not None:
        password, at, port = m.group(2), "@", _PORT_PATH
    else:
        password, at, port = m.group(3), "", _PORT_END
    if password.startswith("[REDACTED") or port.match(password):
        return m.group(0)  # masked already, or a port (and a path that may hold an "@")
    return f"{m.group(1)}[REDACTED]{at}"


def _mask_value(m: re.Match[str]) -> str:
    quote = m.group(3)
    value = m.group(4) if quote else m.group(6)
    if value.startswith("[REDACTED") or not value:
        return m.group(0)
    if quote:  # the closing quote only if the text had one (not when it was cut short)
        return f"{m.group(1)}{m.group(2)}{quote}[REDACTED]{m.group(5) or ''}"
    return f"{m.group(1)}[REDACTED]"


def _secret_name(key: str) -> bool:
    """``secret``, ``WHMCS_API_SECRET``, ``kafka_sasl_password``, ``clientSecret``: a
    secret-named key, alone or after a prefix."""
    key = key.lower()
    return key in _SECRET_KEY_SET or key.endswith(SECRET_KEYS)


def scrub(value: Any) -> Any:
    """A context field made safe to render: strings redacted, dicts and lists walked (a
    value under a secret-named key is masked whole), anything else rendered as text first
    (an exception, a Secret) unless it is a number or a bool."""
    if type(value) is str:  # the usual case first
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: "[REDACTED]" if _secret_name(str(k)) else scrub(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [scrub(v) for v in value]
    return redact(value if isinstance(value, str) else str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name
        # json.dumps(out, default=str, ensure_ascii=False) builds this encoder per call
        self._encoder = json.JSONEncoder(default=str, ensure_ascii=False)
        self._second = (-1, "")  # the last whole second and its rendering

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        out: dict[str, Any] = {
            "ts": f"{self._second[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process_name,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = record.__dict__
        for key in CONTEXT_FIELDS:
            value = fields.get(key)
            if value is not None:
                out[key] = scrub(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return self._encoder.encode(out)


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + process_name + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = redact(super().format(record))
        ctx = " ".join(f"{k}={scrub(record.__dict__[k])}" for k in CONTEXT_FIELDS
                       if record.__dict__.get(k) is not None)
        return f"{base} {ctx}" if ctx else base


#: libraries whose chatter the process lowers to WARNING and whose repeats it collapses
NOISY = ("aiokafka", "faust", "mode", "httpx", "httpcore", "urllib3", "grpc")
_KEEP_MESSAGES = 1024  # a library's messages remembered at once, before the old are dropped


class RepeatFilter(logging.Filter):
    """At most one line per ``window_s`` for each message of a library's (``prefixes``):
    aiokafka logs ``Unable connect to node with id 2`` at ERROR on every reconnect attempt
    while a broker is down (385 lines across the logs of one chaos run with broker kills).
    The first passes; the repeats within the window are counted, not shown; the first after
    it passes with how many were left out (``… (384 more like it in the last 30 s, not
    shown)``). A message is its logger, level and template (the text before its
    arguments), so a broker's other nodes count together. The pipeline's own lines all
    pass."""

    def __init__(self, prefixes: tuple[str, ...] = NOISY, window_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._prefixes = tuple(prefixes)
        self._dotted = tuple(f"{prefix}." for prefix in prefixes)
        self.window_s, self._clock = window_s, clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # → [window start, left out]
        self._lock = threading.Lock()  # faust's consumer thread logs too

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name not in self._prefixes and not name.startswith(self._dotted):
            return True
        key = (name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            self._seen[key] = [now, 0]
            if len(self._seen) > _KEEP_MESSAGES:  # messages with their values in the text
                self._seen = {k: v for k, v in self._seen.items()
                              if now - v[0] < self.window_s}
        if seen is not None and seen[1]:
            record.msg = (f"{record.msg} ({int(seen[1])} more like it in the last "
                          f"{now - seen[0]:.0f} s, not shown)")
        return True


def setup_logging(process_name: str, level: str = "INFO", fmt: str = "JSON",
                  stream: Any = None) -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt.upper() == "JSON"
                         else TextFormatter(process_name))
    # Neither formatter renders the thread or the process (names or ids): LogRecord need
    # not look them up (the logging HOWTO's optimisation flags)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would otherwise drown the pipeline's own lines.
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

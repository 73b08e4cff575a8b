"""Logging: JSON lines (or text) with process, order id and correlation id.

Pass context with ``extra``: ``log.info("provisioned", extra={"order_id": oid})``. Values
that look like secrets are never rendered: :class:`~common.settings.Secret` prints as
stars, and a filter masks bearer tokens and PEM blocks in messages as a last line of
defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

CONTEXT_FIELDS = ("order_id", "correlation_id", "idem_key", "event_uuid", "replay_id",
                  "whmcs_order_id", "status", "error_code", "topic", "partition", "offset",
                  "attempt", "count", "duration_ms", "steps_ms", "cause")

_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
                  re.S)
_BEARER = re.compile(r"(?i)(bearer\s+|accesstoken['\"=:\s]+|access_token['\"=:\s]+)"
                     r"[A-Za-z0-9!._\-+/=]{8,}")
_SECRET_KV = re.compile(r"(?i)\b(secret|password|accesskey|assertion)=([^&\s]+)")


def redact(text: str) -> str:
    text = _PEM.sub("[REDACTED PRIVATE KEY]", text)
    text = _BEARER.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return _SECRET_KV.sub(lambda m: m.group(1) + "=[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process_name,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value.hex() if isinstance(value, bytes) else value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + process_name + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = redact(super().format(record))
        ctx = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS
                       if record.__dict__.get(k) is not None)
        return f"{base} {ctx}" if ctx else base


def setup_logging(process_name: str, level: str = "INFO", fmt: str = "JSON",
                  stream: Any = None) -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt.upper() == "JSON"
                         else TextFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would otherwise drown the pipeline's own lines.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpcore", "urllib3", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

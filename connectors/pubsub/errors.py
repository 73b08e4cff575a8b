"""Translate gRPC errors of the Pub/Sub API into the project's exception tree.

Salesforce puts its own code in the trailing metadata ``error-code`` (REFERENCE §1); the
gRPC status code alone is too coarse (an invalid replay id and a bad topic are both
``INVALID_ARGUMENT``). :func:`classify` looks at the metadata first, then at the status
details (some proxies drop trailers), then at the status code::

    replayid.corrupted / replayid.validation.failed  → ReplayIdInvalidError  (cause replay_invalid)
    service.auth.error, UNAUTHENTICATED              → SalesforceAuthError   (cause auth)
    subscription.limit.exceeded                      → SalesforceLimitError  (cause limit)
    concurrent.client.limit.exceeded                 → SalesforceLimitError  (cause concurrent_clients)
    NOT_FOUND, PERMISSION_DENIED, another INVALID_ARGUMENT
                                                     → SalesforceError, retryable (cause refused)
    anything else                                    → SalesforceError, retryable (cause transient)

Every error ends the stream; the caller resubscribes from the last *committed* position.
A refusal (the topic does not exist, ``…topic.not.found``, or this user may not subscribe to
it) is retried too, as REFERENCE §1 says for every error, but it will not pass on its own:
the connector reports it as not ready until a stream answers (:mod:`connectors.source`).
"""

from __future__ import annotations

from typing import Any

import grpc

from common.errors import (
    ReplayIdInvalidError,
    SalesforceAuthError,
    SalesforceError,
    SalesforceLimitError,
)

REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
REPLAY_VALIDATION_FAILED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
LIMIT_EXCEEDED = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
CONCURRENT_CLIENTS = "sfdc.platform.eventbus.grpc.concurrent.client.limit.exceeded"

# Causes, also the ``cause`` label of the reconnect metric.
REPLAY_INVALID = "replay_invalid"
AUTH = "auth"
LIMIT = "limit"
CONCURRENT = "concurrent_clients"
REFUSED = "refused"
TRANSIENT = "transient"
_REFUSALS = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
             grpc.StatusCode.INVALID_ARGUMENT)


def error_code_of(exc: Any) -> str:
    """The Salesforce ``error-code`` trailer of a gRPC error, or ``""``."""
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - some RpcError objects have no call attached
        trailers = ()
    for item in trailers:
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == "error-code":
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def cause_of(error_code: str, status: grpc.StatusCode | None, details: str = "") -> str:
    text = error_code or details or ""
    if "replayid.corrupted" in text or "replayid.validation.failed" in text:
        return REPLAY_INVALID
    if "auth.error" in text or status == grpc.StatusCode.UNAUTHENTICATED:
        return AUTH
    if "concurrent.client.limit" in text:
        return CONCURRENT
    if "limit.exceeded" in text:
        return LIMIT
    if status in _REFUSALS or "not.found" in text or "permission" in text:
        return REFUSED
    return TRANSIENT


def classify(exc: grpc.RpcError, *, limit_backoff_s: float = 300.0) -> SalesforceError:
    """A project exception (with ``.error_code`` and ``.cause``) for a failed Pub/Sub call."""
    code = error_code_of(exc)
    status = _call(exc, "code")
    details = _call(exc, "details") or ""
    cause = cause_of(code, status, details)
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    message = f"Pub/Sub {name}: {details or 'no details'}" + (f" [{code}]" if code else "")
    err: SalesforceError
    if cause == REPLAY_INVALID:
        err = ReplayIdInvalidError(message, error_code=code or REPLAY_CORRUPTED)
    elif cause == AUTH:
        err = SalesforceAuthError(message, error_code=code or AUTH_ERROR)
    elif cause in (LIMIT, CONCURRENT):
        err = SalesforceLimitError(message, error_code=code, retry_after=limit_backoff_s)
    else:
        err = SalesforceError(message, error_code=code or name, retryable=True)
    err.cause = cause  # type: ignore[attr-defined]
    err.grpc_status = name  # type: ignore[attr-defined]
    return err


def _call(exc: Any, method: str) -> Any:
    try:
        return getattr(exc, method)()
    except Exception:  # noqa: BLE001
        return None

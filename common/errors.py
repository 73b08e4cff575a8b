"""The project's exception tree.

Third-party errors (``grpc.RpcError``, ``httpx`` errors, simple-salesforce errors,
``confluent_kafka.KafkaException``) are translated into these where they enter our code,
with ``raise ... from exc`` so the cause is kept::

    PipelineError                      root; .retryable, .retry_after (seconds or None)
    ├── ConfigError                    a bad or missing setting (names the variable)
    ├── SalesforceError                .error_code (Salesforce errorCode / gRPC error-code)
    │   ├── SalesforceAuthError        invalid_grant, INVALID_SESSION_ID: re-authenticate
    │   ├── SalesforceLimitError       REQUEST_LIMIT_EXCEEDED, delivery allocation: long backoff
    │   └── ReplayIdInvalidError       stored replay id refused (older than retention)
    ├── WhmcsError                     result=error with a message; permanent by default
    │   ├── WhmcsTransientError        HTTP 5xx, HTML error page, connection error: retry
    │   │   └── WhmcsNotSentError      its send deadline passed before it left: ask the lease again
    │   └── WhmcsUnknownResultError    timeout after the request was sent: look it up, never repeat blindly
    └── KafkaError                     broker-side failures (fenced producer, timeouts)
        ├── ProducerFencedError        another instance with the same transactional.id took over
        │   └── TransactionTimedOutError   fenced while its transaction was older than the
        │                                  transaction timeout: perhaps only its own timeout
        └── KafkaAccessError           the broker refused this client (credentials, TLS, ACLs):
                                       a configuration problem, restarting will not help
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


class ConfigError(PipelineError):
    """A setting is missing or invalid; the message names the variable."""


class SalesforceError(PipelineError):
    def __init__(self, message: str, *, error_code: str | None = None,
                 status: int | None = None, retryable: bool | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.error_code = error_code
        self.status = status


class SalesforceAuthError(SalesforceError):
    retryable = True


class SalesforceLimitError(SalesforceError):
    retryable = True


class ReplayIdInvalidError(SalesforceError):
    pass


class WhmcsError(PipelineError):
    def __init__(self, message: str, *, action: str | None = None,
                 retryable: bool | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.action = action


class WhmcsTransientError(WhmcsError):
    retryable = True


class WhmcsAccessError(WhmcsError):
    """WHMCS refused *us* (any error answered 401/403; at HTTP 200 one of WHMCS's own refusal
    texts as the whole message — "Authentication Failed", "Invalid IP 1.2.3.4", "IP Banned",
    "Invalid Access Key", "Access Denied", …: ``common.whmcs._ACCESS_REFUSED``):
    this installation's credentials, allow-list, access key or API role are wrong, or its IP
    is banned. Nothing was done, no Order is at fault, and the worker waits for the fix
    instead of failing every Order."""

    retryable = True
    #: refused by its words alone (HTTP 200), not by a 401/403: ``AcceptOrder`` runs the
    #: provisioning module, whose own failure may read the same ("Access denied"), so its
    #: client asks WHMCS once more before calling it a refusal (WhmcsClient.accept_order)
    by_words = False


class WhmcsUnknownResultError(WhmcsError):
    """The request may or may not have taken effect (timeout after sending)."""

    retryable = True


class WhmcsNotSentError(WhmcsTransientError):
    """The request was certainly not sent: its send deadline (the caller's ownership lease)
    passed before any byte left the process. Ask the lease again before another try."""


class KafkaError(PipelineError):
    pass


class ProducerFencedError(KafkaError):
    pass


class TransactionTimedOutError(ProducerFencedError):
    """Fenced, and the failed transaction had been open longer than ``transaction.timeout.ms``.

    The broker answers a transaction it aborted for its age exactly as it answers a newer
    instance's ``init_transactions`` (``INVALID_PRODUCER_EPOCH``; librdkafka: fatal
    ``_FENCED``), so this says only that our own timeout *may* be the cause. Whoever catches
    it must not write with this producer again; a new one's ``init_transactions`` decides.
    """

    retryable = True

    def __init__(self, message: str, *, age_s: float, timeout_s: float) -> None:
        super().__init__(message)
        self.age_s = age_s
        self.timeout_s = timeout_s


class ProducerFailedError(KafkaError):
    """The transactional producer is in librdkafka's fatal state for a reason that is not a
    fence (e.g. the broker answered ``EndTxn`` with ``INVALID_TXN_STATE`` while nodes were
    away). That state is final for this producer, not for the process: a new producer's
    ``init_transactions`` (which aborts the open transaction) and the position read again
    after it resume the stream — what a restarted process would do, without the restart."""

    retryable = True


class KafkaAccessError(KafkaError):
    """The broker refused this client: wrong credentials or TLS trust (authentication), or
    an operation its principal has no ACL for (authorization). Retrying cannot help; the
    process stops with its configuration exit code and the message names the setting (or
    the ACL) to fix."""

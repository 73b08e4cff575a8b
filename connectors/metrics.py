"""Prometheus metrics of the connector (default registry, prefix ``sfprov_connector_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_RECEIVED = Counter("sfprov_connector_events_received",
                          "Events delivered by the Pub/Sub API (including redeliveries after "
                          "a resubscribe).")
EVENTS_WRITTEN = Counter("sfprov_connector_events_written",
                         "Events committed to the requests topic.")
DEAD_LETTERS = Counter("sfprov_connector_dead_letters",
                       "Events committed to the dead-letter topic, by reason.", ["reason"])
RECONNECTS = Counter("sfprov_connector_reconnects",
                     "Subscriptions ended and reopened, by cause.", ["cause"])
TRANSACTIONS = Counter("sfprov_connector_transactions",
                       "Kafka transactions, by kind (batch|keepalive|gap|marker) and result.",
                       ["kind", "result"])
KEEPALIVES = Counter("sfprov_connector_keepalives", "Empty FetchResponses (keepalives) seen.")
LAST_EVENT_TIME = Gauge("sfprov_connector_last_event_timestamp_seconds",
                        "When the last event was committed to Kafka (unix time).")
COMMITTED_AT = Gauge("sfprov_connector_committed_position_timestamp_seconds",
                     "When the current replay position was committed (unix time).")
COMMITTED_AGE = Gauge("sfprov_connector_committed_replay_id_age_seconds",
                      "Seconds since the replay position was last committed (-1: none).")
REPLAY_GAPS = Counter("sfprov_connector_replay_gaps",
                      "Replay gaps recorded (a stored replay id refused by Salesforce, or a "
                      "LATEST resubscribe before any position was committed), by policy.",
                      ["policy"])
BUFFERED = Gauge("sfprov_connector_buffered_events",
                 "Events received from Salesforce, not yet written.")
#: the reconnect cause of a schema registry out of reach (a retryable SerdeError)
SCHEMA_REGISTRY = "schema_registry"
TXN_TIMEOUTS = Counter("sfprov_connector_transaction_timeouts",
                       "Transactions fenced after outliving CONNECTOR_TRANSACTION_TIMEOUT_S "
                       "(a paused process); each was aborted and the producer re-initialised.")


def prime(invalid_replay: str) -> None:
    """Export the connector's labelled counters whose label values are known at zero from
    its start: a child made at its first ``inc()`` is first scraped at 1, and the alert
    rules' ``increase()`` would miss that event (ops/monitoring/alerts.yml). Reconnect causes
    are the Pub/Sub ones, a login's (the exception's name, as ``Connector._recover``
    labels it) and the schema registry's; gaps are recorded with ``SF_EVENTS_INVALID_REPLAY`` (``invalid_replay``) or,
    resubscribed before a position was committed, LATEST; the reconciler's counters too;
    the dead letters' reasons (:data:`connectors.decode.DEAD_LETTER_CODES`)."""
    from common.errors import SalesforceAuthError
    from connectors import reconciler
    from connectors.pubsub import errors

    for cause in (errors.REPLAY_INVALID, errors.AUTH, errors.LIMIT, errors.CONCURRENT,
                  errors.REFUSED, errors.TRANSIENT, SalesforceAuthError.__name__,
                  SCHEMA_REGISTRY):
        RECONNECTS.labels(cause)
    for policy in dict.fromkeys((invalid_replay, "LATEST")):
        REPLAY_GAPS.labels(policy)
    reconciler.prime()
    from connectors.decode import DEAD_LETTER_CODES

    for code in DEAD_LETTER_CODES:
        DEAD_LETTERS.labels(code)

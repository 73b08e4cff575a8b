"""The connector's probes and trace spans, apart from its loop (see :mod:`common.probes`,
:mod:`common.tracing`).

* ``/livez``: the main loop is alive — judged from what the loop keeps up to date (its state,
  when its stream last answered or opened, when its backoff ends), no extra heartbeat
  needed. Salesforce or Kafka out of reach is no reason: a restart brings neither back.
* ``/readyz``: it can move events now — not still starting (its producer's
  ``init_transactions``, the stored position, the first subscription: until that answered,
  stayed open unrefused once connected or ended in an error; no event needed), not fenced
  or failed (Kafka), not waiting out a Salesforce delivery limit, not subscribed to a silent
  stream, its subscription not refused
  (no such topic, no access to it: retried, but not ready until a stream answers); until a
  stream has been accepted once (answered, or stayed open unrefused once connected), not
  after an attempt that ended in an error, at once (a wrong endpoint, an outage, a TLS
  mismatch: named ``salesforce``; the LATEST marker or a gap record not written:
  ``kafka`` — the schema registry is met only once a stream answered; an endpoint that never
  answers the connection is not accepted: a stream's 5 s open count only once its channel is
  connected, so it stays starting until gRPC's connect timeout, ~20 s, ends it in an error);
  and, once one was,
  after ``READY_GRACE_S`` (60 s, as the worker and the sink), not without an answer from
  Pub/Sub while every subscription ends in an error (an outage, a network cut, a wrong
  endpoint; or one the watchdog found silent), nor failing error after error although
  Pub/Sub answers (a Kafka outage retried through the backoff). The first retry after a
  single error is given a keepalive period: on a quiet channel a new stream's first answer,
  a keepalive, may come 270 s after it opened.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from common import tracing
from common.probes import READY_GRACE_S, connector_liveness, readiness
from connectors.decode import KafkaRecord

if TYPE_CHECKING:
    from connectors.source import Connector


def live(conn: Connector) -> tuple[bool, dict[str, Any]]:
    h = conn.health
    now = time.monotonic()
    return connector_liveness(h.state, h.stream_silent_s(now), now - h.waiting_until,
                              conn.settings.keepalive_timeout_s)


def ready(conn: Connector) -> tuple[bool, dict[str, Any]]:
    _ok, details = conn.health_check()
    h = conn.health
    now = time.monotonic()
    silent = h.state == "subscribed" and h.stream_silent_s(now) > conn.settings.keepalive_timeout_s
    limited = h.state == "limited" and h.waiting_until > now
    unanswered = h.unanswered(now, READY_GRACE_S)
    stuck = h.stuck(now, READY_GRACE_S)
    failing = stuck if stuck is not None else unanswered
    # start-up ended in an error and no stream was accepted since: not ready at once, the
    # grace is for a connector that worked (a stream reset, a broker's failover)
    unaccepted = h.unaccepted()
    # named after where the last error came from: Kafka's (a batch, a keepalive position, a
    # gap record or the LATEST marker not written), the schema registry's (a batch's event
    # not encoded: a retryable SerdeError) or Salesforce's
    on = h.failing_on if failing is not None or unaccepted else ""
    kafka_failing, registry_failing = on == "kafka", on == "schema_registry"
    failing_s = now - h.failing_since if h.failing_since is not None else failing or 0.0
    if failing is None and unaccepted:
        failing_why = ("no subscription accepted since the start: every attempt ended in an "
                       f"error, resubscribing after each (last error: {h.last_error})")
    else:
        failing_why = (f"every attempt for {failing_s:.0f} s ended in an error, resubscribing "
                       f"after each (last error: {h.last_error})")
    if limited:
        salesforce_why = (f"delivery limit reached, waiting {h.waiting_until - now:.0f} s: "
                          f"{h.last_error}")
    elif failing is None and unaccepted:
        salesforce_why = failing_why
    elif stuck is None and unanswered is not None:
        salesforce_why = (f"no answer from Pub/Sub for {unanswered:.0f} s "
                          f"(last error: {h.last_error})")
    else:
        salesforce_why = f"Pub/Sub answers, but {failing_why}"
    # start-up: before the first subscription (the producer, the stored position), or on it
    # until Salesforce accepted it (Connector.run; a refusal comes within moments)
    starting = h.state == "starting" or (h.state == "subscribed" and not h.started)
    starting_why = ("opening the Kafka producer (init_transactions) and reading the stored "
                    "position; not subscribed yet" if h.state == "starting" else
                    f"the first subscription to {conn.settings.channel}, open "
                    f"{now - h.subscribed_at:.0f} s, not accepted by Salesforce yet")
    return readiness([
        ("starting", not starting, starting_why),
        ("kafka", h.state not in ("fenced", "failed") and not kafka_failing,
         failing_why if kafka_failing else f"connector {h.state}: {h.last_error}"),
        ("schema_registry", not registry_failing, failing_why),
        ("salesforce", not limited and (kafka_failing or registry_failing
                                        or (failing is None and not unaccepted)),
         salesforce_why),
        ("salesforce_stream", not silent,
         f"no events or keepalive for {h.stream_silent_s(now):.0f} s"),
        ("salesforce_auth", not h.auth_refused,
         f"Salesforce refuses the connector's login ({h.auth_refused}): check SF_CLIENT_ID, "
         "SF_USERNAME, the private key and the connected app's approval for the user"),
        ("salesforce_subscription", not h.refused,
         f"Salesforce refuses the subscription to {conn.settings.channel} ({h.refused}): "
         "check SF_PROVISION_EVENT_CHANNEL and the integration user's access to the event"),
    ], details)


def event_spans(batch: list[KafkaRecord]) -> list[Any]:
    """A root span per event written to the requests topic (None for dead letters, and for
    every event when tracing is off)."""
    if not tracing.enabled():
        return [None] * len(batch)
    return [None if rec.dead_letter else tracing.start_span(
        "connector.event", order_id=rec.order_id, correlation_id=rec.correlation_id,
        event_uuid=rec.event_uuid, replay_id=rec.replay_id.hex()) for rec in batch]


def end_spans(spans: list[Any]) -> None:
    for span in spans:
        tracing.end_span(span, committed=True)

"""The connector's probes and trace spans, apart from its loop (see :mod:`common.probes`,
:mod:`common.tracing`).

* ``/livez``: the main loop is alive — judged from what the loop keeps up to date (its state,
  when it last handled a response, when its backoff ends), no extra heartbeat needed.
* ``/readyz``: it can move events now — not fenced or failed (Kafka), not waiting out a
  Salesforce delivery limit, not subscribed to a silent stream, its subscription not refused
  (no such topic, no access to it: retried, but not ready until a stream answers).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from common import tracing
from common.probes import connector_liveness, readiness
from connectors.decode import KafkaRecord

if TYPE_CHECKING:
    from connectors.source import Connector


def live(conn: Connector) -> tuple[bool, dict[str, Any]]:
    h = conn.health
    now = time.monotonic()
    return connector_liveness(h.state, now - h.last_response, now - h.waiting_until,
                              conn.settings.keepalive_timeout_s)


def ready(conn: Connector) -> tuple[bool, dict[str, Any]]:
    _ok, details = conn.health_check()
    h = conn.health
    now = time.monotonic()
    silent = h.state == "subscribed" and now - h.last_response > conn.settings.keepalive_timeout_s
    limited = h.state == "limited" and h.waiting_until > now
    return readiness([
        ("kafka", h.state not in ("fenced", "failed"),
         f"connector {h.state}: {h.last_error}"),
        ("salesforce", not limited,
         f"delivery limit reached, waiting {h.waiting_until - now:.0f} s: {h.last_error}"),
        ("salesforce_stream", not silent,
         f"no events or keepalive for {now - h.last_response:.0f} s"),
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

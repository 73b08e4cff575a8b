"""Prometheus metrics of the sink (prefix ``sfprov_sink_``), registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_WRITTEN = Counter("sfprov_sink_records_written_total",
                          "Records Salesforce acknowledged, by sObject type.", ["sobject"])
OUTCOMES = Counter("sfprov_sink_outcomes_total",
                   "Outcome records consumed, by status (or 'undecodable').", ["status"])
BATCHES = Counter("sfprov_sink_batches_total", "sObject Collections calls made.")
BATCH_SIZE = Histogram("sfprov_sink_batch_size", "Records per sObject Collections call.",
                       buckets=(1, 5, 10, 25, 50, 100, 150, 199, 200))
ERRORS = Counter("sfprov_sink_errors_total",
                 "Salesforce errors by code (per record and whole call).", ["code", "kind"])
DEAD_LETTERS = Counter("sfprov_sink_dead_letters_total", "Outcomes dead-lettered.", ["reason"])
API_USED = Gauge("sfprov_sink_api_usage_used", "Salesforce API requests used (Sforce-Limit-Info).")
API_LIMIT = Gauge("sfprov_sink_api_usage_limit", "Salesforce daily API request limit.")
LAG = Histogram("sfprov_sink_end_to_end_lag_seconds",
                "Now minus the outcome's timestamp when its write-back was acknowledged "
                "(outcomes that wrote nothing: not observed).",
                ["since"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400))
PAUSED = Gauge("sfprov_sink_paused", "1 while consumption is paused (limit, outage, "
                                     "backpressure).")
PAUSES = Counter("sfprov_sink_pauses_total", "Times consumption was paused, by reason.",
                 ["reason"])
PENDING = Gauge("sfprov_sink_pending_outcomes", "Outcomes consumed and not yet acknowledged.")
COMMITS = Counter("sfprov_sink_commits_total", "Offset commits.")
SUPERSEDED = Counter("sfprov_sink_superseded_total",
                     "Records not written because Salesforce already holds a newer outcome "
                     "(the fence's validation rule refused them), by sObject type.",
                     ["sobject"])


def prime() -> None:
    """Export the sink's labelled counters whose label values are known at zero from its
    start: a child made at its first ``inc()`` is first scraped at 1, and the alert rules'
    ``increase()`` would miss that event (ops/monitoring/alerts.yml). Dead letters' reasons
    are open-ended."""
    from sinks.mapping import OPPORTUNITY, ORDER
    from sinks.pausing import BACKPRESSURE, LIMIT, OUTAGE  # it imports this module

    for sobject in (ORDER, OPPORTUNITY):
        RECORDS_WRITTEN.labels(sobject)
        SUPERSEDED.labels(sobject)
    for reason in (LIMIT, OUTAGE, BACKPRESSURE):
        PAUSES.labels(reason)

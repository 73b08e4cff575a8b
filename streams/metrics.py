"""Prometheus metrics of the worker (prefix ``sfprov_worker_``), on the default registry.

Defined once at import, so several apps in one test process share them; tests read
deltas, never absolute values.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter("sfprov_worker_decisions_total", "Outcomes emitted, by status and code",
                    ["status", "code"])
DEAD_LETTERS = Counter("sfprov_worker_dead_letters_total", "Events dead-lettered, by reason",
                       ["reason"])
WHMCS_CALLS = Counter("sfprov_worker_whmcs_calls_total", "WHMCS API calls by action and result",
                      ["action", "result"])
WHMCS_LATENCY = Histogram("sfprov_worker_whmcs_call_seconds", "WHMCS call latency", ["action"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SF_QUERIES = Counter("sfprov_worker_salesforce_queries_total", "Guard SOQL queries by result",
                     ["result"])
SF_LATENCY = Histogram("sfprov_worker_salesforce_query_seconds", "Guard query latency",
                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter("sfprov_worker_retries_total", "Retries after transient errors", ["kind"])
RECOVERED = Counter("sfprov_worker_recovered_total",
                    "WHMCS orders found by lookup instead of created")
LATENCY = Histogram("sfprov_worker_processing_seconds",
                    "Event received by the worker → outcome acknowledged",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
COMMIT_HOLDS = Counter("sfprov_worker_commit_holds_total",
                       "Commits of the requests topic held back by the commit gate, by reason",
                       ["reason"])
COMMIT_CHECK = Histogram("sfprov_worker_commit_check_seconds",
                         "Commit gate: reading the records a commit would cover",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
FENCED = Counter("sfprov_worker_fenced_total",
                 "Orders stopped by the ownership lease before a WHMCS write (or before "
                 "recording a result), left to the partition's new owner, by stage",
                 ["stage"])
CHANGELOG_GAPS = Counter("sfprov_worker_changelog_gaps_total",
                         "Another writer's records found among or before a table flush's "
                         "own in a changelog partition: its persisted offset is held back "
                         "until the next restore, by table", ["table"])
CHANGELOG_FOREIGN = Counter("sfprov_worker_changelog_foreign_total",
                            "Table flushes whose changelog records another writer's records "
                            "lie among or before (since the last flush), by table", ["table"])
CHANGELOG_REPAIRS = Counter("sfprov_worker_changelog_repairs_total",
                            "Ranges of another writer's changelog records looked at, by table "
                            "and result: repaired (the owner's values sent again where the "
                            "last record was not theirs), not_owner (the lease did not hold: "
                            "nothing sent), failed", ["table", "result"])
CHANGELOG_REWRITES = Counter("sfprov_worker_changelog_rewrites_total",
                             "Keys whose stored value the owner sent again because another "
                             "writer's record had landed after its own, by table", ["table"])
CHANGELOG_SKIPPED = Counter("sfprov_worker_changelog_skipped_total",
                            "Changelog records a table restore left out, by table: late ones "
                            "after another worker's claim (this worker's own it remembers, or "
                            "any writer's by their stamp), those past "
                            "the store of a partition held throughout (handed to the repair), "
                            "and those at or below the store's offset that faust's recovery "
                            "buffer handed again (the most common, at rebalances); the log "
                            "line tells which (decision 0016)", ["table"])
COMPENSATIONS = Counter("sfprov_worker_compensations_total",
                        "Lookups that found several WHMCS orders for one Salesforce Order "
                        "(a fence was crossed; the extra Pending ones are cancelled)")
EVENTS = Counter("sfprov_worker_events_total",
                 "Events that left the worker: finished (outcome or dead letter acknowledged), "
                 "fenced (left to the partition's new owner) or released (a rebalance)",
                 ["result"])
LEASE_WAITS = Counter("sfprov_worker_lease_waits_total",
                      "Events that waited for the ownership lease to come back (a rebalance "
                      "under way, heartbeats not accepted lately)")
EVENT_ERRORS = Counter("sfprov_worker_event_errors_total",
                       "Unexpected errors handling an event (retried, then dead-lettered)")
REDELIVERED_SILENT = Counter("sfprov_worker_redelivered_silent_total",
                             "Redelivered events whose outcome was already acknowledged")
GROUP_COMMITS = Counter("sfprov_worker_group_commits_total",
                        "Durability flushes of the tables (shared by the Orders that reach "
                        "them together)")
GUARD_READS = Histogram("sfprov_worker_guard_read_orders", "Orders per coalesced guard read",
                        buckets=(1, 2, 5, 10, 25, 50, 100, 200))
PENDING_INTENTS = Gauge("sfprov_worker_pending_intents", "Intents without a decided outcome")
OLDEST_PENDING_INTENT = Gauge("sfprov_worker_oldest_pending_intent_age_seconds",
                              "Age of the oldest intent without a decided outcome, as the "
                              "last sweep read it (0: none)")
UNREADABLE_ENTRIES = Gauge("sfprov_worker_unreadable_table_entries",
                           "Table values the last full sweep could not decode (passed over; "
                           "their Orders' events are dead-lettered STATE_UNREADABLE)")

#: the label values EVENTS (streams.lanes, ``Admitted.result``) and CHANGELOG_REPAIRS
#: (streams.repair) are counted with
EVENT_RESULTS = ("finished", "fenced", "released")
REPAIR_RESULTS = ("repaired", "not_owner", "failed")
#: COMMIT_HOLDS' reasons (streams.checkpoint)
COMMIT_HOLD_REASONS = ("check_failed", "unfinished_record")


def prime(tables: Iterable[str]) -> None:
    """Export the worker's labelled counters whose label values are known at zero from its
    start (``tables``: its tables' names): a child made at its first ``inc()`` is first
    scraped at 1, and the alert rules' ``increase()`` would miss that event
    (ops/monitoring/alerts.yml), and a dashboard panel would show 0 for it. Dead letters'
    reasons and fences' stages are open-ended."""
    for result in EVENT_RESULTS:
        EVENTS.labels(result)
    for reason in COMMIT_HOLD_REASONS:
        COMMIT_HOLDS.labels(reason)
    for table in tables:
        for result in REPAIR_RESULTS:
            CHANGELOG_REPAIRS.labels(table, result)
        for counter in (CHANGELOG_GAPS, CHANGELOG_FOREIGN, CHANGELOG_REWRITES,
                        CHANGELOG_SKIPPED):
            counter.labels(table)


def whmcs_observer(action: str, seconds: float, result: str) -> None:
    calls, latency = _whmcs_children(action, result)
    calls.inc()
    latency.observe(seconds)


@cache
def _whmcs_children(action: str, result: str) -> tuple[Any, Any]:
    """The labelled children, found once (``labels()`` takes a lock and checks the labels
    on every call; two WHMCS calls per Order)."""
    return WHMCS_CALLS.labels(action, result), WHMCS_LATENCY.labels(action)


def salesforce_observer(seconds: float, result: str) -> None:
    SF_QUERIES.labels(result).inc()
    SF_LATENCY.observe(seconds)

"""End to end under failure: kills under load, an outage past retention, a full replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from bench.chaos import ChaosRun, run_chaos
from bench.harness import Pipeline

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=p.env("cli"),
                          capture_output=True, text=True, timeout=180)


def test_short_chaos_no_duplicates_nothing_missing(kafka_bootstrap, tmp_path):
    """make chaos in small: 300 Orders, 4 SIGKILLs of pipeline processes and one 12 s SIGSTOP
    (of the connector, by this seed's plan), WHMCS faults on. Short: WHMCS as fast as in
    the kill-only runs, the pause just past the lowered 10 s session timeouts."""
    report = run_chaos(tmp_path, ChaosRun(
        orders=300, kills=4, pauses=1, pause_s=12, seed=4242, rate=30.0, whmcs_latency_ms=15,
        whmcs_parallelism=16, broker_kills=False, bootstrap=kafka_bootstrap,
        settle_timeout=300))
    assert report["approved"] == 300
    assert report["kills"] == 4
    assert [(p["process"], p["seconds"]) for p in report["pauses"]] == [("connector", 12.0)]
    assert "skipped" not in report["pauses"][0]
    assert report["duplicates"] == 0, report["duplicate_orders"]
    assert report["missing"] == 0, report["missing_orders"]
    assert report["whmcs_orders"] == report["provisioned"]
    assert report["outcomes_contradicting"] == 0, report.get("contradicting_detail")
    # the whole verdict: contradicting outcomes, disagreeing or unprovisioned Orders, faults
    # that did not land, a process that died on its own
    assert report["faults_ok"], {k: report.get(k) for k in (
        "unplanned", "schedule_violations", "kill_plan", "pauses")}
    assert report["ok"], {k: report.get(k) for k in (
        "disagreeing", "not_provisioned", "broken_not_failed", "settled", "errors",
        "opportunities_behind_detail", "rerequested")}


def test_outage_past_retention_closes_itself(kafka_bootstrap, tmp_path):
    """Connector stopped, Orders approved, Salesforce's clock past retention, connector
    restarted — and no CLI call: the connector's gap pass re-requests the stranded Orders."""
    with Pipeline(tmp_path, bootstrap=kafka_bootstrap, accounts=20, orders=60,
                  broken_every=0) as p:
        first = p.sf.approve(3)
        p.wait_settled(first, timeout=120)
        assert p.stop("connector") == 0
        stranded = p.sf.approve(6)
        p.sf.advance_clock(hours=73)
        p.start("connector")
        p.wait_healthy("connector")
        deadline = time.monotonic() + 60
        gaps = []
        while not gaps and time.monotonic() < deadline:
            gaps = p.records(p.kafka.replay_gaps, "replay_gap")
            time.sleep(1)
        assert len(gaps) == 1, "the connector records the gap it could not replay"
        assert gaps[0].value["policy"] == "EARLIEST"
        rows = p.wait_settled(stranded, timeout=180)
        assert all(r["Activation_Status__c"] == "Provisioned" for r in rows.values()), rows
        assert p.invariants(first + stranded)["duplicates"] == 0
        metrics = urllib.request.urlopen(  # noqa: S310 - local
            f"http://127.0.0.1:{p.ports['connector']}/metrics", timeout=5).read().decode()
        assert 'sfprov_connector_reconcile_requests_total{trigger="gap"} 6.0' in metrics
        trace = json.loads(cli(p, "trace", stranded[0], "--json").stdout)
        assert [e["value"]["RequestedBy__c"] for e in trace["events"]] == [
            "sfprov reconciler (gap)"]
        again = cli(p, "reconcile", "--older-than", "0s", "--dry-run")  # stays for operators
        assert again.returncode == 0 and "0 Order(s) Activating" in again.stdout, again.stdout


def move_worker_group_to_the_end(p: Pipeline) -> None:
    """Commit the worker group at the end of every requests partition, as a worker that had
    consumed the records without deciding them would (the worker is stopped)."""
    from confluent_kafka import Consumer, TopicPartition

    plan = cli(p, "replay", "--from-offset", "0:0", "--json")
    assert plan.returncode == 0, plan.stderr
    c = Consumer({"bootstrap.servers": p.kafka.bootstrap_servers,
                  "group.id": json.loads(plan.stdout)["group"], "enable.auto.commit": False})
    try:
        parts = c.list_topics(p.kafka.requests, timeout=30).topics[p.kafka.requests].partitions
        ends = [TopicPartition(p.kafka.requests, n,
                               c.get_watermark_offsets(TopicPartition(p.kafka.requests, n),
                                                       timeout=30)[1]) for n in parts]
        c.commit(offsets=ends, asynchronous=False)
    finally:
        c.close()


def test_reconcile_redrives_requests_that_never_got_an_outcome(kafka_bootstrap, tmp_path):
    """The events are in the requests topic but the worker never decided them although its
    group moved past them (what a lost event looks like): reconcile names them and re-drives
    them; nothing is provisioned twice. While they only wait behind the stopped worker, they
    are left to it."""
    with Pipeline(tmp_path, bootstrap=kafka_bootstrap, accounts=20, orders=40,
                  broken_every=0) as p:
        assert p.stop("worker") == 0
        undecided = p.sf.approve(4)
        deadline = time.monotonic() + 60
        while len(p.records(p.kafka.requests, "provision_request")) < 4 and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        waiting = cli(p, "reconcile", "--older-than", "0s", "--dry-run")
        assert waiting.returncode == 0, waiting.stderr
        assert "0 whose latest request has no outcome" in waiting.stdout, waiting.stdout
        move_worker_group_to_the_end(p)
        dry = cli(p, "reconcile", "--older-than", "0s", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "0 with no provisioning request" in dry.stdout, dry.stdout
        assert "4 whose latest request has no outcome" in dry.stdout, dry.stdout
        run = cli(p, "reconcile", "--older-than", "0s")
        assert "injected 4" in run.stdout, run.stdout + run.stderr
        p.start("worker")
        rows = p.wait_settled(undecided, timeout=120)
        assert all(r["Activation_Status__c"] == "Provisioned" for r in rows.values()), rows
        assert p.invariants(undecided)["duplicates"] == 0
        again = cli(p, "reconcile", "--older-than", "0s", "--dry-run")
        assert "0 Order(s) Activating" in again.stdout, again.stdout


def test_replay_from_time_creates_no_second_whmcs_order(kafka_bootstrap, tmp_path):
    with Pipeline(tmp_path, bootstrap=kafka_bootstrap, accounts=20, orders=60,
                  broken_every=0) as p:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
        ids = p.sf.approve(12)
        p.wait_settled(ids, timeout=120)
        before = p.whmcs.counters()
        plan = cli(p, "replay", "--from-time", since)  # only plans without --execute
        assert plan.returncode == 0 and "would rewind" in plan.stdout, plan.stdout
        assert "stop the worker before --execute" in plan.stdout
        refused = cli(p, "replay", "--from-time", since, "--execute")
        assert refused.returncode == 3 and "refusing" in refused.stderr
        assert p.stop("worker") == 0
        replay = cli(p, "replay", "--from-time", since, "--wait", "60", "--execute")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "rewound group" in replay.stdout
        rewound = int(replay.stdout.split(" by ")[1].split()[0])
        assert rewound >= 12
        outcomes_before = len(p.outcomes())
        p.start("worker")
        p.wait_healthy("worker")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            lag = cli(p, "lag")
            if lag.stdout.splitlines()[0].endswith("lag 0"):
                break
            time.sleep(2)
        assert lag.stdout.splitlines()[0].endswith("lag 0"), lag.stdout
        after = p.whmcs.counters()
        assert after["orders_created"] == before["orders_created"]
        assert p.whmcs.duplicates() == {}
        # Redelivered events are recognised (same event uuid): no contradicting outcome.
        statuses = Counter(o["status"] for o in p.outcomes()[outcomes_before:])
        assert statuses.get("Skipped", 0) == 0 and statuses.get("Failed", 0) == 0, statuses

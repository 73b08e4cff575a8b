"""End to end: the three pipeline processes as subprocesses, both sandboxes, the real broker.

These are the acceptance scenarios of the product as users meet it (issue 8): approved
Orders end Provisioned with their WHMCS ids, broken ones Failed with a readable reason;
the operator CLI explains an order and shows zero lag; one approved Order is one trace across
the three processes (tracing to files); a connector outage past Salesforce's retention is
closed by `reconcile`; a replay of everything creates no second WHMCS order.

The trace test is here, not with the other operations tests (test_operations.py), for this
module's connector runs the default reconciliation (a pass every 10 min, for Orders 15 min
old): nothing but the approval's own event ever requests the traced Order.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from bench.harness import Pipeline
from tests.conftest import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def cli(p: Pipeline, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = p.env("cli")
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap, tmp_path_factory):
    with Pipeline(tmp_path_factory.mktemp("e2e"), bootstrap=kafka_bootstrap, accounts=30,
                  orders=200, broken_every=10, env={"SFPROV_TRACING": "FILE"}) as p:
        yield p


def spans_of(p: Pipeline, order_id: str) -> list[dict]:
    """The spans of ``order_id`` the three processes wrote (FILE tracing, default path)."""
    found = []
    for path in (p.dir / "state" / "traces").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span.get("attributes", {}).get("sfprov.order_id") == order_id:
                found.append(span)
    return found


def test_approved_orders_end_provisioned_or_failed_with_reason(pipeline):
    p = pipeline
    ids = p.sf.approve(40)
    rows = p.wait_settled(ids, timeout=180)
    assert len(rows) == 40
    broken = set(ids) - set(p.provisionable(ids))
    assert broken, "the seed puts broken orders among the first 40"
    for oid in ids:
        row = rows[oid]
        if oid in broken:
            assert row["Activation_Status__c"] == "Failed", oid
            assert row["Activation_Error__c"], oid
        else:
            assert row["Activation_Status__c"] == "Provisioned", (oid, row)
            assert row["WHMCS_Order_Id__c"], oid
            assert p.whmcs.orders_for(oid), oid
    report = p.invariants(ids)
    assert report["duplicates"] == 0 and report["missing"] == 0
    assert report["opportunities_behind"] == 0, report["opportunities_behind_detail"]
    outcomes = [o for o in p.outcomes() if o["order_id"] in set(ids)]
    per_order = Counter(o["order_id"] for o in outcomes)
    assert set(per_order) == set(ids)
    assert all(n == 1 for n in per_order.values()), per_order.most_common(3)
    by_status = Counter(o["status"] for o in outcomes)
    assert by_status["Provisioned"] == len(ids) - len(broken)
    assert by_status["Failed"] == len(broken)


def test_cli_tail_trace_and_lag(pipeline):
    p = pipeline
    ids = p.sf.approve(5)
    p.wait_settled(ids, timeout=120)
    oid = p.provisionable(ids)[0]
    tail = cli(p, "tail", "outcomes", "--from-beginning", "--order-id", oid)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["value"]["status"] for line in lines] == ["Provisioned"]
    trace = cli(p, "trace", oid, "--json")
    assert trace.returncode == 0, trace.stderr
    info = json.loads(trace.stdout)
    assert len(info["events"]) == 1 and len(info["outcomes"]) == 1
    assert info["salesforce_order"]["Activation_Status__c"] == "Provisioned"
    assert [o["id"] for o in info["whmcs_orders"]] == [
        int(float(info["salesforce_order"]["WHMCS_Order_Id__c"]))]
    deadline = time.monotonic() + 60
    while True:
        lag = cli(p, "lag")
        assert lag.returncode == 0, lag.stderr
        totals = [int(line.split("lag ")[-1]) for line in lag.stdout.splitlines()
                  if line.startswith(("worker", "sink"))]
        if totals == [0, 0] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert totals == [0, 0], lag.stdout
    assert "connector" in lag.stdout and "replay id" in lag.stdout


def test_one_approved_order_is_one_trace_across_the_three_processes(pipeline):
    p = pipeline
    # the last provisionable Order: approve(count) in the other tests takes the oldest
    oid = p.provisionable([o["order_id"] for o in p.seeded["orders"]])[-1]
    assert p.sf.approve(ids=[oid]) == [oid]
    rows = p.wait_settled([oid], timeout=120)
    assert rows[oid]["Activation_Status__c"] == "Provisioned"

    def complete():
        spans = spans_of(p, oid)
        names = {s["name"] for s in spans}
        return spans if {"connector.event", "worker.event", "sink.write_back",
                         "salesforce.composite_update"} <= names else None
    spans = wait_for("the sink's spans", complete, 60, interval=1.0)
    by_trace = defaultdict(set)
    for span in spans:
        by_trace[span["context"]["trace_id"]].add(span["resource"]["attributes"]["service.name"])
    assert len(by_trace) == 1, by_trace
    assert next(iter(by_trace.values())) == {"connector", "worker", "sink"}
    names = {s["name"] for s in spans}
    assert {"salesforce.query", "whmcs.AddOrder", "whmcs.AcceptOrder"} <= names, names
    root = next(s for s in spans if s["name"] == "connector.event")
    assert root["parent_id"] is None
    assert root["attributes"]["sfprov.correlation_id"]
    worker = next(s for s in spans if s["name"] == "worker.event")
    assert worker["parent_id"] == root["context"]["span_id"]
    assert worker["attributes"]["sfprov.status"] == "Provisioned"

"""An Order left ``Activating`` with its outcome (its write-back dead-lettered) is no
candidate of the next passes while it stays unchanged: it made every pass read both topics
from its last change on, up to their whole retention (reconciler review). Salesforce and the
topics are fakes here; the reads against a real broker are in test_reconciler.py."""

from __future__ import annotations

import datetime as dt
import time

from common import reconcile as R
from common.settings import ConnectorSettings, KafkaSettings
from connectors import reconciler as rec

NOW = time.time()
STUCK, FRESH = "801000000000001AAA", "801000000000002AAA"


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


ORDERS = [{"Id": STUCK, "LastModifiedDate": iso(NOW - 29 * 86400)},  # decided, not written back
          {"Id": FRESH, "LastModifiedDate": iso(NOW - 1000)}]          # never requested


class Salesforce:
    def __init__(self, orders):
        self.orders = orders

    def count(self, soql):
        return len(self.orders)

    def query(self, soql):
        return [dict(o) for o in self.orders]


def read_from(reads):
    def read_topic(kafka, topic, schema, keys, since, client=None, **kw):
        reads.append((schema, (NOW - since) / 86400))
        if STUCK in keys and schema == "provision_request":
            created = dt.datetime.fromtimestamp(NOW - 29 * 86400 + 1, tz=dt.UTC)
            yield STUCK, {"CreatedDate": created, "IdemKey__c": "k1", "OrderId__c": STUCK}, 0, 5
        elif STUCK in keys:
            yield STUCK, {"idem_key": "k1"}, 0, 9
    return read_topic


def test_a_decided_order_left_activating_is_read_once_then_left_out(monkeypatch):
    reads: list[tuple[str, float]] = []
    monkeypatch.setattr(R, "read_topic", read_from(reads))
    monkeypatch.setattr(R, "_requests_offsets", lambda *a, **k: {0: 100})
    r = rec.Reconciler(KafkaSettings.load({}), ConnectorSettings.load({}),
                       sf=Salesforce(ORDERS), worker_group="sfprov-worker", written=lambda: 0)
    r._pass("periodic", older_than_s=900, now=NOW)
    assert r._ready is not None and r._ready[1] == [FRESH]
    assert max(days for _s, days in reads) > 29  # the first pass reads back to its change
    reads.clear()
    r._ready = None
    r._pass("periodic", older_than_s=900, now=NOW)
    assert r._ready is not None and r._ready[1] == [FRESH]
    assert reads and max(days for _s, days in reads) < 0.1, reads  # an hour and 1,000 s


def test_a_settled_order_that_changes_is_a_candidate_again(monkeypatch):
    monkeypatch.setattr(R, "read_topic", read_from([]))
    monkeypatch.setattr(R, "_requests_offsets", lambda *a, **k: {0: 100})
    kafka = KafkaSettings.load({})
    changed = [{"Id": STUCK, "LastModifiedDate": iso(NOW - 2000)}]  # approved again since
    plan = R.find_stranded(Salesforce(changed), kafka, older_than_s=900, now=NOW,
                           consumed_by="g", settled={STUCK: ORDERS[0]["LastModifiedDate"]})
    assert plan.settled == [] and plan.no_request == [STUCK]
    same = R.find_stranded(Salesforce(ORDERS[:1]), kafka, older_than_s=900, now=NOW,
                           consumed_by="g", settled={STUCK: ORDERS[0]["LastModifiedDate"]})
    assert same.settled == [STUCK] and not same.candidates and same.stranded == []

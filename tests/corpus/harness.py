"""The machinery of the bad-input corpus: one pipeline, injection helpers, what came out.

:class:`Corpus` runs the whole pipeline once (``bench.harness.Pipeline``: the real broker,
both sandboxes, the connector, worker and sink as separate processes) with short retry
deadlines, and offers what the cases in :mod:`tests.corpus.cases` need to inject bad input
at each stage:

* Salesforce — orders built through the REST API (:meth:`Corpus.make_order`), approvals
  (the Flow publishes the event the connector delivers), an Order made ``Activating``
  without the Flow (a lost event, :meth:`Corpus.activating_without_event`), hand-made
  platform events (:meth:`Corpus.inject_event`), REST faults and per-record write errors;
* WHMCS — faults on the ``AddOrder`` of one Salesforce Order only (``match`` on its marker);
* Kafka — records written straight to the requests or outcomes topic
  (:meth:`Corpus.produce`), as a misbehaving producer would.

Every injection returns :class:`Subject` s — what identifies its records downstream (order
id, event uuid, or the topic/partition/offset of a record written directly). After the
injections :meth:`Corpus.collect` reads the outcomes and dead-letter topics and the
Salesforce Orders, and :meth:`Corpus.endings` gives, per subject, the outcomes and dead
letters that belong to it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.harness import Pipeline
from common.avro import AvroSerde, SerdeError
from common.deadletter import parse_headers

REQUEST = AvroSerde("provision_request")
OUTCOME = AvroSerde("provisioning_outcome")
API = "/services/data/v62.0"

#: Settings of the corpus pipeline: short deadlines so the failure paths end in seconds.
PIPELINE_ENV = {
    "WORKER_RETRY_DEADLINE_S": "4",      # WHMCS down this long → Failed(WHMCS_UNAVAILABLE)
    "WHMCS_TIMEOUT_S": "2",              # a hung AddOrder is an unknown result after 2 s
    "WORKER_LOOKUP_GRACE_S": "0.5",
    "WORKER_BATCH_LINGER_S": "0.05",
    "SINK_LINGER_S": "0.2",
    "SINK_MAX_ATTEMPTS": "3",            # UNABLE_TO_LOCK_ROW three times → dead letter
    "SINK_RETRY_BACKOFF_S": "0.2",
    "SINK_RETRY_BACKOFF_MAX_S": "1",
    "SINK_LIMIT_BACKOFF_S": "1",
    "SF_PUBSUB_BACKOFF_INITIAL_S": "0.1",
    "SF_PUBSUB_BACKOFF_MAX_S": "1",
    "SF_EVENTS_INVALID_REPLAY": "EARLIEST",
}


@dataclass(frozen=True)
class Subject:
    """What identifies one injected input downstream (any of the three)."""

    order_id: str | None = None
    event_uuid: str | None = None
    record: tuple[str, int, int] | None = None  # topic, partition, offset written directly


@dataclass
class Found:
    """The endings of one subject."""

    outcomes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, str]] = field(default_factory=list)  # dlq.* headers
    inputs: list[dict[str, Any]] = field(default_factory=list)  # outcomes it wrote itself
    salesforce: dict[str, Any] | None = None  # the Order's fields afterwards
    whmcs_orders: int = 0


class TopicTail:
    """Every committed record of a topic, read from the beginning, incrementally."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "corpus-tail",
                                  "enable.auto.commit": False,
                                  "isolation.level": "read_committed"})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        self.records: list[Any] = []

    def drain(self) -> list[Any]:
        while True:
            batch = self.consumer.consume(500, timeout=0.2)
            if not batch:
                return self.records
            self.records.extend(m for m in batch if not m.error())

    def close(self) -> None:
        self.consumer.close()


class Corpus:
    def __init__(self, directory: Path, bootstrap: str) -> None:
        self.pipeline = Pipeline(directory, bootstrap=bootstrap, accounts=12, orders=100,
                                 broken_every=3, env=PIPELINE_ENV,
                                 sf_options={"keepalive_s": 1.0})
        self._token: str | None = None
        self._pending: list[str] = []
        self._accounts: dict[str, str] = {}
        self.tails: dict[str, TopicTail] = {}
        self._producer: Producer | None = None
        self.record_errors: dict[str, str] = {}  # sandbox per-record write errors
        self.sink_controls: list[Subject] = []  # good outcomes written to the outcomes topic

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Corpus:
        p = self.pipeline.__enter__()
        self.sf, self.whmcs, self.kafka = p.sf, p.whmcs, p.kafka
        orders = p.seeded["orders"]
        self.broken = {}
        for o in orders:
            if o["broken"]:
                self.broken.setdefault(o["broken"], o["order_id"])
        self._pending = [o["order_id"] for o in orders if not o["broken"]]
        for row in self.sf.query("SELECT Id, WH_Account__c FROM Account")["records"]:
            self._accounts[row["Id"]] = row.get("WH_Account__c")
        self.started = {name: proc.pid for name, proc in p.procs.items()}
        for topic in (self.kafka.outcomes, self.kafka.dead_letters, self.kafka.replay_gaps):
            self.tails[topic] = TopicTail(p.bootstrap, topic)
        return self

    def __exit__(self, *exc: object) -> None:
        for tail in self.tails.values():
            tail.close()
        if self._producer is not None:
            self._producer.flush(10)
        self.pipeline.__exit__(*exc)

    # -- Salesforce --------------------------------------------------------------------

    def pending_order(self) -> str:
        """A seeded, provisionable Order in Pending Review no other case uses."""
        return self._pending.pop(0)

    def healthy_account(self) -> str:
        """An Account whose WH_Account__c is an active WHMCS client."""
        broken = {"", None, "999999"}
        return next(a for a, wh in sorted(self._accounts.items())
                    if wh not in broken and int(wh) > 1003)

    def rest(self, method: str, path: str, body: dict | None = None) -> Any:
        for _attempt in range(2):
            if self._token is None:
                self._token = self.sf.login()["access_token"]
            resp = requests.request(method, self.sf.instance_url + API + path, json=body,
                                    headers={"Authorization": f"Bearer {self._token}"},
                                    verify=self.sf.ca_path or True, timeout=30)
            if resp.status_code == 401:
                self._token = None
                continue
            if resp.status_code >= 400:
                raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text}")
            return resp.json() if resp.content else None
        raise AssertionError(f"{method} {path}: token refused twice")

    def create(self, sobject: str, fields: dict[str, Any]) -> str:
        """A record made as a CS user would (the integration user may not create Product2)."""
        return str(self.sf.create(sobject, fields)["Id"])

    def make_order(self, items: list[dict[str, Any]], *, account_id: str | None = None,
                   wh_account: str | None = None) -> str:
        """A new Order in Pending Review. ``items``: Product2 fields plus ``Quantity``.
        ``wh_account`` makes a new Account with that WH_Account__c."""
        if wh_account is not None:
            account_id = self.create("Account", {"Name": f"Corpus {uuid.uuid4().hex[:6]}",
                                                 "WH_Account__c": wh_account})
        account_id = account_id or self.healthy_account()
        opp = self.create("Opportunity", {"Name": "Corpus opportunity", "AccountId": account_id,
                                          "StageName": "Post Processing",
                                          "CloseDate": "2026-12-31"})
        order = self.create("Order", {"Name": "Corpus order", "AccountId": account_id,
                                      "OpportunityId": opp, "Status": "Pending Review",
                                      "EffectiveDate": "2026-12-01",
                                      "Activation_Status__c": "Pending Review"})
        for item in items:
            fields = {k: v for k, v in item.items() if k != "Quantity"}
            product = self.create("Product2", {"Name": "Corpus product", "IsActive": True,
                                               **fields})
            self.create("OrderItem", {"OrderId": order, "Product2Id": product,
                                      "Quantity": item.get("Quantity", 1), "UnitPrice": 100.0})
        return order

    def approve(self, *order_ids: str) -> list[Subject]:
        """Approve as customer service does: the Flow publishes the event."""
        return [Subject(order_id=o) for o in self.sf.approve(ids=list(order_ids))]

    def activating_without_event(self, order_id: str) -> str:
        """``Activating`` without the Flow's event (as when Salesforce lost it)."""
        self.sf.update("Order", order_id, {"Activation_Status__c": "Activating"},
                       run_flow=False)
        return order_id

    def with_whmcs_id(self, order_id: str, whmcs_order_id: int = 770001) -> str:
        """The Order carries a WHMCS order id already (provisioned by other means)."""
        self.sf.update("Order", order_id, {"WHMCS_Order_Id__c": whmcs_order_id})
        return order_id

    def inject_event(self, kind: str = "raw", **raw: Any) -> Subject:
        if "payload" in raw:
            raw["payload_b64"] = base64.b64encode(raw.pop("payload")).decode()
        if isinstance(raw.get("schema_json"), dict):
            raw["schema_json"] = json.dumps(raw["schema_json"])
        answer = self.sf.inject_event(kind, **raw)
        order_id = (raw.get("fields") or {}).get("OrderId__c") or raw.get("order_id")
        return Subject(order_id=order_id if isinstance(order_id, str) and order_id else None,
                       event_uuid=answer["uuid"])

    # -- Kafka -------------------------------------------------------------------------

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *,
                headers: Iterable[tuple[str, bytes]] = (), order_id: str | None = None,
                event_uuid: str | None = None) -> Subject:
        """Write one record as a foreign producer would (Java-compatible partitioner)."""
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.pipeline.bootstrap,
                                       "partitioner": "murmur2_random", "acks": "all"})
        delivered: list[Any] = []
        self._producer.produce(topic, key=key, value=value, headers=list(headers),
                               on_delivery=lambda err, msg: delivered.append((err, msg)))
        self._producer.flush(30)
        err, msg = delivered[0]
        assert err is None, err
        return Subject(order_id=order_id, event_uuid=event_uuid,
                       record=(topic, msg.partition(), msg.offset()))

    def produce_request(self, value: dict[str, Any] | bytes | None, *, key: bytes | None = None,
                        headers: Iterable[tuple[str, bytes]] | None = None) -> Subject:
        if isinstance(value, dict):
            order_id, event_uuid = value.get("OrderId__c"), value["event_uuid"]
            key = key if key is not None else (order_id or "").encode()
            data: bytes | None = REQUEST.encode(value)
            headers = REQUEST.headers() if headers is None else headers
        else:
            order_id, event_uuid, data = None, None, value
        return self.produce(self.kafka.requests, key, data, headers=headers or (),
                            order_id=order_id, event_uuid=event_uuid)

    def produce_outcome(self, value: dict[str, Any] | bytes | None, *,
                        key: bytes | None = None) -> Subject:
        if isinstance(value, dict):
            return self.produce(self.kafka.outcomes, value["order_id"].encode(),
                                OUTCOME.encode(value), headers=OUTCOME.headers(),
                                order_id=value["order_id"], event_uuid=value.get("event_uuid"))
        return self.produce(self.kafka.outcomes, key, value)

    # -- observations --------------------------------------------------------------------

    def collect(self) -> None:
        for tail in self.tails.values():
            tail.drain()

    def outcomes(self) -> list[dict[str, Any]]:
        """Every decodable outcome, with ``_partition`` and ``_offset``."""
        out = []
        for m in self.tails[self.kafka.outcomes].records:
            with contextlib.suppress(SerdeError):
                if m.value() is not None:
                    out.append({**OUTCOME.decode(m.value()), "_partition": m.partition(),
                                "_offset": m.offset()})
        return out

    def dead_letters(self) -> list[dict[str, str]]:
        """The ``dlq.*`` headers of every dead letter, plus ``_key`` and, for requests the
        worker could decode no further, the event uuid found in the original bytes."""
        out = []
        for m in self.tails[self.kafka.dead_letters].records:
            h = parse_headers(m.headers())
            h["_key"] = (m.key() or b"").decode(errors="replace")
            if h.get("stage") == "worker" and not h.get("event_uuid") and m.value():
                with contextlib.suppress(SerdeError, ValueError):
                    h["event_uuid"] = str(REQUEST.decode(m.value()).get("event_uuid") or "")
            out.append(h)
        return out

    def gaps(self) -> list[Any]:
        return self.tails[self.kafka.replay_gaps].records

    def sf_orders(self, order_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = sorted({o for o in order_ids if o and len(o) == 18 and o.isalnum()})
        if not ids:
            return {}
        return self.pipeline.sf_orders_fields(ids, "Activation_Status__c, Activation_Error__c, "
                                                   "WHMCS_Order_Id__c, Status")

    def endings(self, subjects: list[Subject], outcomes: list[dict[str, Any]],
                letters: list[dict[str, str]]) -> dict[Subject, Found]:
        """Per subject, which of ``outcomes`` and ``letters`` are its (the same objects)."""
        rows = self.sf_orders(s.order_id for s in subjects if s.order_id)
        markers = self.whmcs.counters().get("orders_by_marker") or {}
        out: dict[Subject, Found] = {}
        for s in subjects:
            found = Found()
            for o in outcomes:
                if s.record == (self.kafka.outcomes, o["_partition"], o["_offset"]):
                    found.inputs.append(o)  # written to the outcomes topic by the case
                elif (o.get("event_uuid") == s.event_uuid) if s.event_uuid else \
                        (s.order_id is not None and o["order_id"] == s.order_id):
                    found.outcomes.append(o)
            for h in letters:
                if _dead_letter_matches(h, s):
                    found.dead_letters.append(h)
            if s.order_id:
                found.salesforce = rows.get(s.order_id)
                found.whmcs_orders = int(markers.get(s.order_id, 0))
            out[s] = found
        return out

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            if ready():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    def wait_provisioned(self, subjects: list[Subject], timeout: float = 60) -> None:
        ids = [s.order_id for s in subjects if s.order_id]
        self.wait(lambda: all(r.get("Activation_Status__c") == "Provisioned"
                              for r in self.sf_orders(ids).values())
                  and len(self.sf_orders(ids)) == len(ids), timeout,
                  f"{len(ids)} control Orders to be Provisioned in Salesforce")

    def health(self, name: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.pipeline.ports[name]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metric(self, name: str, prefix: str) -> float:
        url = f"http://127.0.0.1:{self.pipeline.ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))


def _dead_letter_matches(h: dict[str, str], s: Subject) -> bool:
    if s.event_uuid and h.get("event_uuid") == s.event_uuid:
        return True
    if s.order_id and h.get("order_id") == s.order_id:
        return True
    if s.record is not None:
        topic, partition, offset = s.record
        return (h.get("source_topic") == topic and h.get("source_partition") == str(partition)
                and h.get("source_offset") == str(offset))
    return False

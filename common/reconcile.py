"""Reconciliation: find Orders left ``Activating`` that nothing will provision, and re-request them.

One mechanism for the operator's ``sfprov reconcile`` and the connector's automatic passes
(:mod:`connectors.reconciler`): :func:`find_stranded` makes a :class:`Plan`,
:func:`request_record` builds the provisioning request for each stranded Order. The request
goes to the requests topic like any platform event, so the worker's dedupe, Salesforce guard
and WHMCS lookup apply to it unchanged: re-requesting an Order that is in fact being
provisioned creates no second WHMCS order (it ends ``Skipped``/``Duplicate``).

An Order is stranded when it is ``Activating`` (unchanged for ``older_than_s``) and either

* **no request** in Kafka since its last change — its platform event never reached the
  requests topic (a connector outage past Salesforce's retention, an event lost on the bus); or
* its latest request has **no outcome** — the event was lost past the requests topic. With
  ``consumed_by`` (the automatic passes) only when that group has consumed past the request:
  a request still waiting in the worker's lag is not lost.

Only the part of each topic written since the oldest candidate's last change (less an hour
for clock skew) is read, so a pass costs what changed recently, not the topic's retention;
an Order a caller's earlier pass found decided and that has not changed since is no
candidate (``settled``).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, TopicPartition

from common import lag
from common.avro import AvroSerde, SerdeError, registry_for
from common.connection import kafka_config
from common.errors import KafkaError
from common.lag import end_offsets
from common.settings import KafkaSettings

ORDER_FIELDS = ("Id, OrderNumber, Status, Activation_Status__c, Activation_Error__c, "
                "Activation_Error_DateTime__c, WHMCS_Order_Id__c, OpportunityId, "
                "Account.WH_Account__c, LastModifiedDate")
ACTIVATING = "Activation_Status__c = 'Activating'"
SKEW_S = 3600.0  # read the topics from this long before the oldest candidate's last change


class QueryClient(Protocol):
    def query(self, soql: str) -> list[dict[str, Any]]: ...

    def count(self, soql: str) -> int: ...


@dataclass
class Plan:
    activating: int = 0
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)  # by Order id
    no_request: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    #: candidates whose latest request has its outcome: Order id → its ``LastModifiedDate``
    #: (what a caller passes back as ``settled`` to its next pass)
    decided: dict[str, str] = field(default_factory=dict)
    #: Orders left out as ``settled`` (decided, unchanged since): still Activating
    settled: list[str] = field(default_factory=list)

    @property
    def stranded(self) -> list[str]:
        return self.no_request + self.undecided


def soql_datetime(epoch_s: float) -> str:
    """A SOQL datetime literal (UTC, whole seconds): ``2026-11-20T08:00:00Z``."""
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sf_time(value: str | None) -> float:
    """A Salesforce datetime (``2026-11-20T08:00:00.000+0000``) as epoch seconds."""
    if not value:
        return 0.0
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("+0000", "+00:00")
                                     ).timestamp()


def find_stranded(sf: QueryClient, kafka: KafkaSettings, *, older_than_s: float,
                  now: float | None = None, changed_before: float | None = None,
                  consumed_by: str | None = None,
                  client: dict[str, Any] | None = None,
                  settled: dict[str, str] | None = None) -> Plan:
    """The Orders to re-request (see the module). ``changed_before``: only Orders whose last
    change is before this time (a gap pass: later Orders' events arrive normally).
    ``client``: more properties of its Kafka clients (the operator CLI's quieter logging).
    ``settled``: Orders an earlier pass found decided (:attr:`Plan.decided`), left out while
    their ``LastModifiedDate`` is the same — one Order left ``Activating`` with its outcome
    (a write-back dead-lettered) made every pass read both topics from its last change on,
    up to their whole retention.
    A topic that cannot be read whole raises (:func:`read_topic`): no plan beats a wrong one."""
    now = time.time() if now is None else now
    cutoff = now - older_than_s if changed_before is None else \
        min(now - older_than_s, changed_before)
    # Only the Orders unchanged since the cutoff come back, not every Order Activating: in a
    # burst of approvals that is thousands of Orders in flight, whose records a pass would
    # parse for nothing (the connector's RSS kept the high-water mark: +3.6 MB at a pass
    # over 4,089 of them in a million-Order soak). The bound is rounded up to the next
    # second (SOQL datetimes have none smaller); the exact test is made below.
    plan = Plan(activating=sf.count(f"SELECT COUNT() FROM Order WHERE {ACTIVATING}"))
    if plan.activating == 0:
        return plan
    older = sf.query(f"SELECT {ORDER_FIELDS} FROM Order WHERE {ACTIVATING} "
                     f"AND LastModifiedDate < {soql_datetime(math.floor(cutoff) + 1)}")
    for order in older:
        changed = sf_time(order.get("LastModifiedDate"))
        if now - changed >= older_than_s and (changed_before is None or changed <= changed_before):
            if settled and settled.get(order["Id"]) == order.get("LastModifiedDate"):
                plan.settled.append(order["Id"])
                continue
            plan.candidates[order["Id"]] = order
    if not plan.candidates:
        return plan
    since = min(min(sf_time(o.get("LastModifiedDate")) for o in plan.candidates.values()),
                now) - SKEW_S
    latest: dict[str, tuple[float, str, int, int]] = {}  # order → (created, idem, part, off)
    for key, value, partition, offset in read_topic(kafka, kafka.requests, "provision_request",
                                                    set(plan.candidates), since,
                                                    client=client):
        created = value["CreatedDate"].timestamp()
        if created >= latest.get(key, (0.0, "", 0, 0))[0]:
            latest[key] = (created, idem_key_of(value), partition, offset)
    # the worker's committed offsets first: it commits a request only once its outcome is
    # acknowledged, so every request below them has its outcome in what is read next (read
    # the other way round, one handled between the two reads looked undecided)
    consumed = _requests_offsets(kafka, consumed_by, client) if consumed_by else None
    decided = {(key, value["idem_key"]) for key, value, _p, _o in read_topic(
        kafka, kafka.outcomes, "provisioning_outcome", set(latest), since, client=client)}
    for oid, order in plan.candidates.items():
        if oid not in latest or latest[oid][0] + 1.0 < sf_time(order.get("LastModifiedDate")):
            plan.no_request.append(oid)
            continue
        _created, idem_key, partition, offset = latest[oid]
        if (oid, idem_key) in decided:
            plan.decided[oid] = order.get("LastModifiedDate") or ""
            continue
        if consumed is None or offset < consumed.get(partition, -1):
            plan.undecided.append(oid)
    return plan


def idem_key_of(value: dict[str, Any]) -> str:
    """The IdemKey the worker dedupes a request on (as :func:`streams.decide.idem_key_of`)."""
    key = value.get("IdemKey__c")
    return str(key) if key else f"{value.get('OrderId__c')}-event-{value.get('event_uuid')}"


def request_record(kafka: KafkaSettings, order_id: str, *, source: str, requested_by: str,
                   now_ms: int | None = None,
                   serde: AvroSerde | None = None) -> tuple[str, bytes, bytes,
                                                            list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of a provisioning request for ``order_id``; ``source``
    (``reconcile``, ``reconcile-gap``, ``reconcile-periodic``) goes to the
    ``sfprov.source`` header, ``requested_by`` to ``RequestedBy__c`` (``sfprov trace``)."""
    now_ms = now_ms or int(time.time() * 1000)
    serde = serde or AvroSerde("provision_request", topic=kafka.requests,
                               registry=registry_for(kafka))
    record = {"event_uuid": f"reconcile-{uuid.uuid4()}", "replay_id": b"",
              "schema_id": "reconcile", "channel": "sfprov reconcile",
              "received_at": now_ms, "CreatedDate": now_ms, "CreatedById": "reconcile",
              "OrderId__c": order_id, "IdemKey__c": f"{order_id}-reconcile-{now_ms}",
              "CorrelationId__c": str(uuid.uuid4()), "RequestedBy__c": requested_by,
              "Version__c": 1.0}
    return (kafka.requests, order_id.encode(), serde.encode(record),
            [*serde.headers(), ("sfprov.source", source.encode())])


def _requests_offsets(kafka: KafkaSettings, group: str,
                      client: dict[str, Any] | None = None) -> dict[int, int]:
    """partition → the group's committed offset on the requests topic (negative: none)."""
    c, reader = _consumer(kafka, client), lag.group_reader(kafka, group, **(client or {}))
    try:
        parts = end_offsets(c, kafka.requests)
        return lag.committed_offsets(reader, kafka.requests, parts, timeout=30)
    finally:
        c.close()
        reader.close()


def read_topic(kafka: KafkaSettings, topic: str, schema: str, keys: set[str], since: float,
               idle_timeout_s: float = 15.0,
               client: dict[str, Any] | None = None) -> Iterator[tuple[str, dict[str, Any], int, int]]:
    """(key, decoded value, partition, offset) of the committed records of ``keys`` written
    since ``since`` (epoch s), up to the end offsets seen at the start.

    All of them or an error: a registry that cannot be reached (retryable
    :class:`SerdeError`) or nothing read for ``idle_timeout_s`` before those ends (retryable
    :class:`KafkaError`) raises — a partial read made the Orders not read look as if they
    had no request, and a pass re-requested them."""
    if not keys:
        return
    serde = AvroSerde(schema, topic=topic, registry=registry_for(kafka))
    c = _consumer(kafka, client)
    try:
        bounds = end_offsets(c, topic)
        starts = c.offsets_for_times([TopicPartition(topic, p, int(since * 1000))
                                      for p in bounds], timeout=30)
        todo = {tp.partition: bounds[tp.partition][1] for tp in starts
                if 0 <= tp.offset < bounds[tp.partition][1]}
        if not todo:
            return
        c.assign([TopicPartition(topic, tp.partition, tp.offset) for tp in starts
                  if tp.partition in todo])
        last_progress = time.monotonic()
        while todo and time.monotonic() - last_progress < idle_timeout_s:
            for msg in c.consume(500, timeout=0.5):
                if msg.error():
                    continue
                last_progress = time.monotonic()
                raw_key, raw, partition, offset = msg.key(), msg.value(), msg.partition(), \
                    msg.offset()
                key = raw_key.decode(errors="replace") if raw_key else ""
                if key in keys and raw is not None and partition is not None \
                        and offset is not None:
                    try:
                        value = serde.decode(raw, msg.headers())
                    except SerdeError as exc:
                        if exc.retryable:
                            raise  # the registry away: skipped, a request would look missing
                        continue  # an undecodable record is the dead letters' business
                    yield key, value, partition, offset
            # positions pass transaction markers too: compare them, not record offsets
            for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
        if todo:
            raise KafkaError(f"{topic}: nothing read for {idle_timeout_s:g} s with partition(s) "
                             f"{', '.join(map(str, sorted(todo)))} not read to their end",
                             retryable=True)
    finally:
        c.close()


def _consumer(kafka: KafkaSettings, client: dict[str, Any] | None = None) -> Consumer:
    # ``earliest``: a start that retention deleted (between the look-up and the fetch) reads
    # on from the log start, whose records are all that is left. librdkafka's default jumped
    # to the end: the next record written took the position past it, and the records still
    # there were never read (their Orders looked request-less and were re-requested).
    return Consumer(kafka_config(kafka, **{
        "group.id": f"sfprov-reconcile-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "auto.offset.reset": "earliest", "enable.partition.eof": False, **(client or {})}))

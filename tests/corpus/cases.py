"""The bad-input corpus as a table: one :class:`Case` per kind of bad input.

Each case says at which stage the bad input enters, how it is injected (``inject`` does it
and returns the :class:`~tests.corpus.harness.Subject` s to follow), and how it must end
(:class:`Ending`): an outcome with a status and error code, a dead letter from a given stage
with a reason — or, for faults of the outside world, good Orders that still end
``Provisioned``. Phase ``A`` cases are injected all together alongside good controls;
phase ``B`` cases are global faults (Salesforce down, token expired, API limit, replay id
past retention), run one after another, each with its own good controls.

What each stage does with bad input (read from the code, checked here):

* connector (``connectors/decode.py``) — an event it cannot decode, whose schema id
  ``GetSchema`` refuses or serves as invalid Avro, without ``OrderId__c``, or too large for a
  Kafka record → dead letter (``dlq.error_code`` undecodable / unknown_schema /
  missing_order_id / oversized); newer writer schemas are projected onto ours.
* worker (``streams/``) — a record it cannot decode (or without an Order id) → dead letter
  ``UNDECODABLE``; everything else → one outcome: ``Failed`` with a mapping or WHMCS code,
  ``Skipped`` (not Activating, already provisioned), ``Duplicate``.
* sink (``sinks/``) — an undecodable outcome → dead letter; a record Salesforce refuses
  permanently (or ``UNABLE_TO_LOCK_ROW`` past ``SINK_MAX_ATTEMPTS``) → dead letter with
  ``dlq.sf_errors``; the rest of the batch is written.
"""

from __future__ import annotations

import copy
import json
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.avro import AvroSerde, schema_json
from connectors.offsets import OffsetCodec
from sandbox.salesforce.events import PROVISION_SCHEMA
from sandbox.salesforce.ids import checksum
from tests.corpus.harness import Subject

if TYPE_CHECKING:
    from tests.corpus.harness import Corpus


@dataclass(frozen=True)
class Ending:
    """How every subject of a case must end (fields left None are not checked)."""

    outcomes: tuple[str, ...] = ()  # statuses of its outcomes (exactly these, any order)
    code: str | None = None  # error_code of its non-Provisioned outcome
    text: str = ""  # ... found in that outcome's error_message
    dead_letter: str | None = None  # stage of its one dead letter (None: no dead letter)
    dl_code: str | None = None  # dlq.error_code of that dead letter
    dl_text: str = ""  # ... found in dlq.reason
    salesforce: str | None = None  # Order.Activation_Status__c afterwards
    sf_error: str = ""  # ... found in Order.Activation_Error__c
    whmcs_orders: int | None = None  # WHMCS orders carrying the Order's marker
    recovered: bool | None = None  # the Provisioned outcome's ``recovered`` flag


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # connector | worker | salesforce-data | whmcs | sink | salesforce-api
    how: str  # the bad input, in one line
    inject: Callable[[Corpus], list[Subject]]
    expect: Ending
    phase: str = "A"
    xfail: str = ""  # a known bug in code this suite may not change (strict xfail)


PROVISIONED = Ending(outcomes=("Provisioned",), salesforce="Provisioned", whmcs_orders=1)


def failed(code: str, text: str = "", **kw: Any) -> Ending:
    """Failed outcome with ``code``, written back to Salesforce, no WHMCS order."""
    return Ending(outcomes=("Failed",), code=code, text=text, salesforce="Failed",
                  sf_error=code, whmcs_orders=0, **kw)


# -- helpers of the injections -------------------------------------------------------------

def event_schema(name: str, **changes: Any) -> dict[str, Any]:
    """The platform-event schema with fields retyped (``Field=type``), removed
    (``Field=None``) or added (a new name)."""
    raw = copy.deepcopy(json.loads(schema_json("OrderProvisionRequested__e")))
    raw["doc"] = name
    by_name = {f["name"]: f for f in raw["fields"]}
    for field_name, ftype in changes.items():
        if ftype is None:
            raw["fields"].remove(by_name[field_name])
        elif field_name in by_name:
            by_name[field_name]["type"] = ftype
        else:
            raw["fields"].append({"name": field_name, "type": ftype, "default": None})
    return raw


def request(order_id: str | None, *, idem_key: str | None = "default",
            event_uuid: str | None = None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    event_uuid = event_uuid or str(uuid.uuid4())
    if idem_key == "default":
        idem_key = f"{order_id}-corpus-{event_uuid[:8]}"
    return {"event_uuid": event_uuid, "replay_id": b"\x00corpus", "schema_id": "corpus",
            "channel": "/event/OrderProvisionRequested__e", "received_at": now,
            "CreatedDate": now, "CreatedById": "005000000000000AAA", "OrderId__c": order_id,
            "IdemKey__c": idem_key, "CorrelationId__c": f"corpus-{event_uuid[:8]}",
            "RequestedBy__c": "corpus", "Version__c": 1.0}


def outcome(order_id: str, status: str = "Failed", **fields: Any) -> dict[str, Any]:
    value = {"order_id": order_id, "opportunity_id": None, "idem_key": f"{order_id}-corpus",
             "correlation_id": None, "event_uuid": str(uuid.uuid4()), "status": status,
             "whmcs_client_id": None, "whmcs_order_id": None, "whmcs_service_ids": [],
             "whmcs_addon_ids": [], "whmcs_invoice_id": None, "error_code": "CORPUS_TEST",
             "error_message": "written by the bad-input corpus", "attempts": 0,
             "recovered": False, "requested_at": None,
             "completed_at": int(time.time() * 1000)}
    value.update(fields)
    return value


GOOD = {"WHMCS_Product_Id__c": "1", "Billing_Cycle__c": "Monthly", "Item_Class__c": "Service",
        "Portal_ConfigOptions_JSON__c": '{"1": "2"}'}

def unknown_id(id15: str) -> str:
    """A well-formed 18-character id (with its case checksum) no record has."""
    return id15 + checksum(id15)


UNKNOWN_ORDER = unknown_id("801ZZ0000099999")


def bad_item(**fields: Any) -> Callable[[Corpus], list[Subject]]:
    """An Order whose one Service item carries ``fields`` over a good mapping, approved."""
    def inject(c: Corpus) -> list[Subject]:
        return c.approve(c.make_order([{**GOOD, **fields}]))
    return inject


def items(*item_list: dict[str, Any]) -> Callable[[Corpus], list[Subject]]:
    def inject(c: Corpus) -> list[Subject]:
        return c.approve(c.make_order([{**GOOD, **i} for i in item_list]))
    return inject


def seeded_broken(kind: str) -> Callable[[Corpus], list[Subject]]:
    """A seeded Order the sandbox broke on purpose (``sandbox/seed.py``), approved."""
    def inject(c: Corpus) -> list[Subject]:
        return c.approve(c.broken[kind])
    return inject


def whmcs_fault(**spec: Any) -> Callable[[Corpus], list[Subject]]:
    """A good Order whose AddOrder (only) meets ``spec`` in the WHMCS sandbox."""
    def inject(c: Corpus) -> list[Subject]:
        order_id = c.pending_order()
        c.whmcs.set_faults("AddOrder", match=f"sfOrderId={order_id}", **spec)
        return c.approve(order_id)
    return inject


def raw_event(**raw: Any) -> Callable[[Corpus], list[Subject]]:
    def inject(c: Corpus) -> list[Subject]:
        return [c.inject_event(**raw)]
    return inject


def direct_request(make: Callable[[Corpus], dict[str, Any] | bytes | None],
                   **kw: Any) -> Callable[[Corpus], list[Subject]]:
    def inject(c: Corpus) -> list[Subject]:
        return [c.produce_request(make(c), **kw)]
    return inject


def direct_outcome(make: Callable[[Corpus], dict[str, Any] | bytes | None],
                   **kw: Any) -> Callable[[Corpus], list[Subject]]:
    def inject(c: Corpus) -> list[Subject]:
        return [c.produce_outcome(make(c), **kw)]
    return inject


def sink_record_error(code: str) -> Callable[[Corpus], list[Subject]]:
    """A Failed outcome for a real Order that Salesforce refuses with ``code``."""
    def inject(c: Corpus) -> list[Subject]:
        order_id = c.pending_order()
        c.record_errors[order_id] = code
        c.sf.set_faults(record_errors=c.record_errors)
        return [c.produce_outcome(outcome(order_id))]
    return inject


# connector ---------------------------------------------------------------------------------

def _pending_event(c: Corpus, **raw: Any) -> list[Subject]:
    return [c.inject_event(fields={"OrderId__c": c.pending_order(), **raw.pop("fields", {})},
                           **raw)]


def _redelivered(c: Corpus) -> list[Subject]:
    """Salesforce delivers the same event (same uuid, same IdemKey) twice."""
    order_id, event_uuid = c.pending_order(), str(uuid.uuid4())
    fields = {"OrderId__c": order_id, "IdemKey__c": f"{order_id}-redelivered"}
    c.inject_event(fields=fields, uuid=event_uuid)
    return [c.inject_event(fields=fields, uuid=event_uuid)]


def _truncated_event(c: Corpus) -> list[Subject]:
    whole = PROVISION_SCHEMA.encode({"CreatedDate": 1, "CreatedById": "005000000000000AAA",
                                     "OrderId__c": c.pending_order(), "IdemKey__c": "k"})
    return [c.inject_event(payload=whole[: len(whole) // 2])]


CONNECTOR = [
    Case("connector.malformed-avro", "connector", "Pub/Sub event whose payload is not Avro",
         raw_event(kind="malformed"),
         Ending(dead_letter="connector", dl_code="undecodable", dl_text="cannot decode")),
    Case("connector.unknown-schema-id", "connector",
         "event with a schema id GetSchema answers NOT_FOUND",
         lambda c: [c.inject_event("unknown_schema", order_id=c.pending_order())],
         Ending(dead_letter="connector", dl_code="unknown_schema", dl_text="unknown schema id")),
    Case("connector.schema-not-avro", "connector",
         "event whose schema (from GetSchema) is not valid Avro",
         raw_event(schema_json='{"type": "record", "name": "Broken"', payload=b"\x02ab"),
         Ending(dead_letter="connector", dl_code="unknown_schema", dl_text="not valid Avro")),
    Case("connector.missing-order-id", "connector", "event without OrderId__c (null)",
         raw_event(fields={"IdemKey__c": "no-order"}),
         Ending(dead_letter="connector", dl_code="missing_order_id")),
    Case("connector.empty-order-id", "connector", "event with OrderId__c = ''",
         raw_event(fields={"OrderId__c": ""}),
         Ending(dead_letter="connector", dl_code="missing_order_id")),
    Case("connector.blank-order-id", "connector", "event with OrderId__c = '   '",
         raw_event(fields={"OrderId__c": "   "}),
         Ending(dead_letter="connector", dl_code="invalid_order_id",
                dl_text="not a 15- or 18-character Salesforce id")),
    Case("connector.wrong-type-order-id", "connector",
         "writer schema types OrderId__c as long (wrong-typed field)",
         raw_event(schema_json=event_schema("long-id", OrderId__c=["null", "long"]),
                   fields={"OrderId__c": 801}),
         Ending(dead_letter="connector", dl_code="undecodable")),
    Case("connector.wrong-type-created-date", "connector",
         "writer schema types CreatedDate as string",
         raw_event(schema_json=event_schema("string-date", CreatedDate="string"),
                   fields={"CreatedDate": "yesterday"}),
         Ending(dead_letter="connector", dl_code="undecodable")),
    Case("connector.missing-required-field", "connector",
         "writer schema without CreatedById (required, no default)",
         raw_event(schema_json=event_schema("no-creator", CreatedById=None)),
         Ending(dead_letter="connector", dl_code="undecodable")),
    Case("connector.truncated-payload", "connector", "Avro payload cut in half",
         _truncated_event,
         Ending(dead_letter="connector", dl_code="undecodable")),
    Case("connector.oversized-order-id", "connector",
         "OrderId__c of 50,000 characters (oversized field, not a Salesforce id)",
         raw_event(fields={"OrderId__c": "801" + "9" * 49_997}),
         Ending(dead_letter="connector", dl_code="invalid_order_id",
                dl_text="(50000 characters)")),
    Case("connector.oversized-event", "connector",
         "event of ~1 MB (Salesforce's limit) — more than a Kafka record may hold",
         lambda c: _pending_event(c, fields={"CorrelationId__c": "x" * 999_000}),
         Ending(dead_letter="connector", dl_code="oversized", dl_text="too large for Kafka")),
    Case("connector.newer-schema", "connector",
         "event written with a newer schema (an extra field): projected, not refused",
         lambda c: _pending_event(c, schema_json=event_schema("v2", Priority__c=["null",
                                                                                  "string"]),
                                  fields={"Priority__c": "high"}),
         Ending(outcomes=("Skipped",), code="NOT_ACTIVATING", salesforce="Pending Review")),
    Case("connector.redelivered-event", "connector",
         "the same event (uuid, IdemKey) delivered twice",
         _redelivered,
         Ending(outcomes=("Skipped",), code="NOT_ACTIVATING")),
]


# worker: records written straight to the requests topic ------------------------------------

def _lost_event(c: Corpus) -> str:
    return c.activating_without_event(c.pending_order())


def _duplicate_idem(c: Corpus) -> list[Subject]:
    order_id = _lost_event(c)
    for _ in range(2):
        c.produce_request(request(order_id, idem_key=f"{order_id}-dup"))
    return [Subject(order_id=order_id)]


def _wrong_schema_bytes(c: Corpus) -> bytes:
    return AvroSerde("provisioning_outcome").encode(outcome(c.pending_order()))


def _confluent_unknown_id(c: Corpus) -> bytes:
    # magic byte 0, 4-byte schema id, Avro: as a registry-aware producer writes it
    return struct.pack(">bI", 0, 999_999) + AvroSerde("provision_request").encode(
        request(c.pending_order()))


WORKER = [
    Case("worker.tombstone", "worker", "tombstone (null value) on the requests topic",
         direct_request(lambda c: None, key=b"corpus-tombstone"),
         Ending(dead_letter="worker", dl_code="UNDECODABLE", dl_text="tombstone")),
    Case("worker.garbage-bytes", "worker", "bytes that are not Avro",
         direct_request(lambda c: b"\xde\xad\xbe\xef not avro at all", key=b"corpus-garbage"),
         Ending(dead_letter="worker", dl_code="UNDECODABLE", dl_text="cannot decode")),
    Case("worker.truncated-avro", "worker", "a request record cut in half",
         direct_request(lambda c: AvroSerde("provision_request").encode(
             request(c.pending_order()))[:40], key=b"corpus-truncated"),
         Ending(dead_letter="worker", dl_code="UNDECODABLE")),
    Case("worker.other-schema", "worker", "Avro of another schema (an outcome record)",
         direct_request(_wrong_schema_bytes, key=b"corpus-other-schema"),
         Ending(dead_letter="worker", dl_code="UNDECODABLE")),
    Case("worker.confluent-unknown-schema-id", "worker",
         "Confluent wire format with a schema id no registry knows (no registry configured)",
         direct_request(_confluent_unknown_id, key=b"corpus-confluent", headers=[]),
         Ending(dead_letter="worker", dl_code="UNDECODABLE", dl_text="999999")),
    Case("worker.empty-order-id", "worker", "request with OrderId__c = ''",
         direct_request(lambda c: request("")),
         Ending(dead_letter="worker", dl_code="UNDECODABLE", dl_text="OrderId__c is empty")),
    Case("worker.missing-idem-key", "worker",
         "request without IdemKey__c for an Activating Order (deduplicated on event uuid)",
         direct_request(lambda c: request(_lost_event(c), idem_key=None)),
         PROVISIONED),
    Case("worker.duplicate-idem-key", "worker",
         "two events (two uuids) with one IdemKey for an Activating Order",
         _duplicate_idem,
         Ending(outcomes=("Duplicate", "Provisioned"), code="DUPLICATE_IDEM_KEY",
                whmcs_orders=1, salesforce="Provisioned")),
    Case("worker.unknown-order-id", "worker",
         "request for an Order id Salesforce does not have",
         direct_request(lambda c: request(UNKNOWN_ORDER)),
         Ending(outcomes=("Failed",), code="ORDER_NOT_FOUND", dead_letter="sink",
                dl_code="NOT_FOUND")),
    Case("worker.soql-injection-order-id", "worker",
         "request whose OrderId__c is a SOQL injection attempt",
         direct_request(lambda c: request("801' OR Name != '")),
         Ending(dead_letter="worker", dl_code="UNDECODABLE",
                dl_text="not a 15- or 18-character Salesforce id")),
    Case("worker.not-activating", "worker",
         "request for an Order still in Pending Review",
         direct_request(lambda c: request(c.pending_order())),
         Ending(outcomes=("Skipped",), code="NOT_ACTIVATING", salesforce="Pending Review",
                whmcs_orders=0)),
    Case("worker.already-provisioned", "worker",
         "request for an Order that already has WHMCS_Order_Id__c",
         direct_request(lambda c: request(c.with_whmcs_id(c.pending_order()))),
         Ending(outcomes=("Skipped",), code="ALREADY_PROVISIONED", whmcs_orders=0)),
]


# salesforce data: bad Orders, approved (their event goes through the connector) -------------

DATA = [
    Case("data.missing-whmcs-client", "salesforce-data", "Account without WH_Account__c",
         seeded_broken("MISSING_WHMCS_CLIENT"), failed("MISSING_WHMCS_CLIENT")),
    Case("data.invalid-whmcs-client", "salesforce-data", "WH_Account__c = 'CLIENT-12'",
         lambda c: c.approve(c.make_order([GOOD], wh_account="CLIENT-12")),
         failed("INVALID_WHMCS_CLIENT")),
    Case("data.whmcs-client-not-found", "salesforce-data",
         "WH_Account__c names a client WHMCS does not have",
         seeded_broken("WHMCS_CLIENT_NOT_FOUND"), failed("WHMCS_ERROR", "Client ID Not Found")),
    Case("data.whmcs-client-closed", "salesforce-data", "the WHMCS client is Closed",
         seeded_broken("WHMCS_CLIENT_CLOSED"), failed("WHMCS_ERROR", "status is Closed")),
    Case("data.missing-product-mapping", "salesforce-data",
         "Product2 without WHMCS_Product_Id__c", seeded_broken("MISSING_PRODUCT_MAPPING"),
         failed("MISSING_PRODUCT_MAPPING")),
    Case("data.non-numeric-product-id", "salesforce-data", "WHMCS_Product_Id__c = 'abc'",
         bad_item(WHMCS_Product_Id__c="abc"), failed("MISSING_PRODUCT_MAPPING")),
    Case("data.no-items", "salesforce-data", "Order without OrderItems",
         seeded_broken("NO_ITEMS"), failed("NO_ITEMS")),
    Case("data.config-options-not-json", "salesforce-data",
         "Portal_ConfigOptions_JSON__c is not JSON", seeded_broken("INVALID_CONFIG_OPTIONS"),
         failed("INVALID_CONFIG_OPTIONS", "not valid JSON")),
    Case("data.config-options-not-object", "salesforce-data",
         "Portal_ConfigOptions_JSON__c is a JSON array",
         bad_item(Portal_ConfigOptions_JSON__c='["1", "2"]'),
         failed("INVALID_CONFIG_OPTIONS", "must be a JSON object")),
    Case("data.config-option-not-scalar", "salesforce-data",
         "a config option whose value is an object",
         bad_item(Portal_ConfigOptions_JSON__c='{"1": {"value": 2}}'),
         failed("INVALID_CONFIG_OPTIONS", "non-scalar")),
    Case("data.config-option-bad-id", "salesforce-data", "a config option id 'router'",
         bad_item(Portal_ConfigOptions_JSON__c='{"router": "2"}'),
         failed("INVALID_CONFIG_OPTIONS", "not a positive integer")),
    Case("data.missing-billing-cycle", "salesforce-data", "Billing_Cycle__c empty",
         bad_item(Billing_Cycle__c=None), failed("INVALID_BILLING_CYCLE")),
    Case("data.missing-item-class", "salesforce-data", "Item_Class__c empty",
         bad_item(Item_Class__c=None), failed("UNKNOWN_ITEM_CLASS")),
    Case("data.quantity-zero", "salesforce-data", "OrderItem.Quantity = 0",
         bad_item(Quantity=0), failed("INVALID_QUANTITY")),
    Case("data.quantity-negative", "salesforce-data", "OrderItem.Quantity = -2",
         bad_item(Quantity=-2), failed("INVALID_QUANTITY")),
    Case("data.quantity-fraction", "salesforce-data", "OrderItem.Quantity = 1.5",
         bad_item(Quantity=1.5), failed("INVALID_QUANTITY")),
    Case("data.addon-without-service", "salesforce-data",
         "an Add-on item and an Activation item, no Service",
         items({"Item_Class__c": "Activation", "WHMCS_Product_Id__c": "5",
                "Billing_Cycle__c": "One-time", "Portal_ConfigOptions_JSON__c": None},
               {"Item_Class__c": "Add-on", "WHMCS_Product_Id__c": "1",
                "Portal_ConfigOptions_JSON__c": None}),
         failed("ADDON_WITHOUT_SERVICE")),
    Case("data.whmcs-invalid-pid", "salesforce-data",
         "WHMCS_Product_Id__c = 999 (WHMCS has no such product)",
         bad_item(WHMCS_Product_Id__c="999"), failed("WHMCS_ERROR", "Invalid Product ID")),
    Case("data.whmcs-unknown-config-option", "salesforce-data",
         "a config option id WHMCS does not know",
         bad_item(Portal_ConfigOptions_JSON__c='{"9": "1"}'),
         failed("WHMCS_ERROR", "Invalid Configurable Option")),
    Case("data.whmcs-cycle-not-offered", "salesforce-data",
         "Monthly for a WHMCS product sold only annually",
         bad_item(WHMCS_Product_Id__c="4", Portal_ConfigOptions_JSON__c=None),
         failed("WHMCS_ERROR", "Invalid Billing Cycle")),
]


# WHMCS misbehaving for one Order's AddOrder ---------------------------------------------------

WHMCS = [
    Case("whmcs.http-500", "whmcs", "AddOrder answers HTTP 500 until the retry deadline",
         whmcs_fault(error_rate=1.0, error_kind="500"),
         failed("WHMCS_UNAVAILABLE", "HTTP 500")),
    Case("whmcs.html-error-page", "whmcs",
         "AddOrder answers a PHP fatal-error page with HTTP 200",
         whmcs_fault(error_rate=1.0, error_kind="html"),
         failed("WHMCS_UNAVAILABLE", "not a WHMCS API answer")),
    Case("whmcs.http-503-once", "whmcs", "AddOrder answers 503 once, then works",
         whmcs_fault(error_rate=1.0, error_kind="503", times=1), PROVISIONED),
    Case("whmcs.timeout-after-commit", "whmcs",
         "AddOrder commits, then hangs past the client timeout",
         whmcs_fault(hang_rate=1.0, hang_s=5.0, times=1),
         Ending(outcomes=("Provisioned",), salesforce="Provisioned", whmcs_orders=1,
                recovered=True)),
    Case("whmcs.dropped-after-commit", "whmcs",
         "AddOrder commits, then the connection drops without an answer",
         whmcs_fault(hang_rate=1.0, hang_mode="drop", times=1),
         Ending(outcomes=("Provisioned",), salesforce="Provisioned", whmcs_orders=1,
                recovered=True)),
    Case("whmcs.500-after-commit", "whmcs", "AddOrder commits, then answers HTTP 500",
         whmcs_fault(error_rate=1.0, error_kind="500", error_after_commit=True, times=1),
         Ending(outcomes=("Provisioned",), salesforce="Provisioned", whmcs_orders=1,
                recovered=True)),
    Case("whmcs.ip-not-allowed", "whmcs",
         "AddOrder refused with 403 'Invalid IP' (access key not honoured) three times — "
         "our allow-list, not the Order: it waits, then is provisioned",
         whmcs_fault(invalid_ip_rate=1.0, invalid_ip_ignores_accesskey=True, times=3),
         PROVISIONED),
    Case("whmcs.authentication-failed", "whmcs",
         "AddOrder answers 'Authentication Failed' three times — our credentials, not the "
         "Order: it waits, then is provisioned",
         whmcs_fault(whmcs_error_rate=1.0, whmcs_error="Authentication Failed", times=3),
         PROVISIONED),
]


# sink: records written straight to the outcomes topic ---------------------------------------

def _deleted_opportunity(c: Corpus) -> list[Subject]:
    order_id = c.pending_order()
    opp = c.sf.get_record(order_id)["OpportunityId"]
    c.sf.delete(opp)  # a user deletes it (the integration user may not)
    return [c.produce_outcome(outcome(order_id, "Provisioned", opportunity_id=opp,
                                      whmcs_order_id=990001, whmcs_service_ids=[990001],
                                      error_code=None, error_message=None))]


SINK = [
    Case("sink.garbage-bytes", "sink", "outcome bytes that are not Avro",
         direct_outcome(lambda c: b"\x00\x01 not an outcome", key=b"corpus-sink-garbage"),
         Ending(dead_letter="sink", dl_text="undecodable outcome")),
    Case("sink.tombstone", "sink", "tombstone on the outcomes topic",
         direct_outcome(lambda c: None, key=b"corpus-sink-tombstone"),
         Ending(dead_letter="sink", dl_text="tombstone")),
    Case("sink.other-schema", "sink", "a request record on the outcomes topic",
         direct_outcome(lambda c: AvroSerde("provision_request").encode(
             request(c.pending_order())), key=b"corpus-sink-other-schema"),
         Ending(dead_letter="sink", dl_text="undecodable outcome")),
    Case("sink.unknown-order", "sink", "Failed outcome for an Order that does not exist",
         direct_outcome(lambda c: outcome(unknown_id("801ZZ0000099998"))),
         Ending(dead_letter="sink", dl_code="NOT_FOUND")),
    Case("sink.id-of-another-object", "sink", "outcome whose order id is an Account id",
         direct_outcome(lambda c: outcome(c.healthy_account())),
         Ending(dead_letter="sink", dl_code="INVALID_CROSS_REFERENCE_KEY")),
    Case("sink.malformed-id", "sink", "outcome whose order id is not an id",
         direct_outcome(lambda c: outcome("not-a-salesforce-id")),
         Ending(dead_letter="sink", dl_code="MALFORMED_ID")),
    Case("sink.custom-validation", "sink",
         "a validation rule refuses the write (FIELD_CUSTOM_VALIDATION_EXCEPTION)",
         sink_record_error("FIELD_CUSTOM_VALIDATION_EXCEPTION"),
         Ending(dead_letter="sink", dl_code="FIELD_CUSTOM_VALIDATION_EXCEPTION",
                salesforce="Pending Review")),
    Case("sink.restricted-picklist", "sink",
         "the org's picklist lacks the value (INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST)",
         sink_record_error("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
         Ending(dead_letter="sink", dl_code="INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                salesforce="Pending Review")),
    Case("sink.string-too-long", "sink", "the org refuses a field as too long",
         sink_record_error("STRING_TOO_LONG"),
         Ending(dead_letter="sink", dl_code="STRING_TOO_LONG", salesforce="Pending Review")),
    Case("sink.row-lock-forever", "sink",
         "UNABLE_TO_LOCK_ROW on every attempt (transient, past SINK_MAX_ATTEMPTS)",
         sink_record_error("UNABLE_TO_LOCK_ROW"),
         Ending(dead_letter="sink", dl_code="UNABLE_TO_LOCK_ROW", dl_text="gave up after 3",
                salesforce="Pending Review")),
    Case("sink.deleted-opportunity", "sink",
         "Provisioned outcome whose Opportunity was deleted (ENTITY_IS_DELETED)",
         _deleted_opportunity,
         Ending(dead_letter="sink", dl_code="ENTITY_IS_DELETED", salesforce="Provisioned")),
    Case("sink.error-message-too-long", "sink",
         "Failed outcome with a 5,000-character error (Activation_Error__c is Text(255))",
         direct_outcome(lambda c: outcome(c.pending_order(), error_message="e" * 5000)),
         Ending(salesforce="Failed", sf_error="CORPUS_TEST: eee")),
]


# phase B: the outside world fails for everyone; good Orders must still end Provisioned -------

def _good_outcome_now(c: Corpus) -> Subject:
    """A good Failed outcome straight to the outcomes topic: the sink meets the fault now,
    not only after the worker got past it."""
    subject = c.produce_outcome(outcome(c.pending_order()))
    c.sink_controls.append(subject)
    return subject


def _written_back(c: Corpus, subject: Subject, timeout: float) -> None:
    assert subject.order_id is not None
    c.wait(lambda: (c.sf_orders([subject.order_id]).get(subject.order_id) or {})
           .get("Activation_Status__c") == "Failed", timeout,
           "the sink to write back the outcome sent during the fault")


def _token_expired(c: Corpus) -> list[Subject]:
    """Every Salesforce token expires at once: the Pub/Sub stream (auth error on the next
    response), the worker's guard query and the sink's writes must re-authenticate."""
    before = c.metric("connector", 'sfprov_connector_reconnects_total{cause="auth"}')
    c.sf.expire_tokens()
    written = _good_outcome_now(c)
    controls = c.approve(*(c.pending_order() for _ in range(3)))
    c.wait_provisioned(controls, timeout=40)
    _written_back(c, written, 20)
    after = c.metric("connector", 'sfprov_connector_reconnects_total{cause="auth"}')
    assert after > before, "the connector did not meet the expired token"
    for name in ("worker", "sink"):
        assert "re-authenticating" in c.pipeline.log(name).read_text(), \
            f"the {name} did not meet the expired token"
    return controls


def _rest_unavailable(c: Corpus) -> list[Subject]:
    """Salesforce REST answers 503 to everything for 2 s (guard query, sink writes)."""
    metric = 'sfprov_sink_pauses_total{reason="SALESFORCE_UNAVAILABLE"}'
    before = c.metric("sink", metric)
    c.sf.set_faults(rest_503_rate=1.0)
    try:
        controls = c.approve(*(c.pending_order() for _ in range(3)))
        written = _good_outcome_now(c)
        time.sleep(2.0)
    finally:
        c.sf.set_faults(rest_503_rate=0.0)
    c.wait_provisioned(controls, timeout=40)
    _written_back(c, written, 20)
    assert c.metric("sink", metric) > before, "the sink did not meet the 503s"
    assert "guard query failed" in c.pipeline.log("worker").read_text()
    return controls


def _request_limit(c: Corpus) -> list[Subject]:
    """The org's daily API limit is reached for 2 s: REQUEST_LIMIT_EXCEEDED (403)."""
    metric = 'sfprov_sink_pauses_total{reason="REQUEST_LIMIT_EXCEEDED"}'
    before = c.metric("sink", metric)
    c.sf.set_faults(daily_limit=0)
    try:
        controls = c.approve(*(c.pending_order() for _ in range(3)))
        written = _good_outcome_now(c)
        time.sleep(2.0)
    finally:
        c.sf.set_faults(daily_limit=5_000_000)
    c.wait_provisioned(controls, timeout=60)
    _written_back(c, written, 20)
    assert c.metric("sink", metric) > before, "the sink did not meet REQUEST_LIMIT_EXCEEDED"
    assert c.sf.counters()["calls"].get("limit_exceeded", 0) >= 2, "the worker did not"
    return controls


def _replay_expired(c: Corpus) -> list[Subject]:
    """The stored replay id falls out of Salesforce's retention (73 h pass) and the stream
    is cut: the connector records the gap, applies EARLIEST and goes on."""
    gaps = len(c.gaps())
    c.sf.advance_clock(hours=73)
    c.sf.drop_streams()
    c.wait(lambda: len(c.gaps()) > gaps, 30, "a replay-gap record")
    decoded = OffsetCodec("corpus", "corpus").decode_gap(c.gaps()[-1].value())
    assert decoded["policy"] == "EARLIEST" and "replayid" in decoded["error_code"], decoded
    controls = c.approve(*(c.pending_order() for _ in range(3)))
    c.wait_provisioned(controls, timeout=40)
    return controls


GLOBAL = [
    Case("salesforce.token-expired", "salesforce-api",
         "every access token expires mid-run (401 / Pub/Sub auth error)",
         _token_expired, PROVISIONED, phase="B1"),
    Case("salesforce.rest-503", "salesforce-api",
         "REST answers 503 for 2 s (guard query and write-back)",
         _rest_unavailable, PROVISIONED, phase="B2"),
    Case("connector.replay-id-expired", "connector",
         "stored replay id past the 72 h retention when the stream reconnects",
         _replay_expired, PROVISIONED, phase="B3"),
    Case("salesforce.request-limit", "salesforce-api",
         "REQUEST_LIMIT_EXCEEDED for 2 s (guard query and write-back)",
         _request_limit, PROVISIONED, phase="B4"),
]

CASES: list[Case] = [*CONNECTOR, *WORKER, *DATA, *WHMCS, *SINK, *GLOBAL]

"""Order-level operator commands: trace, reconcile, demo.

``trace`` and ``reconcile`` talk to Salesforce (and WHMCS) with the pipeline's own settings
and clients; in sandbox mode ``make up`` writes those settings to ``.state/pipeline.env``,
which the CLI reads as defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from common.avro import AvroSerde, registry_for
from common.deadletter import REQUEUE_OF, REQUEUED_TO
from common.errors import KafkaError, PipelineError
from common.ids import is_salesforce_id
from common.reconcile import ORDER_FIELDS, find_stranded, request_record
from common.salesforce import SalesforceClient
from common.settings import SalesforceSettings, WhmcsSettings
from connectors.decode import order_id18
from ops.cli import add, duration_s, kafka_settings, worker_group
from ops.cmd_kafka import whole_number
from ops.cmd_replay import seconds_arg
from ops.kafkaview import (
    QUIET,
    Deliveries,
    client_config,
    jsonable,
    order_id_arg,
    order_id_forms,
    scan,
)
from streams.mapping import MappingError, client_id_of


def _sf() -> SalesforceClient:
    return SalesforceClient(SalesforceSettings.load())


def _soql_id(value: str) -> str:
    """``value`` as it may go into SOQL: the CLI's parser (:func:`order_id_arg`) already
    refused anything else as a usage error; a direct caller gets one line (exit 1)."""
    if not is_salesforce_id(value):
        raise PipelineError(f"{value!r} is not a Salesforce id (15 or 18 ASCII letters and "
                            "digits)")
    return value


def count_arg(text: str) -> int:
    """``demo --count``'s parser: a positive whole number, else argparse's one-line usage
    error before the sandbox is asked (``--count 0`` once said "no Orders left in Pending
    Review: reseed with `make clean up`" — advice that wipes the sandbox)."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text!r}")
    return value


# -- trace --------------------------------------------------------------------------------

def trace(args: argparse.Namespace) -> int:
    given = _soql_id(args.order_id)
    # records, WHMCS notes and the trace carry the 18-character form: a 15-character id
    # compared as typed once found no event, outcome or dead letter
    order_id = order_id18(given)
    wanted = order_id_forms(given)
    settings = kafka_settings(args)
    out: dict[str, Any] = {"order_id": order_id}

    def mine(record: Any) -> bool:
        return record.key in wanted or record.headers.get("order_id") in wanted

    for label, topic, schema in (("events", settings.requests, "provision_request"),
                                 ("outcomes", settings.outcomes, "provisioning_outcome"),
                                 ("dead_letters", settings.dead_letters, None)):
        out[label] = []
        try:  # read whole or an error: a partition given up on once hid its records quietly
            for r in scan(settings, topic, schema, match=mine, complete=True):
                # sfprov dlq requeue's markers (the dead letter's key) are no dead letters
                marker = label == "dead_letters" and REQUEUE_OF in r.headers
                out.setdefault("requeue_markers" if marker else label, []).append(r.as_json())
        except KafkaError as exc:  # shown with the rest of the trace, then exit 1
            out.setdefault("kafka_errors", []).append(str(exc))
    order = None
    try:
        sf = _sf()
        orders = sf.query(f"SELECT {ORDER_FIELDS} FROM Order WHERE Id = '{order_id}'")
        order = orders[0] if orders else None
        out["salesforce_order"] = _strip(order)
        if order and order.get("OpportunityId"):
            # none when it was deleted or the integration user cannot see it: "not found"
            opportunities = sf.query(
                "SELECT Id, StageName, WHMCS_Service_ID__c FROM Opportunity WHERE Id = "
                f"'{order['OpportunityId']}'")
            out["salesforce_opportunity"] = _strip(opportunities[0] if opportunities else None)
    except Exception as exc:  # noqa: BLE001 - show what we could not read, keep tracing
        out["salesforce_error"] = str(exc)
    # the WHMCS client is the Order's Account's: looked up whatever the Opportunity gave
    client_id = ((order or {}).get("Account") or {}).get("WH_Account__c")
    if client_id:
        try:  # read as the worker reads it: 'WH-1042' is a Failed outcome there, not a crash
            out["whmcs_orders"] = _whmcs_orders(client_id_of(order or {}), order_id)
        except MappingError as exc:
            out["whmcs_orders"] = {"error": str(exc)}
    if args.json:
        print(json.dumps(jsonable(out), indent=2, default=str))
    else:
        _print_trace(out)
    if out.get("kafka_errors"):
        print(f"error: {'; '.join(out['kafka_errors'])} (the trace above may miss records)",
              file=sys.stderr)
        return 1
    return 0


def _strip(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: (_strip(v) if isinstance(v, dict) else v) for k, v in record.items()
            if k != "attributes"}


def _whmcs_orders(client_id: int, order_id: str) -> Any:
    from common.whmcs import WhmcsClient

    async def run() -> Any:
        async with WhmcsClient(WhmcsSettings.load()) as client:
            found = await client.find_orders_by_marker(client_id, order_id)
            return [{"id": o.id, "status": o.status, "invoice_id": o.invoice_id,
                     "service_ids": o.service_ids, "notes": o.notes} for o in found]

    try:
        return asyncio.run(run())
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


def _print_trace(out: dict[str, Any]) -> None:
    print(f"Order {out['order_id']}")
    print(f"  events ({len(out['events'])}):")
    for e in out["events"]:
        v = e["value"]
        print(f"    {e['timestamp']}  {e['partition']}:{e['offset']}  idem {v.get('IdemKey__c')}"
              f"  uuid {v.get('event_uuid')}  by {v.get('RequestedBy__c')}")
    print(f"  outcomes ({len(out['outcomes'])}):")
    for o in out["outcomes"]:
        v = o["value"]
        detail = (f"WHMCS order {v.get('whmcs_order_id')} services {v.get('whmcs_service_ids')}"
                  if v.get("status") == "Provisioned" else
                  f"{v.get('error_code')}: {v.get('error_message')}")
        print(f"    {v.get('completed_at')}  {v.get('status'):<11} idem {v.get('idem_key')}  "
              f"{detail}{'  (recovered)' if v.get('recovered') else ''}")
    print(f"  dead letters ({len(out['dead_letters'])}):")
    for d in out["dead_letters"]:
        h = d.get("headers", {})
        print(f"    {d['timestamp']}  {h.get('stage')}: {h.get('reason')}")
    for d in out.get("requeue_markers", []):  # sfprov dlq requeue's markers
        h = d.get("headers", {})
        print(f"    {d['timestamp']}  requeued: dead letter {h.get(REQUEUE_OF)}, its copy at "
              f"{h.get(REQUEUED_TO)}")
    if "salesforce_error" in out:
        print(f"  salesforce: cannot read: {out['salesforce_error']}")
    order = out.get("salesforce_order")
    if order:
        print(f"  salesforce Order: Status {order.get('Status')}, Activation_Status__c "
              f"{order.get('Activation_Status__c')}, WHMCS_Order_Id__c "
              f"{order.get('WHMCS_Order_Id__c')}, error {order.get('Activation_Error__c')}")
    elif "salesforce_error" not in out:
        print("  salesforce Order: not found")
    opp = out.get("salesforce_opportunity")
    if opp:
        print(f"  salesforce Opportunity {opp.get('Id')}: StageName {opp.get('StageName')}, "
              f"WHMCS_Service_ID__c {opp.get('WHMCS_Service_ID__c')}")
    elif "salesforce_opportunity" in out:
        print(f"  salesforce Opportunity {(order or {}).get('OpportunityId')}: not found")
    if "whmcs_orders" in out:
        print(f"  whmcs orders: {json.dumps(out['whmcs_orders'], default=str)}")


# -- reconcile ----------------------------------------------------------------------------

def duration_arg(text: str) -> str:
    """``--older-than``'s parser: the text as given (reports say "older than 15m"), once
    ``duration_s`` reads it; else argparse's one-line usage error naming the option
    (``abc`` once ended in a traceback when reconcile started)."""
    try:
        duration_s(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m, 2h, 1d, 90s or seconds, got {text!r}") from None
    return text.strip()


def reconcile(args: argparse.Namespace) -> int:
    """Activating Orders with no request since their last change, or whose latest request
    never got an outcome, get a new request (common.reconcile: the connector's automatic
    passes use the same mechanism)."""
    settings = kafka_settings(args)
    # the worker's progress, as the connector's passes read it: a request still waiting
    # behind the worker's lag is not stranded (without it each one was re-requested)
    plan = find_stranded(_sf(), settings, older_than_s=duration_s(args.older_than),
                         consumed_by=worker_group(args), client=QUIET)
    stranded = plan.stranded
    sent = Deliveries() if args.dry_run or not stranded else send_requests(settings, stranded)
    injected = sent.delivered
    failed = (f"{sent.not_delivered} of {len(stranded)} provisioning request(s) not injected "
              f"({sent.problems()})") if sent.not_delivered else ""
    if args.json:
        print(json.dumps({"activating": plan.activating, "candidates": len(plan.candidates),
                          "no_request": plan.no_request, "undecided": plan.undecided,
                          "injected": injected, "not_injected": sent.not_delivered,
                          "dry_run": bool(args.dry_run)}, indent=2))
        if failed:
            print(f"error: {failed}", file=sys.stderr)
        return 1 if failed else 0
    print(f"{plan.activating} Order(s) Activating; {len(plan.candidates)} older than "
          f"{args.older_than}; {len(plan.no_request)} with no provisioning request since their "
          f"last change, {len(plan.undecided)} whose latest request has no outcome (stranded)")
    for oid in stranded:
        print(f"  {oid}  {plan.candidates[oid].get('OrderNumber')}  last change "
              f"{plan.candidates[oid].get('LastModifiedDate')}")
    if injected:
        print(f"injected {injected} provisioning request(s) into {settings.requests}")
    if failed:
        print(f"error: {failed}; run reconcile again once Kafka takes them", file=sys.stderr)
        return 1
    return 0


def inject_requests(settings: Any, order_ids: list[str]) -> int:
    """Requests for ``order_ids``, all delivered (their number), or a KafkaError saying how
    many were not and why."""
    sent = send_requests(settings, order_ids)
    if sent.not_delivered:
        raise KafkaError(f"{sent.not_delivered} of {len(order_ids)} provisioning request(s) "
                         f"not injected ({sent.problems()})")
    return sent.delivered


def send_requests(settings: Any, order_ids: list[str]) -> Deliveries:
    """A request for each of ``order_ids``, with what the broker took (a refused record was
    once counted as injected: ``flush()`` returns 0 for it too)."""
    # the connector's format (request_record): Confluent's with a registry, so analysts'
    # tools decode it
    producer = Producer(client_config(settings, **{
        "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"}))
    now_ms = int(time.time() * 1000)
    sent = Deliveries()
    # one serde for all of them, as the connector's reconciler shares one: the schema is
    # registered once, and the registry's HTTP client is closed when done
    registry = registry_for(settings)
    try:
        serde = AvroSerde("provision_request", topic=settings.requests, registry=registry)
        for oid in order_ids:
            topic, key, value, headers = request_record(settings, oid, source="reconcile",
                                                        requested_by="sfprov reconcile",
                                                        now_ms=now_ms, serde=serde)
            sent.produce(producer, topic, key=key, value=value, headers=headers)
    finally:
        if registry is not None:
            registry.close()
    # a request still queued after the wait is purged, one in flight waited for
    # (Deliveries.wait): counted "not injected" while it landed, reconcile's advice (run it
    # again) sent it twice
    return sent.wait(producer)


# -- demo ---------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    from ops import sandboxes
    from ops.stack import STATE

    settings = kafka_settings(args)
    admin = sandboxes.admin(Path(STATE))
    start = {}
    from ops.kafkaview import consumer, end_offsets

    c = consumer(settings)
    start = {p: high for p, (_, high) in end_offsets(c, settings.outcomes).items()}
    c.close()
    with sandbox_calls(admin):
        ids = admin.approve(ids=demo_selection(admin, args.count))
    if not ids:
        print("no Orders left in Pending Review: reseed with `make clean up`")
        return 1
    wanted = set(ids)
    print(f"approved {len(ids)} Order(s) in the Salesforce sandbox, as customer service would")
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + args.timeout
    from confluent_kafka import TopicPartition

    from ops.kafkaview import Decoder

    c = consumer(settings)
    c.assign([TopicPartition(settings.outcomes, p, o) for p, o in start.items()])
    decoder = Decoder(settings, "provisioning_outcome", settings.outcomes)
    shown = -1
    try:
        while len(results) < len(wanted) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                record = decoder.record(msg)
                if record.key is not None and record.key in wanted \
                        and record.key not in results and "status" in record.value:
                    results[record.key] = record.value
            if len(results) != shown:
                shown = len(results)
                _progress(shown, len(wanted))
    finally:
        c.close()
    print()
    time.sleep(args.writeback_wait)
    final = {}
    for chunk in range(0, len(ids), 100):
        part = ids[chunk:chunk + 100]
        with sandbox_calls(admin):
            rows = admin.query("SELECT Id, Activation_Status__c, WHMCS_Order_Id__c FROM "
                               "Order WHERE Id IN ('" + "','".join(part) + "')")
        for row in rows.get("records", []):
            final[row["Id"]] = row
    print(f"{'Order':<20} {'outcome':<12} {'WHMCS order':>11}  {'Salesforce now':<14} reason")
    for oid in ids:
        o = results.get(oid)
        sf_row = final.get(oid, {})
        status = o["status"] if o else "(waiting)"
        reason = "" if not o or o["status"] == "Provisioned" else \
            f"{o.get('error_code')}: {o.get('error_message')}"
        print(f"{oid:<20} {status:<12} {str(o.get('whmcs_order_id') if o else ''):>11}  "
              f"{str(sf_row.get('Activation_Status__c')):<14} {reason[:80]}")
    counts: dict[str, int] = {}
    for o in results.values():
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + (f", still waiting {len(wanted) - len(results)}" if len(results) < len(wanted) else ""))
    return 0 if len(results) == len(wanted) else 1


@contextlib.contextmanager
def sandbox_calls(admin: Any) -> Iterator[None]:
    """The demo's calls to the Salesforce sandbox's admin API: a sandbox that is not running
    (nothing listening; no TLS material: `make up` never started it) or that fails a call is
    one line (:class:`PipelineError`), not a traceback."""
    import requests

    from sandbox.salesforce.admin_client import AdminError

    where = str(admin.base).removesuffix("/__sandbox")
    try:
        yield
    except (requests.RequestException, AdminError, OSError) as exc:
        if isinstance(exc, requests.exceptions.SSLError):
            cause = "its TLS certificate is not the one the state directory holds"
        elif isinstance(exc, requests.ConnectionError):
            cause = "nothing answered"
        elif isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
            # requests' "Could not find a suitable TLS CA certificate bundle": the sandbox
            # never ran with this state directory (its TLS material is made at start)
            cause = (f"no TLS CA certificate at {admin.verify}"
                     if isinstance(admin.verify, str) and not Path(admin.verify).is_file()
                     else " ".join(str(exc).split())[:300])
        else:  # an error status, a timeout, an answer that is not JSON
            reason = " ".join(str(exc).split())[:300]
            raise PipelineError(f"the Salesforce sandbox at {where} failed the demo's call: "
                                f"{reason} (demo works only against the sandboxes: make up)"
                                ) from exc
        raise PipelineError(f"the Salesforce sandbox is not running at {where}: {cause} "
                            "(demo works only against the sandboxes: make up)") from exc


def demo_selection(admin: Any, count: int) -> list[str]:
    """``count`` Orders in Pending Review, oldest first, including one of each kind the seed
    broke on purpose (``Description = 'seed-broken: KIND'``) while the count leaves room for
    at least twice as many good ones — so a newcomer sees ``Failed`` with its reason next
    to ``Provisioned``."""
    rows = admin.query("SELECT Id, Description FROM Order WHERE Status = 'Pending Review'"
                       ).get("records", [])
    good = [r["Id"] for r in rows if not str(r.get("Description") or "").startswith("seed-broken")]
    broken: dict[str, str] = {}
    for r in rows:
        kind = str(r.get("Description") or "")
        if kind.startswith("seed-broken") and kind not in broken:
            broken[kind] = r["Id"]
    chosen = list(broken.values())[:min(len(broken), count // 3)]  # 1 in 3 at most
    chosen += good[:count - len(chosen)]
    return chosen[:count]


def _progress(done: int, total: int) -> None:
    width = 40
    filled = int(width * done / max(total, 1))
    sys.stdout.write(f"\r  outcomes [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stdout.flush()


def _configure_trace(p: argparse.ArgumentParser) -> None:
    p.add_argument("order_id", type=order_id_arg, metavar="ORDER_ID",
                   help="Salesforce Order Id (15 or 18 characters)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=trace)


def _configure_reconcile(p: argparse.ArgumentParser) -> None:
    add(p, "--older-than", env="SFPROV_RECONCILE_OLDER_THAN", default="15m", type=duration_arg,
        help="only Orders Activating for at least this long (e.g. 30m, 2h, 0s)")
    p.add_argument("--dry-run", action="store_true", help="report, inject nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=reconcile)


def _configure_demo(p: argparse.ArgumentParser) -> None:
    add(p, "--count", env="SFPROV_DEMO_COUNT", default=20, type=count_arg,
        help="Orders to approve (at least 1)")
    add(p, "--timeout", env="SFPROV_DEMO_TIMEOUT_S", default=120.0, type=seconds_arg,
        help="seconds to wait for the outcomes")
    add(p, "--writeback-wait", env="SFPROV_DEMO_WRITEBACK_S", default=3.0, type=seconds_arg,
        help="seconds to let the sink write back before reading Salesforce")
    p.set_defaults(func=demo)


COMMANDS = [
    ("trace", "The whole life of one Order: events, outcomes, dead letters, Salesforce, WHMCS.",
     _configure_trace),
    ("reconcile", "Find Activating Orders without a provisioning request and inject one.",
     _configure_reconcile),
    ("demo", "Approve N seeded Orders in the sandbox and show how they end (sandbox only).",
     _configure_demo),
]

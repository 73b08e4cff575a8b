"""The seed's design, to be measured beside the pipeline (``make bench``): nothing imports it.

What the original system did (``../shared/seeds``): subscribe, guard on ``Activating``,
provision in WHMCS, update Salesforce — one event at a time. Here over the same requests
topic, so the two are measured on the same input:

* a consumer with auto-commit takes one event at a time;
* one SOQL read of the Order (``Activation_Status__c``, its items and client);
* ``AddOrder``, then ``AcceptOrder``;
* one REST update of the Order and one of the Opportunity (single-record PATCHes);
* no dedupe table, no intent, no lookup: a crash between ``AddOrder`` and the auto-commit
  redelivers the event, whose Order is still ``Activating``, and creates a second WHMCS
  order.

    python -m bench.baseline run [--max-events N] [--idle-exit S]

Settings as the pipeline's (``KAFKA_*``, ``SF_*``, ``WHMCS_*``); its consumer group is
``<prefix>baseline``. Prints a JSON line of counts when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer

from common.avro import AvroSerde, registry_for
from common.connection import kafka_config
from common.errors import PipelineError
from common.salesforce import SalesforceClient
from common.settings import KafkaSettings, SalesforceSettings, WhmcsSettings
from common.whmcs import WhmcsClient
from streams.guard import guard_soql
from streams.mapping import MappingError, map_order


class Baseline:
    def __init__(self) -> None:
        self.kafka = KafkaSettings.load()
        self.whmcs_settings = WhmcsSettings.load()
        self.sf = SalesforceClient(SalesforceSettings.load())
        self.serde = AvroSerde("provision_request", topic=self.kafka.requests,
                               registry=registry_for(self.kafka))
        self.consumer = Consumer(kafka_config(self.kafka, **{
            "group.id": self.kafka.topic("baseline"), "enable.auto.commit": True,
            # the bench commits the group's start (the topic's end) before the first run
            "auto.offset.reset": "latest", "isolation.level": "read_committed"}))
        self.counts = {"events": 0, "provisioned": 0, "failed": 0, "skipped": 0}
        self.stopping = False

    def run(self, max_events: int | None, idle_exit_s: float | None) -> dict[str, int]:
        self.consumer.subscribe([self.kafka.requests],
                                on_assign=lambda _c, _parts: print("ready", flush=True))
        loop = asyncio.new_event_loop()
        whmcs = WhmcsClient(self.whmcs_settings)
        idle_since = time.monotonic()
        try:
            while not self.stopping and (max_events is None or
                                         self.counts["events"] < max_events):
                msg = self.consumer.poll(0.5)
                if msg is None or msg.error():
                    if idle_exit_s and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.counts["events"] += 1
                event = self.serde.decode(msg.value(), msg.headers())
                loop.run_until_complete(self.handle(event, whmcs))
        finally:
            loop.run_until_complete(whmcs.aclose())
            loop.close()
            self.consumer.close()  # auto-commit's last commit
        return self.counts

    async def handle(self, event: dict[str, Any], whmcs: WhmcsClient) -> None:
        order_id = event["OrderId__c"]
        rows = self.sf.query(guard_soql([order_id]))
        order = rows[0] if rows else None
        if order is None or order.get("Activation_Status__c") != "Activating":
            self.counts["skipped"] += 1
            return
        settings = self.whmcs_settings
        try:
            request = map_order(order, idem_key=event.get("IdemKey__c") or "",
                                payment_method=settings.payment_method,
                                no_invoice=settings.no_invoice, no_email=settings.no_email)
            created = await whmcs.add_order(request.params())
            await whmcs.accept_order(created.order_id, autosetup=settings.autosetup)
        except (MappingError, PipelineError) as exc:
            self.counts["failed"] += 1
            self.sf.update("Order", order["Id"], {
                "Activation_Status__c": "Failed", "Activation_Error__c": str(exc)[:255]})
            return
        self.counts["provisioned"] += 1
        self.sf.update("Order", order["Id"], {"Activation_Status__c": "Provisioned",
                                              "WHMCS_Order_Id__c": created.order_id})
        if order.get("OpportunityId"):
            self.sf.update("Opportunity", order["OpportunityId"], {
                "StageName": "Active",
                "WHMCS_Service_ID__c": created.service_ids[0] if created.service_ids else None})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--max-events", type=int, default=None)
    run.add_argument("--idle-exit", type=float, default=None,
                     help="exit after this many seconds without an event")
    args = parser.parse_args(argv)
    baseline = Baseline()

    def stop(*_: Any) -> None:
        baseline.stopping = True
    signal.signal(signal.SIGTERM, stop)
    counts = baseline.run(args.max_events, args.idle_exit)
    print(json.dumps(counts), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sweep: nothing stays half-done, and the dedupe memory stays bounded.

Runs at start-up and every ``WORKER_SWEEP_INTERVAL_S``, under the same lock as batches (so it
never overlaps one), over the Orders of partitions this worker actively owns:

* an intent still ``pending`` after ``WORKER_RECOVERY_AFTER_S`` (its event was not
  redelivered — e.g. it was dead-lettered by the catch-all) → WHMCS lookup on the
  ``sfOrderId=`` marker: found Pending → AcceptOrder; found Active → ``Provisioned``
  (``recovered``); absent → ``Failed(PROVISIONING_INTERRUPTED)``. The sweep never calls
  ``AddOrder``: creating needs the Order's current data, and the Flow's retry path exists
  for that. The outcome is recorded like a batch's (idem entry + intent, flush, send), so
  a late redelivery of the event emits nothing new;
* an outcome recorded but never acknowledged as sent (``emitted`` false) for that long →
  sent again, identical;
* idem entries older than ``WORKER_DEDUPE_TTL_DAYS`` and finished intents older than that
  are deleted (tombstones in the changelog) — pending intents are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import WhmcsError
from streams import metrics
from streams.batch import BatchProcessor
from streams.decide import ACCEPTED, FAILED_STATE, PENDING, Event, outcome_record
from streams.mapping import WhmcsOrderRequest

log = logging.getLogger(__name__)
DAY_MS = 24 * 3600 * 1000


@dataclass
class SweepReport:
    recovered: int = 0
    interrupted: int = 0
    resent: int = 0
    expired_idem: int = 0
    expired_intents: int = 0
    pending: int = 0


class Sweeper:
    def __init__(self, processor: BatchProcessor, *, recovery_after_s: float,
                 dedupe_ttl_days: float, owns: Callable[[str], bool]) -> None:
        self.processor = processor
        self.recovery_after_ms = int(recovery_after_s * 1000)
        self.ttl_ms = int(dedupe_ttl_days * DAY_MS)
        self.owns = owns

    async def run_once(self) -> SweepReport:
        report = SweepReport()
        proc = self.processor
        state = proc.state
        now = proc._clock()
        outcomes: list[tuple[str, str, str | None, dict[str, Any]]] = []
        for oid, intent in list(state.intents.items()):
            if not intent or not self.owns(oid) or oid in proc.in_flight:
                continue
            if intent.get("state") == PENDING:
                report.pending += 1
                if now - int(intent.get("at") or 0) >= self.recovery_after_ms:
                    outcome = await self._recover(oid, intent)
                    if outcome is not None:
                        outcomes.append((oid, intent["idem_key"], intent.get("event_uuid"),
                                         outcome))
                        if outcome["status"] == "Provisioned":
                            report.recovered += 1
                        else:
                            report.interrupted += 1
            elif now - int(intent.get("at") or 0) > self.ttl_ms:
                del state.intents[oid]
                report.expired_intents += 1
        for oid, entries in list(state.idem.items()):
            if not entries or not self.owns(oid) or oid in proc.in_flight:
                continue
            kept = {}
            for idem_key, entry in entries.items():
                age = now - int(entry.get("at") or 0)
                if age > self.ttl_ms:
                    report.expired_idem += 1
                    continue
                kept[idem_key] = entry
                if not entry.get("emitted") and entry.get("outcome") and \
                        age >= self.recovery_after_ms:
                    outcomes.append((oid, idem_key, entry.get("event_uuid"), entry["outcome"]))
                    report.resent += 1
            if not kept:
                del state.idem[oid]
            elif len(kept) != len(entries):
                state.idem[oid] = kept
        metrics.PENDING_INTENTS.set(report.pending - report.recovered - report.interrupted)
        await state.flush()
        if outcomes:
            await proc.emitter.send_outcomes([o for *_k, o in outcomes])
            for oid, idem_key, event_uuid, _o in outcomes:
                proc._mark_emitted(oid, idem_key, event_uuid)
            await state.flush()
        if any((report.recovered, report.interrupted, report.resent, report.expired_idem,
                report.expired_intents)):
            log.info("sweep: %s", report)
        return report

    async def _recover(self, oid: str, intent: dict[str, Any]) -> dict[str, Any] | None:
        proc = self.processor
        event = Event(order_id=oid, idem_key=intent["idem_key"],
                      event_uuid=intent.get("event_uuid") or "",
                      correlation_id=intent.get("correlation_id"),
                      requested_at=intent.get("requested_at"))
        request = WhmcsOrderRequest(order_id=oid, client_id=int(intent["client_id"]), items=(),
                                    notes="")
        try:
            found = await proc.provisioner.lookup(request, intent_at_ms=intent.get("at"))
            if found is not None and found.needs_accept and found.whmcs_order_id:
                failure = await proc.provisioner.accept(found.whmcs_order_id)
                if failure is not None:
                    found = failure
        except WhmcsError as exc:
            log.warning("sweep: WHMCS lookup failed; will retry", extra={
                "order_id": oid, "cause": str(exc)})
            return None
        if found is None:
            outcome = outcome_record(
                event, "Failed", opportunity_id=intent.get("opportunity_id"),
                whmcs_client_id=request.client_id, error_code="PROVISIONING_INTERRUPTED",
                error_message="the request was interrupted and not redelivered; no WHMCS order "
                              "exists for this Order — approve it again to retry",
                attempts=int(intent.get("attempt") or 0), completed_at=proc._clock())
        else:
            outcome = outcome_record(
                event, found.status, opportunity_id=intent.get("opportunity_id"),
                whmcs_client_id=request.client_id, whmcs_order_id=found.whmcs_order_id,
                service_ids=found.service_ids, addon_ids=found.addon_ids,
                invoice_id=found.invoice_id, error_code=found.error_code,
                error_message=found.error_message, attempts=int(intent.get("attempt") or 0),
                recovered=True, completed_at=proc._clock())
        proc.state.intents[oid] = {
            **intent, "outcome": outcome, "whmcs_order_id": outcome["whmcs_order_id"],
            "state": ACCEPTED if outcome["status"] == "Provisioned" else FAILED_STATE,
            "may_exist": outcome["whmcs_order_id"] is not None, "at": proc._clock()}
        proc._record(event, outcome)
        log.info("sweep recovered a pending intent", extra={
            "order_id": oid, "status": outcome["status"],
            "whmcs_order_id": outcome["whmcs_order_id"]})
        return outcome

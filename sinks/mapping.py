"""Outcome → Salesforce record updates (DESIGN "Salesforce write-back"). Pure functions.

=============  ==========================================================  ===================
outcome        Order                                                       Opportunity
=============  ==========================================================  ===================
Provisioned    ``Activation_Status__c='Provisioned'``, ``WHMCS_Order_Id__c``, ``StageName='Active'``,
               ``Activation_Error__c=None``, ``Activation_Error_DateTime__c``  ``WHMCS_Service_ID__c``
               ``=None`` (and ``Status='Activated'`` when configured)        (first service id)
Failed         ``Activation_Status__c='Failed'``, ``Activation_Error__c``     unchanged
               (≤ 255 UTF-16 units), ``Activation_Error_DateTime__c`` = completed_at
Skipped,       nothing                                                     nothing
Duplicate
=============  ==========================================================  ===================

Every update is absolute (field = value), so writing the same outcome twice is harmless —
that is what lets the sink redeliver after a crash. A field whose value is unknown (a
Provisioned outcome without a WHMCS order id, without service ids) is left out rather than
nulled, so a partial outcome never erases what Salesforce already holds.

Every update carries the outcome's ``completed_at`` in epoch milliseconds as its
``version`` (the batch merges updates of one record in version order) and, with the fence
on, in the fence field too (``Activation_Outcome_Ms__c`` on the Order and the
Opportunity), which the org's validation rule compares with the value the record holds
(:mod:`sinks.fence`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common.avro import epoch_ms

ORDER = "Order"
OPPORTUNITY = "Opportunity"
ACTIVATION_ERROR_LENGTH = 255  # Order.Activation_Error__c is Text(255)
ELLIPSIS = "…"


@dataclass(frozen=True)
class RecordKey:
    """One Salesforce record: what the batch merges on."""

    sobject: str
    record_id: str

    def __str__(self) -> str:
        return f"{self.sobject}/{self.record_id}"


@dataclass(frozen=True)
class RecordUpdate:
    key: RecordKey
    fields: dict[str, Any]
    version: int | None = None  # the outcome's completed_at, epoch ms: newer wins a merge


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units: a character beyond the BMP (``𠮟``, emoji) counts 2."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def truncate(text: str, length: int = ACTIVATION_ERROR_LENGTH) -> str:
    """``text`` cut to at most ``length`` UTF-16 code units, marked with an ellipsis when
    cut. Salesforce may count a Text field's length in code units rather than characters;
    this fits either way, and cuts between characters (never inside a surrogate pair)."""
    if utf16_length(text) <= length:
        return text
    budget, kept = length - utf16_length(ELLIPSIS), 0
    for char in text:
        budget -= 2 if ord(char) > 0xFFFF else 1
        if budget < 0:
            break
        kept += 1
    return text[:kept] + ELLIPSIS


def iso_datetime(value: dt.datetime | int | float) -> str:
    """Salesforce REST datetime (ISO-8601, UTC, milliseconds): ``2025-01-31T09:15:00.123Z``.

    ``value`` is an aware datetime (fastavro's timestamp-millis) or epoch milliseconds.
    """
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def error_text(outcome: dict[str, Any]) -> str:
    code = outcome.get("error_code") or ""
    message = outcome.get("error_message") or ""
    if code and message:
        return truncate(f"{code}: {message}")
    return truncate(message or code or "provisioning failed (no reason given)")


def updates_for(outcome: dict[str, Any], *, set_order_activated: bool = False,
                fence_field: str | None = None) -> list[RecordUpdate]:
    """The record updates one decoded outcome asks for (possibly none), each versioned by
    the outcome's ``completed_at``; ``fence_field`` also writes that version into it."""
    version = epoch_ms(outcome["completed_at"])
    extra = {fence_field: version} if fence_field else {}
    return [RecordUpdate(u.key, {**u.fields, **extra}, version)
            for u in _updates(outcome, set_order_activated)]


def _updates(outcome: dict[str, Any], set_order_activated: bool) -> list[RecordUpdate]:
    status = outcome["status"]
    order_id = outcome["order_id"]
    if status == "Provisioned":
        order: dict[str, Any] = {"Activation_Status__c": "Provisioned",
                                 "Activation_Error__c": None,
                                 "Activation_Error_DateTime__c": None}
        if outcome.get("whmcs_order_id") is not None:
            order["WHMCS_Order_Id__c"] = outcome["whmcs_order_id"]
        if set_order_activated:
            order["Status"] = "Activated"
        out = [RecordUpdate(RecordKey(ORDER, order_id), order)]
        opportunity_id = outcome.get("opportunity_id")
        if opportunity_id:
            opp: dict[str, Any] = {"StageName": "Active"}
            service_ids = outcome.get("whmcs_service_ids") or []
            if service_ids:
                opp["WHMCS_Service_ID__c"] = service_ids[0]
            out.append(RecordUpdate(RecordKey(OPPORTUNITY, opportunity_id), opp))
        return out
    if status == "Failed":
        return [RecordUpdate(RecordKey(ORDER, order_id), {
            "Activation_Status__c": "Failed",
            "Activation_Error__c": error_text(outcome),
            "Activation_Error_DateTime__c": iso_datetime(outcome["completed_at"]),
        })]
    return []  # Skipped, Duplicate: the worker decided not to touch Salesforce

"""What to do with one request event: pure, given the dedupe state, the intent and the Order.

:func:`decide` looks, in this order, at

1. the dedupe entry of the event's IdemKey (the Order's memory, :mod:`streams.state`):
   same ``event_uuid`` → :class:`Redelivery` (a crash replayed it: re-emit the *stored*
   outcome if it was never acknowledged, otherwise nothing); another event uuid →
   ``Duplicate``;
2. the Order's intent (``intents`` table): decided for this same event (same IdemKey and
   event uuid) → :class:`Redelivery` of the outcome the intent holds (the dedupe entry is
   missing: a crash between step 5's two table writes, or an incomplete table restore; the
   decided outcome is sent again, never a contradicting one); ``pending`` means an earlier attempt may have
   reached WHMCS, so the Order is **resumed**: WHMCS lookup first, whatever Salesforce says
   now — an order found is the outcome, so a crash can never turn a real provisioning into
   a contradicting ``Skipped``; ``accepted`` → ``Skipped(ALREADY_PROVISIONED)``;
3. the Order as Salesforce returns it (:func:`guard`): not found →
   ``Failed(ORDER_NOT_FOUND)``; ``WHMCS_Order_Id__c`` set →
   ``Skipped(ALREADY_PROVISIONED)``; ``Activation_Status__c`` not ``Activating`` →
   ``Skipped(NOT_ACTIVATING)``. A resumed attempt gets the same verdict, but only once its
   lookup found nothing (a lookup that finds nothing proves only that no order of ours
   exists, not that one may be created): its :class:`Provision` carries it as ``refused``;
4. the mapping (:mod:`streams.mapping`): an error → ``Failed(<code>)``, else
   :class:`Provision` — with ``lookup_first`` when an earlier failed attempt may have left
   an order in WHMCS, and ``sends_until``: until when that attempt's writer could still
   send (the intent's ``lease_until``, see :mod:`streams.lease`).

A ``Final`` for an event whose own attempt is still pending (the guard refuses and the
mapping fails, the Order was deleted, its mapping broke) is looked up first as well, by the
handler (:func:`streams.recovery.look_up_attempt`).

An event without IdemKey is deduplicated on its event uuid (``idem_key_of``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from common.avro import epoch_ms, utf8_text
from common.ids import describe_bad_id, is_salesforce_id
from common.log import redact
from streams.mapping import MappingError, WhmcsOrderRequest, map_order
from streams.state import ACCEPTED, Intent, Memory

PROVISIONED, FAILED, SKIPPED, DUPLICATE = "Provisioned", "Failed", "Skipped", "Duplicate"


@dataclass(frozen=True)
class Event:
    """A decoded request (the fields the worker uses) and where it came from."""

    order_id: str
    idem_key: str
    event_uuid: str
    correlation_id: str | None = None
    requested_at: int | None = None  # epoch ms (event CreatedDate)
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @classmethod
    def from_request(cls, value: dict[str, Any], *, topic: str = "", partition: int = -1,
                     offset: int = -1) -> Event:
        order_id = str(value.get("OrderId__c") or "").strip()
        if not order_id:
            raise ValueError("OrderId__c is empty")
        if not is_salesforce_id(order_id):
            raise ValueError(f"OrderId__c {describe_bad_id(order_id)} is not a 15- or "
                             "18-character Salesforce id")
        event_uuid = str(value.get("event_uuid") or "")
        created = value.get("CreatedDate")
        requested_at = epoch_ms(created) if created is not None else None
        return cls(order_id=order_id, idem_key=idem_key_of(value), event_uuid=event_uuid,
                   correlation_id=value.get("CorrelationId__c"), requested_at=requested_at,
                   topic=topic, partition=partition, offset=offset)


def idem_key_of(value: dict[str, Any]) -> str:
    key = value.get("IdemKey__c")
    if key:
        return str(key)
    return f"{value.get('OrderId__c')}-event-{value.get('event_uuid')}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Final:
    """An outcome decided without WHMCS (Duplicate / Skipped / Failed before provisioning)."""

    status: str
    error_code: str | None = None
    error_message: str | None = None
    whmcs_order_id: int | None = None


@dataclass(frozen=True)
class Redelivery:
    """The event was decided before; ``outcome`` is what was decided, ``emitted`` whether its
    send was acknowledged."""

    outcome: dict[str, Any] | None
    emitted: bool
    restore: bool = False  # the dedupe entry is missing: record the outcome again


@dataclass(frozen=True)
class Provision:
    request: WhmcsOrderRequest
    lookup_first: bool
    resumed: bool = False
    # epoch ms until which the earlier attempt could send to WHMCS: its intent's lease
    # (``at`` for an intent written before leases existed); a lookup waits past it
    sends_until: int | None = None
    previous_attempts: int = 0
    # the WHMCS clients earlier attempts sent to, when the Account's has changed since:
    # the lookup reads their orders too (an AddOrder may have landed there)
    earlier_client_ids: tuple[int, ...] = ()
    # a resumed attempt the guard now refuses: the outcome when its lookup finds nothing
    # (no AddOrder then)
    refused: Final | None = None


Decision = Final | Redelivery | Provision


@dataclass(frozen=True)
class Context:
    payment_method: str = "mailin"
    no_invoice: bool = False
    no_email: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def decide(event: Event, memory: Memory, intent: Intent | None,
           order: dict[str, Any] | None, ctx: Context | None = None) -> Decision:
    """``memory``: the Order's dedupe memory; ``intent``: its provisioning intent;
    ``order``: the Order as the guard read it (None: not found, or not needed because the
    memory decides)."""
    ctx = ctx or Context()
    entry = memory.get(event.idem_key)
    if entry is not None:
        decided = entry.decision_of(event.event_uuid)
        if decided is not None:
            return Redelivery(decided.outcome, decided.emitted)
        return Final(DUPLICATE, "DUPLICATE_IDEM_KEY",
                     f"IdemKey {event.idem_key} was already decided ({entry.status}) "
                     f"for event {entry.event_uuid}")
    if intent is not None and intent.decided(event.idem_key, event.event_uuid):
        # This very event was provisioned (or failed) but its dedupe entry is gone: the
        # intent holds the outcome that was decided; send that, never a contradicting one.
        return Redelivery(intent.outcome, emitted=False, restore=True)
    resumed = intent is not None and intent.is_pending
    if intent is not None and intent.state == ACCEPTED and intent.whmcs_order_id:
        return Final(SKIPPED, "ALREADY_PROVISIONED",
                     f"WHMCS order {intent.whmcs_order_id} was already created for this "
                     f"Order (IdemKey {intent.idem_key})",
                     whmcs_order_id=int(intent.whmcs_order_id))
    if order is None:
        return not_found(event.order_id)
    refused = guard(order)
    if refused is not None and not resumed:
        return refused
    try:
        request = map_order(order, idem_key=event.idem_key, payment_method=ctx.payment_method,
                            no_invoice=ctx.no_invoice, no_email=ctx.no_email)
    except MappingError as exc:
        # the guard's verdict first, as for any event (a resumed one looks up before either)
        return refused or Final(FAILED, exc.code, exc.message)
    may_exist = resumed or (intent is not None and intent.may_exist)
    earlier: tuple[int, ...] = ()
    if may_exist and intent is not None:
        # kept in every intent until a lookup has read them (an attempt resumed, fenced or
        # failed before its lookup must not forget them)
        earlier = tuple(dict.fromkeys(
            c for c in (*intent.earlier_client_ids, intent.client_id)
            if c and c != request.client_id))
    return Provision(request=request, lookup_first=may_exist, resumed=resumed,
                     sends_until=intent.sends_until() if may_exist and intent else None,
                     previous_attempts=intent.attempt if intent else 0,
                     earlier_client_ids=earlier, refused=refused)


def not_found(order_id: str) -> Final:
    return Final(FAILED, "ORDER_NOT_FOUND", f"Order {order_id} not found in Salesforce")


def guard(order: dict[str, Any]) -> Final | None:
    """The guard on the Order as Salesforce returns it: the outcome of an event that must
    not create its WHMCS order (one exists, or the Order is no longer ``Activating``), else
    None. Asked again before an ``AddOrder`` that waited out a refused WHMCS access
    (:meth:`streams.provision.Provisioner.provision`)."""
    existing = order.get("WHMCS_Order_Id__c")
    if existing not in (None, "", 0):
        return Final(SKIPPED, "ALREADY_PROVISIONED",
                     f"Order already has WHMCS_Order_Id__c {existing}",
                     whmcs_order_id=int(float(existing)))
    status = order.get("Activation_Status__c")
    if status != "Activating":
        return Final(SKIPPED, "NOT_ACTIVATING",
                     f"Activation_Status__c is {status!r}, not 'Activating'")
    return None


def needs_guard(event: Event, memory: Memory) -> bool:
    """Whether deciding ``event`` needs the Order from Salesforce (its IdemKey is new)."""
    return event.idem_key not in memory


def outcome_record(event: Event, status: str, *, opportunity_id: str | None = None,
                   whmcs_client_id: int | None = None, whmcs_order_id: int | None = None,
                   service_ids: list[int] | None = None, addon_ids: list[int] | None = None,
                   invoice_id: int | None = None, error_code: str | None = None,
                   error_message: str | None = None, attempts: int = 0,
                   recovered: bool = False, completed_at: int | None = None,
                   duplicate_ids: list[int] | None = None) -> dict[str, Any]:
    """A value of ``schemas/provisioning_outcome.avsc`` (timestamps as epoch ms). Its text
    is :func:`~common.avro.utf8_text`: the outcome stored before its send and the one sent
    are the same, whatever half-emoji Salesforce's JSON held."""
    if error_message:
        # outside text (WHMCS's, a module's, an exception's) leaves the process here, for a
        # year in Kafka and in the Order's field: masked as a log line is
        # masked before it is cut: a credential cut short loses the mark its pattern needs
        # (a URL's password its "@"), and its first characters would stay
        error_message = redact(utf8_text(error_message[:4000]))[:1000]
    return {
        "order_id": event.order_id,
        "opportunity_id": utf8_text(opportunity_id) if opportunity_id else opportunity_id,
        "idem_key": event.idem_key, "correlation_id": event.correlation_id,
        "event_uuid": event.event_uuid or None, "status": status,
        "whmcs_client_id": whmcs_client_id, "whmcs_order_id": whmcs_order_id,
        "whmcs_service_ids": list(service_ids or []), "whmcs_addon_ids": list(addon_ids or []),
        "whmcs_invoice_id": invoice_id, "error_code": error_code,
        "error_message": error_message or None,
        "attempts": attempts, "recovered": recovered, "requested_at": event.requested_at,
        "completed_at": completed_at if completed_at is not None else now_ms(),
        "duplicate_whmcs_order_ids": list(duplicate_ids or []),
    }

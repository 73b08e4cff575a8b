"""Create and accept one WHMCS order — at most once per Salesforce Order.

Contract with the caller: a ``pending`` intent for the Order is already **durable** in the
``intents`` changelog before :meth:`Provisioner.provision` runs, so a crash anywhere in here
leaves a record saying "WHMCS may have this order"; and ``fence`` is awaited right before
every WHMCS write (``AddOrder``, ``AcceptOrder``, ``CancelOrder``, each retry): it raises
:class:`~streams.lease.Fenced` when this worker may no longer act on the Order (see
:mod:`streams.lease`), which ends the provisioning with no call made.

The loop, until done or a run of transient WHMCS errors outlasts ``WORKER_RETRY_DEADLINE_S``
(:class:`_Outage`):

1. if the order may already exist (``settle_at_ms`` given: a resumed or unsure earlier
   attempt; or our own ``AddOrder`` failed without a definite answer) → :meth:`lookup`:
   it first waits until ``settle_at_ms`` — the moment after which no ``AddOrder`` sent
   earlier (by this worker, a crashed one, or one whose lease has ended) can still land —
   then reads the client's orders whose notes carry ``sfOrderId=<Id>``. Found ``Active`` →
   done (``recovered``); found ``Pending`` → ``AcceptOrder``; found in another status
   (Cancelled/Fraud) → ``Failed(WHMCS_ORDER_NOT_ACTIVE)``: never a second order. Found
   **several** (a fence was crossed) → :meth:`compensate`;
2. ``AddOrder`` — a timeout, dropped connection, 5xx or HTML page sets "look first" for the
   next round (WHMCS may have committed); a ``result=error`` is permanent →
   ``Failed(WHMCS_ERROR)`` with WHMCS's message. Never when the guard refuses
   (:class:`GuardCheck`): a resumed attempt's lookup that found nothing ends with the
   guard's verdict, and the verdict an ``AddOrder`` goes on is read again right before it
   once stale — older than ``WORKER_GUARD_MAX_AGE_S`` when the WHMCS slot is held (a long
   wait for the slots, under load), or read before a wait (a settle wait, a retry's
   backoff, refused WHMCS access: no deadline, the decision may be hours old; a wait for
   the ownership lease). Refused then, the provisioning ends as the guard would have at the
   start (``Skipped``, no ``AddOrder``) — after the lookup an ``AddOrder`` of the attempt
   that may have landed calls for, whose order found decides instead;
3. ``AcceptOrder`` — "Order ID not found or Status not Pending" → check the order's status:
   Active means an earlier accept (whose answer we lost) worked. An ``AcceptOrder`` without
   a definite answer (a timeout: with autosetup WHMCS runs the module while we wait) is
   never repeated blindly: the retry waits until that accept can no longer be running,
   then reads the order's status, and accepts again only a still ``Pending`` order.
   Every Failed result after an order was made or found names it, what WHMCS created for
   it (services, add-ons, invoice), its client and what a compensation met (the
   duplicates, those cancelled, those still live).

When a wait starts: an unanswered call's settle moment counts from when its request was
written on the connection — after the fence, the wait for a slot (which can be long under
load) and any connect and TLS handshake (up to min(``WHMCS_TIMEOUT_S``, 5) s), as the WHMCS
client reports it (``on_write``) — and never comes sooner than ``WORKER_LOOKUP_GRACE_S``
after the failure itself. A call of which nothing was written (no connection) cannot land:
it needs no wait and no lookup.

Transient errors back off (capped exponential, jitter) and past the deadline end in
``Failed(WHMCS_UNAVAILABLE)`` with ``may_exist`` set when an ``AddOrder`` might have landed,
so a later event of the Order looks before it creates. The deadline counts from the first
transient error of a run, not from the start: the waits before it (for the ownership lease,
refused WHMCS access, a WHMCS slot, a settle moment) are not WHMCS being unavailable.

``attempts`` counts the ``AddOrder`` calls made: not one WHMCS refused for this
installation's access, nor one of which nothing was written (its send deadline passed,
:class:`~common.errors.WhmcsNotSentError`; no connection, the client never reported the
write) — neither can have done anything in WHMCS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from common import tracing
from common.backoff import Backoff
from common.errors import (
    WhmcsAccessError,
    WhmcsError,
    WhmcsNotSentError,
    WhmcsTransientError,
    WhmcsUnknownResultError,
)
from common.whmcs import NOT_PENDING, AddOrderResult, WhmcsClient, WhmcsOrder
from streams import metrics
from streams.guard_check import GUARD_SLOT_READ_S, GuardCheck, GuardRefused, retrieved
from streams.mapping import WhmcsOrderRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

class Fence(Protocol):
    """Awaited right before each WHMCS write with the action's name; returns the write's
    send deadline (seconds on :func:`common.clock.lease_clock`: past it, the request must not
    leave the process),
    or raises streams.lease.Fenced. Awaited first with ``queued=True`` while the write waits
    among the next in line for a WHMCS slot: the moment to renew what a long wait for the
    slots wore down (the deadline returned then is not used)."""

    def __call__(self, action: str, /, *, queued: bool = False) -> Awaitable[float | None]: ...


async def no_fence(_action: str, *, queued: bool = False) -> float | None:
    """The fence of work no lease governs (unit tests of the provisioning logic)."""
    return None


@dataclass
class ProvisionResult:
    status: str  # Provisioned | Failed | Skipped (the guard refuses: no AddOrder)
    whmcs_order_id: int | None = None
    service_ids: list[int] = field(default_factory=list)
    addon_ids: list[int] = field(default_factory=list)
    invoice_id: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    # AddOrder calls made by this decision (not those WHMCS refused for this installation's
    # access, nor one of which nothing was written: nothing happened in WHMCS)
    attempts: int = 0
    recovered: bool = False
    may_exist: bool = False  # Failed, but an AddOrder may have created the order
    needs_accept: bool = field(default=False, repr=False)  # found Pending by a lookup
    # other WHMCS orders carrying this Order's marker (a fence was crossed), and those of
    # them this worker cancelled
    duplicate_ids: list[int] = field(default_factory=list)
    cancelled_ids: list[int] = field(default_factory=list)
    # the WHMCS client ``whmcs_order_id`` belongs to: the request's for an order this
    # decision created, the one a lookup found it under (an earlier client when the
    # Account's changed since); None with no order — the outcome names the request's then
    client_id: int | None = None

    def client_or(self, requested: int | None) -> int | None:
        """The outcome's ``whmcs_client_id``: the client of the WHMCS order this result
        names, else ``requested`` (the client the decision sent, or would send, to)."""
        return self.client_id if self.client_id is not None else requested


@dataclass(frozen=True)
class ProvisionPolicy:
    retry_deadline_s: float = 120.0
    whmcs_timeout_s: float = 15.0
    lookup_grace_s: float = 2.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    autosetup: bool = True

    def settle_at_ms(self, sent_at_s: float) -> int:
        """When an ``AddOrder`` sent at ``sent_at_s`` (epoch s) can no longer land."""
        return int((sent_at_s + self.whmcs_timeout_s + self.lookup_grace_s) * 1000)


ACCESS_BACKOFF_MAX_S = 30.0
_KEEP_ORDER = {"Active": 0, "Pending": 1}


class _Write:
    """When one WHMCS write left, for its settle moment (epoch seconds). ``handed``: when
    the call was made (the slot ours, the fence passed); ``wrote``: when its request was
    written, after any connect and TLS handshake, as the client reports it (``on_write``).
    ``reported``: the client reports its writes (:attr:`common.whmcs.WhmcsClient.
    reports_writes`) — then one it never reported wrote nothing."""

    __slots__ = ("_wall", "handed", "reported", "wrote")

    def __init__(self, wall: Callable[[], float], reported: bool) -> None:
        self._wall, self.reported = wall, reported
        self.handed = wall()
        self.wrote: float | None = None

    def written(self) -> None:
        """The client's ``on_write``: the request's bytes leave now."""
        self.wrote = self._wall()

    def left_at(self) -> float | None:
        """When the request may have reached WHMCS from; None when nothing of it was
        written (it cannot land). A client that does not report its writes: when it was
        handed the request (the write came then or later)."""
        if self.wrote is not None:
            return self.wrote
        return None if self.reported else self.handed


class _Outage:
    """One provisioning's run of transient WHMCS errors, which ``WORKER_RETRY_DEADLINE_S``
    bounds. It starts at the run's first error — what came before (a wait for the ownership
    lease, for refused access, for a WHMCS slot, a settle moment) is not WHMCS being
    unavailable — and ends when the Order moves on (its WHMCS order made or found). A lookup
    that answers but finds nothing, or a read of an order still Pending, does not end it:
    each leads back to the call WHMCS left unanswered, and would otherwise retry it for
    ever; nor does an access refusal (refusals between 503s would restart the deadline for
    ever). The waits during the run that are not WHMCS failing — the fence's (the ownership
    lease, an intent renewal's flush), the backoff on refused access, the guard's read again
    before a retried ``AddOrder`` (Salesforce slow or down, its read retried) — are not
    counted.

    On ``time.monotonic``: the clock the retries' backoffs sleep on (asyncio's), so the
    last wait, cut to what is left, ends at the deadline; and it stops while the host is
    suspended, which is not WHMCS being unavailable (the lease clock, CLOCK_BOOTTIME, would
    count it)."""

    __slots__ = ("_excluded", "_since")

    def __init__(self) -> None:
        self._since: float | None = None
        self._excluded = 0.0

    def failed(self) -> float:
        """A transient error: how long WHMCS has been unavailable (0 at a run's first)."""
        now = time.monotonic()
        if self._since is None:
            self._since, self._excluded = now, 0.0
        return now - self._since - self._excluded

    def ended(self) -> None:
        """WHMCS answered, the Order moved on."""
        self._since = None

    async def excluding(self, wait: Awaitable[T]) -> T:
        """``wait``, its time not counted in a run under way."""
        started = time.monotonic()
        try:
            return await wait
        finally:
            if self._since is not None:
                self._excluded += time.monotonic() - started

    def fence(self, fence: Fence) -> Fence:
        """``fence``, its time not counted in a run under way."""
        async def fenced(action: str, /, *, queued: bool = False) -> float | None:
            return await self.excluding(fence(action, queued=queued))
        return fenced


class AcceptFailed(WhmcsError):
    """The order a lookup found Pending could not be accepted — WHMCS refused, or never
    gave a definite answer even once an unanswered ``AcceptOrder`` was settled and the order
    read. ``result``: the Failed result naming that order (see :func:`_failed_after`), for a
    caller that ends with it; a caller that retries later handles it as any WhmcsError."""

    def __init__(self, result: ProvisionResult, cause: WhmcsError) -> None:
        super().__init__(str(cause), action=cause.action)
        self.result = result


def _failed_after(created: ProvisionResult, error_code: str | None,
                  error_message: str | None, attempts: int) -> ProvisionResult:
    """Failed, of the WHMCS order ``created`` names (made by this attempt, or found by its
    lookup): that order and what WHMCS created for it (services, add-ons, invoice), its
    client, ``may_exist``, whether a lookup found it, and what a
    compensation met on the way — the duplicates, those cancelled, and its words (the
    duplicates still live) after the failure's own."""
    if created.error_code == "DUPLICATE_WHMCS_ORDERS" and created.error_message:
        error_message = f"{error_message}; {created.error_message}"
    return ProvisionResult(
        "Failed", created.whmcs_order_id, list(created.service_ids), list(created.addon_ids),
        created.invoice_id, error_code=error_code, error_message=error_message,
        attempts=attempts, recovered=created.recovered, may_exist=True,
        duplicate_ids=list(created.duplicate_ids), cancelled_ids=list(created.cancelled_ids),
        client_id=created.client_id)


def _after_refusal(refused: WhmcsError | None, message: str) -> str:
    """``message``, after the error WHMCS answered an ``AddOrder`` with when the lookup
    that followed it failed: the refusal is what an analyst must see (a payment method to
    fix, not an outage to wait out)."""
    if refused is None:
        return message
    return f"{refused.action}: {refused}; the lookup for an order it may have made " \
           f"failed: {message}"


def _addon_ids(order: WhmcsOrder) -> list[int]:
    items = ((order.raw.get("lineitems") or {}).get("lineitem")) or []
    return [int(i["relid"]) for i in items
            if str(i.get("type", "")).lower() == "addon" and str(i.get("relid", ""))]


class Provisioner:
    def __init__(self, whmcs: WhmcsClient, policy: ProvisionPolicy, *,
                 parallelism: int = 16,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_retry: Callable[[str], None] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        """``parallelism``: WHMCS calls in flight at once, whichever Orders they serve (a
        lookup's wait holds no slot)."""
        self.whmcs = whmcs
        # whether the client tells when a request is written (WhmcsClient does; the
        # settle moments count from then), or only when it was handed the request
        self._reports_writes = bool(getattr(whmcs, "reports_writes", False))
        self._slots = asyncio.Semaphore(parallelism)
        # writes next in line for a slot: their fence (which may renew the intent, a durable
        # flush) runs here, so a slot is held by a call, not by a flush
        self._next = asyncio.Semaphore(parallelism)
        # AddOrders next in line apart, twice as many: each may read the guard there
        # (GuardCheck), a query the others need not wait for, and enough of them that
        # those reads (coalesced) keep the slots busy
        self._next_add = asyncio.Semaphore(2 * parallelism)
        self.policy = policy
        self._sleep = sleep
        self._wall = wall
        self._on_retry = on_retry or (lambda _reason: None)
        self.access_refused_since: float | None = None  # for /healthz
        self.access_error: str | None = None
        self._access_logged_at = 0.0
        # the provisionings waiting out a refused access now: once none is, nothing says
        # WHMCS refuses (one that ends with a lookup, a guard's refusal or a fence, not with
        # an AddOrder or AcceptOrder taken, left the refusal on /readyz and the page for good)
        self._access_waiters: set[object] = set()

    def _access_refused(self, exc: WhmcsAccessError, waiter: object) -> None:
        self._access_waiters.add(waiter)
        now = time.time()
        self.access_refused_since = self.access_refused_since or now
        self.access_error = f"{exc.action}: {exc}"
        if now - self._access_logged_at >= 60:  # once a minute, not once per Order
            self._access_logged_at = now
            log.error("WHMCS refuses this installation's credentials or IP; Orders wait "
                      "until it is fixed (WHMCS_API_IDENTIFIER/SECRET/ACCESS_KEY, allow-list, "
                      "the API role's permitted actions; 'IP Banned': WHMCS's ban after "
                      "failed logins — lift it in WHMCS or wait it out)",
                      extra={"cause": self.access_error})

    async def provision(self, request: WhmcsOrderRequest, *, settle_at_ms: int | None = None,
                        fence: Fence = no_fence,
                        earlier_client_ids: tuple[int, ...] = (),
                        guard: GuardCheck | None = None) -> ProvisionResult:
        """:meth:`_provision`; WHMCS's refusal of this installation is said (``/readyz``,
        ``sfprov_worker_whmcs_access_refused``) while any provisioning waits it out."""
        waiter = object()
        try:
            return await self._provision(request, settle_at_ms=settle_at_ms, fence=fence,
                                         earlier_client_ids=earlier_client_ids, guard=guard,
                                         waiter=waiter)
        finally:
            if waiter in self._access_waiters:
                self._access_waiters.discard(waiter)
                if not self._access_waiters:
                    self.access_refused_since = None

    async def _provision(self, request: WhmcsOrderRequest, *, settle_at_ms: int | None,
                         fence: Fence, earlier_client_ids: tuple[int, ...],
                         guard: GuardCheck | None, waiter: object) -> ProvisionResult:
        """``settle_at_ms`` set: an earlier attempt may have created the order — look it up
        (after that moment) before creating; ``earlier_client_ids``: the WHMCS clients
        earlier attempts sent to, when they are not ``request``'s (the lookup reads them
        all). ``guard``: the guard's verdict on the Order (:class:`GuardCheck`), asked
        before each ``AddOrder`` — read again first when stale, once the WHMCS slot is held;
        a refusal (a resumed attempt's when its lookup found nothing, or the Order set back
        since) is the result, with no ``AddOrder``. None: no guard (unit tests). Raises
        :class:`~streams.lease.Fenced`."""
        policy = self.policy
        # the run of transient errors WORKER_RETRY_DEADLINE_S bounds: none yet (_Outage)
        outage = _Outage()
        fence = outage.fence(fence)
        if guard is not None:
            guard.timed_by(outage.excluding)
        created: ProvisionResult | None = None
        attempts = 0
        add_uncertain = False
        sent: _Write | None = None  # the last AddOrder / AcceptOrder: when it left
        accept_settle_at_ms: int | None = None  # an unanswered AcceptOrder: check it first
        # WHMCS answered the AddOrder with an error: looked up before it is the result
        add_refused: WhmcsError | None = None
        waiting = guard.waiting if guard is not None else (lambda: None)

        def sending() -> _Write:
            nonlocal sent
            sent = self._write()
            return sent
        backoff = Backoff(policy.backoff_initial_s, policy.backoff_max_s)
        access_backoff = Backoff(policy.backoff_initial_s, ACCESS_BACKOFF_MAX_S)
        extra = {"order_id": request.order_id}
        tracing.set_current_order(request.order_id)  # whose WHMCS calls these are (spans)
        while True:
            try:
                if created is None and settle_at_ms is not None:
                    if settle_at_ms / 1000 > self._wall():
                        waiting()  # the settle wait: the guard's verdict may go stale
                    found = await self.lookup(request, settle_at_ms=settle_at_ms, fence=fence,
                                              earlier_client_ids=earlier_client_ids)
                    settle_at_ms = None
                    if found is not None:
                        created = found
                        outage.ended()  # the order found: the Order moves on
                        created.attempts = attempts
                        if add_refused is not None:
                            log.warning("WHMCS answered the AddOrder with an error (%s) yet "
                                        "made the order: WHMCS order %s goes on", add_refused,
                                        found.whmcs_order_id, extra=extra)
                        if created.status == "Failed" or not found.needs_accept:
                            return created  # not active, or found Active: nothing left
                    elif add_refused is not None:  # no order made: the error is the result
                        return ProvisionResult(
                            "Failed", error_code="WHMCS_ERROR",
                            error_message=f"{add_refused.action}: {add_refused}",
                            attempts=attempts)
                if created is None:
                    # the guard refuses (a resumed attempt whose lookup found nothing): that
                    # verdict ends it, read again first when stale (it may allow now)
                    if guard is not None and guard.refused is not None and \
                            await guard.current() is not None:
                        return replace(guard.refused, attempts=attempts)
                    attempts += 1
                    add_uncertain = True
                    sent = None
                    try:
                        res = await self._call("AddOrder", fence, lambda d: self._add(
                            request, d, sending), guard=guard)
                    except GuardRefused as refusal:  # read again once the slot was held
                        log.info("the Order no longer passes the guard (%s); no AddOrder",
                                 refusal, extra=extra)
                        attempts -= 1  # not sent
                        return replace(refusal.result, attempts=attempts)
                    add_uncertain = False
                    outage.ended()  # WHMCS made the order: the Order moves on
                    self.access_refused_since = None
                    created = ProvisionResult("Provisioned", res.order_id, res.service_ids,
                                              res.addon_ids, res.invoice_id, attempts=attempts,
                                              client_id=request.client_id)
                    log.info("WHMCS order created", extra={**extra,
                                                            "whmcs_order_id": res.order_id})
                sent = None
                failure = await self.accept(created.whmcs_order_id or 0, fence=fence,
                                            settle_at_ms=accept_settle_at_ms,
                                            on_send=sending)
                if failure is not None:
                    return _failed_after(created, failure.error_code, failure.error_message,
                                         attempts)
                created.attempts = attempts
                return created
            except (WhmcsTransientError, WhmcsUnknownResultError) as exc:
                left_at = None if sent is None or isinstance(exc, WhmcsNotSentError) \
                    else sent.left_at()
                # None: certainly not sent (not written: nothing can land) — the fence
                # decides what next; else WHMCS may have committed what was written
                if left_at is None and add_uncertain:
                    attempts -= 1  # an AddOrder of which nothing was written was not made
                if left_at is not None:
                    if created is None and add_uncertain:
                        settle_at_ms = self._settle_at_ms(left_at)
                    elif created is not None:
                        accept_settle_at_ms = self._settle_at_ms(left_at)
                add_uncertain = False
                sent = None
                delay = backoff.next_delay()
                unavailable = outage.failed()
                left = policy.retry_deadline_s - unavailable
                if delay > left:
                    log.warning("WHMCS unavailable past the retry deadline",
                                extra={**extra, "cause": str(exc)})
                    message = (f"WHMCS unavailable for {unavailable:.0f}s (retry deadline "
                               f"{policy.retry_deadline_s:.0f}s): {exc}")
                    if created is not None:  # made, or found by the lookup: not accepted
                        return _failed_after(created, "WHMCS_UNAVAILABLE", message, attempts)
                    return ProvisionResult(
                        "Failed", error_code="WHMCS_UNAVAILABLE",
                        error_message=_after_refusal(add_refused, message),
                        # an AddOrder of this attempt, or (a lookup still owed) of an
                        # earlier one, may have landed: the next attempt looks first
                        attempts=attempts, may_exist=attempts > 0 or settle_at_ms is not None)
                if exc.retry_after is not None and exc.retry_after > delay:
                    # WHMCS (or its proxy) said when to come back (Retry-After): not
                    # sooner, and not past the deadline — one last try at the deadline
                    # rather than failing the Order before it
                    delay = min(exc.retry_after, left)
                self._on_retry(type(exc).__name__)
                log.info("WHMCS call failed; retrying in %.1f s", delay,
                         extra={**extra, "cause": str(exc)})
                waiting()
                await self._sleep(delay)
            except WhmcsAccessError as exc:
                # Our credentials or IP are refused: nothing happened in WHMCS and no Order is
                # at fault. Wait for the fix — no deadline, /healthz says why.
                if add_uncertain:
                    # an AddOrder refused so is not one of the Order's attempts (README,
                    # `attempts`): however long the outage, a Skipped the guard read after
                    # it decides has 0, a Provisioned counts the calls WHMCS took up
                    attempts -= 1
                add_uncertain = False
                self._access_refused(exc, waiter)
                self._on_retry("WhmcsAccessError")
                waiting()  # no deadline: the decision may be hours old when access returns
                # the wait on refused access is not WHMCS unavailable: left out of a run of
                # transient errors under way, which it does not end (refusals between 503s
                # would otherwise restart the deadline for ever)
                await outage.excluding(self._sleep(access_backoff.next_delay()))
            except WhmcsError as exc:
                if created is not None:
                    return _failed_after(created, "WHMCS_ERROR", f"{exc.action}: {exc}",
                                         attempts)
                written = sent.left_at() if sent is not None else None
                if add_uncertain and written is not None:
                    # WHMCS answers an exception anywhere in AddOrder as result=error — also
                    # one after it saved the order (an invoice, hook or e-mail step failing, a
                    # deadlock): the order may exist. The answer came, so nothing is still
                    # running: look now, before the error becomes the result (a Failed that
                    # said "no order" let the next request create a second one)
                    add_refused, add_uncertain, sent = exc, False, None
                    settle_at_ms = int(self._wall() * 1000)
                    log.warning("WHMCS answered the AddOrder with an error (%s); looking for "
                                "an order it may have made before the error", exc, extra=extra)
                    continue
                return ProvisionResult(
                    "Failed", error_code="WHMCS_ERROR",
                    error_message=_after_refusal(add_refused, f"{exc.action}: {exc}"),
                    attempts=attempts, may_exist=settle_at_ms is not None)

    def _settle_at_ms(self, sent_at: float) -> int:
        """When a write whose request left at ``sent_at`` (epoch s: :meth:`_Write.left_at`)
        and went unanswered can no longer land: its timeout and the grace after it, and at
        least the grace from now."""
        return max(self.policy.settle_at_ms(sent_at),
                   int((self._wall() + self.policy.lookup_grace_s) * 1000))

    def _write(self) -> _Write:
        """A write about to be handed to the client (the slot is ours, the fence passed)."""
        return _Write(self._wall, self._reports_writes)

    def _on_write(self, write: _Write | None) -> dict[str, Any]:
        """The ``on_write`` keyword of a client that reports its writes, telling ``write``."""
        return {"on_write": write.written} if write is not None and write.reported else {}

    async def _add(self, request: WhmcsOrderRequest, send_deadline: float | None,
                   sending: Callable[[], _Write]) -> AddOrderResult:
        write = sending()  # the slot is ours and the fence passed: the request goes now
        return await self.whmcs.add_order(request.params(), send_deadline=send_deadline,
                                          **self._on_write(write))

    async def accept(self, order_id: int, *, fence: Fence = no_fence,
                     settle_at_ms: int | None = None,
                     on_send: Callable[[], _Write] | None = None) -> ProvisionResult | None:
        """Accept ``order_id``; None when it is Active afterwards, else a Failed result.

        ``settle_at_ms``: an earlier ``AcceptOrder`` went unanswered — wait until it can no
        longer be running, then read the order: Active → done, Pending → accept, anything
        else → Failed. ``on_send`` is called as the ``AcceptOrder`` request is handed to the
        client; the write it returns is told when the request is written."""
        if settle_at_ms is not None:
            await self._wait_until(settle_at_ms, f"reading WHMCS order {order_id} (an "
                                   "unanswered AcceptOrder may still be running)", None)
            order = await self._read_order(order_id)
            status = order.status if order else "missing"
            if status == "Active":
                return None
            if status != "Pending":
                return self._not_active(order_id, "an AcceptOrder went unanswered", order)
            log.info("WHMCS order %d is still Pending after an unanswered AcceptOrder; "
                     "accepting it", order_id)

        async def call(send_deadline: float | None) -> None:
            # the slot is ours and the fence passed: the request goes now
            write = on_send() if on_send is not None else None
            await self.whmcs.accept_order(order_id, autosetup=self.policy.autosetup,
                                          send_deadline=send_deadline,
                                          **self._on_write(write))
        try:
            await self._call("AcceptOrder", fence, call)
            self.access_refused_since = None
            return None
        except WhmcsError as exc:
            if type(exc) is not WhmcsError or NOT_PENDING not in str(exc):
                raise
        order = await self._read_order(order_id)
        if order is not None and order.status == "Active":
            return None
        return self._not_active(order_id, "AcceptOrder refused", order)

    async def accept_found(self, found: ProvisionResult, *, fence: Fence = no_fence,
                           settle_unanswered: bool = True) -> ProvisionResult:
        """Accept the Pending order a lookup ``found`` (the sweep's recovery, an event's own
        pending attempt: :func:`streams.recovery.look_up_attempt`). ``settle_unanswered``:
        as :meth:`provision` does, an ``AcceptOrder`` left without a definite answer is not
        repeated blindly — once it can no longer be running the order is read, Active is
        done, still Pending is accepted again (else it raises at once: for a caller that
        tries again later, whose lookup waits that accept out). Returns ``found`` once the
        order is Active, a Failed result naming it when it is not (Cancelled, Fraud);
        raises :class:`AcceptFailed` (its ``result`` names the order too) when WHMCS refused
        the accept or left it unknown, and Fenced."""
        order_id = found.whmcs_order_id or 0
        sent: _Write | None = None
        settle_at_ms: int | None = None

        def sending() -> _Write:
            nonlocal sent
            sent = self._write()
            return sent
        while True:
            try:
                failure = await self.accept(order_id, fence=fence, settle_at_ms=settle_at_ms,
                                            on_send=sending)
            except (WhmcsTransientError, WhmcsUnknownResultError) as exc:
                if settle_unanswered and settle_at_ms is None and sent is not None and \
                        not isinstance(exc, WhmcsNotSentError):
                    left_at = sent.left_at()
                    if left_at is not None:
                        # WHMCS may have accepted (the module runs while we wait): read it
                        # once that call can no longer be running, as provision() does
                        settle_at_ms = self._settle_at_ms(left_at)
                        log.info("AcceptOrder of WHMCS order %d unanswered (%s); reading it "
                                 "once it can no longer be running", order_id, exc)
                    else:
                        # nothing of it was written (no connection): nothing to wait out —
                        # read it and accept again after the grace, as an unanswered one
                        settle_at_ms = int((self._wall() + self.policy.lookup_grace_s) * 1000)
                        log.info("AcceptOrder of WHMCS order %d not sent (%s); trying again",
                                 order_id, exc)
                    sent = None
                    continue
                raise AcceptFailed(_failed_after(
                    found, "WHMCS_UNAVAILABLE", f"WHMCS gave no definite answer: {exc}",
                    found.attempts),
                    exc) from exc
            except WhmcsAccessError as exc:
                # this installation refused, not the order: no answer about it (an Order
                # is never failed WHMCS_ERROR for our credentials or IP)
                raise AcceptFailed(_failed_after(
                    found, "WHMCS_UNAVAILABLE", f"WHMCS refused this installation: "
                    f"{exc.action}: {exc}", found.attempts), exc) from exc
            except WhmcsError as exc:
                raise AcceptFailed(_failed_after(
                    found, "WHMCS_ERROR", f"{exc.action}: {exc}", found.attempts),
                    exc) from exc
            if failure is None:
                return found
            return _failed_after(found, failure.error_code, failure.error_message,
                                 found.attempts)

    async def _wait_until(self, settle_at_ms: int, before: str, order_id: str | None) -> None:
        """Sleep until ``settle_at_ms`` (epoch ms), logging what waits for it."""
        wait = settle_at_ms / 1000 - self._wall()
        if wait > 0:
            log.info("waiting %.1f s before %s", wait, before,
                     extra={"order_id": order_id} if order_id else None)
            await self._sleep(wait)

    async def _read_order(self, order_id: int) -> WhmcsOrder | None:
        return await self._call("GetOrders", None, lambda _d: self.whmcs.get_order(order_id))

    async def _status(self, order_id: int) -> str:
        order = await self._read_order(order_id)
        return order.status if order else "missing"

    @staticmethod
    def _not_active(order_id: int, why: str, order: WhmcsOrder | None) -> ProvisionResult:
        """Failed: ``order_id`` (as ``order`` reads, None: not found) is not Active; what
        WHMCS created for it listed."""
        status = order.status if order else "missing"
        return ProvisionResult(
            "Failed", order_id, list(order.service_ids) if order else [],
            _addon_ids(order) if order else [], order.invoice_id if order else None,
            error_code="WHMCS_ORDER_NOT_ACTIVE",
            error_message=f"{why} and WHMCS order {order_id} is {status}")

    async def lookup(self, request: WhmcsOrderRequest, *, settle_at_ms: int | None = None,
                     fence: Fence = no_fence,
                     earlier_client_ids: tuple[int, ...] = ()) -> ProvisionResult | None:
        """The WHMCS order of this Salesforce Order, if one exists: read once every
        ``AddOrder`` sent before ``settle_at_ms`` has landed (see the module docstring). Its
        ``client_id`` is the client the order was found under: ``request``'s or one of
        ``earlier_client_ids``."""
        if settle_at_ms is not None:
            await self._wait_until(settle_at_ms, "looking the Order up in WHMCS (an earlier "
                                   "AddOrder may still land)", request.order_id)
        found = await self._find(request, earlier_client_ids)
        if not found:
            return None
        ranked = sorted(found, key=lambda o: (_KEEP_ORDER.get(o.status, 2), o.id))
        order = ranked[0]
        result = ProvisionResult("Provisioned", order.id, order.service_ids, _addon_ids(order),
                                 order.invoice_id, recovered=True, client_id=order.client_id)
        if order.status not in _KEEP_ORDER:
            return ProvisionResult("Failed", order.id, order.service_ids, _addon_ids(order),
                                   order.invoice_id, error_code="WHMCS_ORDER_NOT_ACTIVE",
                                   error_message=f"WHMCS order {order.id} for this Order is "
                                                 f"{order.status}; not creating another",
                                   recovered=True, may_exist=True, client_id=order.client_id)
        result.needs_accept = order.status == "Pending"
        others = [o for o in ranked[1:] if o.status in _KEEP_ORDER]
        if others:
            await self.compensate(request, order, others, result, fence=fence)
        return result

    async def compensate(self, request: WhmcsOrderRequest, kept: WhmcsOrder,
                         others: list[WhmcsOrder], result: ProvisionResult, *,
                         fence: Fence = no_fence) -> None:
        """The last line: several live WHMCS orders carry this Order's marker. Keep
        ``kept`` (Active before Pending, then the lowest id), cancel the other Pending ones,
        never accept a second; the outcome says so (``DUPLICATE_WHMCS_ORDERS``). A
        ``CancelOrder`` that failed but may have worked — unanswered, or refused (the order
        cancelled meanwhile: "Order ID not found or Status not Pending") — is followed by a
        read of the order (once an unanswered one can no longer be running, as for the
        other writes): found ``Cancelled``, it counts as cancelled, not "still live"."""
        result.duplicate_ids = [o.id for o in others]
        cancelled: set[int] = set()
        # a CancelOrder that failed but may have worked (unanswered, or WHMCS refused it: the
        # order cancelled meanwhile, "... Status not Pending") → when its order can be read:
        # once an unanswered one can no longer be running, as for the other writes
        unsure: dict[int, int | None] = {}
        for other in others:
            if other.status != "Pending":
                continue
            sent: list[_Write] = []
            try:
                await self._call("CancelOrder", fence, partial(self._cancel, other.id, sent))
                cancelled.add(other.id)
            except WhmcsError as exc:
                log.error("compensation: cancelling duplicate WHMCS order %d failed: %s",
                          other.id, exc, extra={"order_id": request.order_id})
                left_at = sent[0].left_at() if sent else None
                if isinstance(exc, WhmcsNotSentError | WhmcsAccessError) or left_at is None:
                    continue  # certainly not done: nothing of it was written
                unanswered = isinstance(exc, WhmcsTransientError | WhmcsUnknownResultError)
                unsure[other.id] = self._settle_at_ms(left_at) if unanswered else None
        settle_at_ms = max((at for at in unsure.values() if at is not None), default=None)
        if settle_at_ms is not None:
            await self._wait_until(settle_at_ms, "reading duplicate WHMCS orders (an "
                                   "unanswered CancelOrder may still be running)",
                                   request.order_id)
        for order_id in unsure:
            try:
                status = await self._status(order_id)
            except WhmcsError as exc:
                log.error("compensation: reading duplicate WHMCS order %d failed: %s",
                          order_id, exc, extra={"order_id": request.order_id})
                continue
            if status == "Cancelled":
                cancelled.add(order_id)
        result.cancelled_ids = [o.id for o in others if o.id in cancelled]
        left = [o.id for o in others if o.id not in result.cancelled_ids]
        metrics.COMPENSATIONS.inc()
        result.error_code = "DUPLICATE_WHMCS_ORDERS"
        result.error_message = (
            f"{len(others) + 1} WHMCS orders carry this Order's marker: kept {kept.id} "
            f"({kept.status}), cancelled {result.cancelled_ids or 'none'}"
            + (f", still live {left} (review them in WHMCS)" if left else ""))
        log.error("compensation: %s", result.error_message,
                  extra={"order_id": request.order_id, "whmcs_order_id": kept.id})

    async def _cancel(self, order_id: int, sent: list[_Write],
                      send_deadline: float | None) -> None:
        write = self._write()  # the slot is ours and the fence passed: it goes now
        sent.append(write)
        await self.whmcs.cancel_order(order_id, send_deadline=send_deadline,
                                      **self._on_write(write))

    async def _find(self, request: WhmcsOrderRequest,
                    earlier_client_ids: tuple[int, ...] = ()) -> list[WhmcsOrder]:
        """The orders carrying the Order's marker, of ``request``'s client and the earlier
        ones; each names the client it was found under (a row without ``userid``: the
        client it was read for)."""
        found: list[WhmcsOrder] = []
        for client in dict.fromkeys((request.client_id, *earlier_client_ids)):
            orders = await self._call("GetOrders", None, partial(self._find_in, client,
                                                                  request.order_id))
            found += [o if o.client_id else replace(o, client_id=client)
                      for o in orders]
        return found

    async def _find_in(self, client_id: int, order_id: str,
                       _send_deadline: float | None) -> list[WhmcsOrder]:
        return await self.whmcs.find_orders_by_marker(client_id, order_id)

    async def _call(self, action: str, fence: Fence | None,
                    call: Callable[[float | None], Awaitable[T]],
                    guard: GuardCheck | None = None) -> T:
        """One WHMCS call in one of the ``parallelism`` slots. A write's ``fence`` is asked
        once the slot is ours (an Order queued behind the slots may have lost its partition
        while it waited); the deadline it answers travels with the request, which is not
        sent at all once it has passed — checked when the connection is ours, right before
        the first byte is written (a pause between the check and the write).

        A write first waits among the next ``parallelism`` in line (an ``AddOrder`` among
        ``2 × parallelism`` places of the ``AddOrder`` calls') and is fenced there: an
        intent whose lease ran short during the long wait is renewed before the slot is
        taken (a 2,000-Order burst at 150 ms per call: 48.5 → 49.4 Orders/s, 40.6 → 44.0
        under CPU contention, ``bench.stages --burst``). The fence asked again once the slot
        is ours is then a lease check, and a renewal only when the short wait for the slot
        outlived the intent.

        ``guard`` (an ``AddOrder``'s): the guard's verdict, asked among the next ``AddOrder`` calls
        (their own ``2 × parallelism`` places) right before the slot is taken, read again
        first when stale (:meth:`GuardCheck.current`) — after the long wait under load, and
        holding no slot: a Salesforce outage stops only ``AddOrder`` calls, never an
        ``AcceptOrder``. When the wait for the slot then outlived the verdict, it is read once
        more with the slot held, for at most :data:`GUARD_SLOT_READ_S` (slower, the slot is
        given back and the write queues again, once). A refusal raises
        :class:`GuardRefused`, nothing sent. A fence that waited for
        the lease gives the slot back: the verdict is read again among the next in line and
        the write queues again, so the lease check stays right before the write and no read
        waits with a slot held for longer than that second."""
        if fence is None:
            async with self._slots:
                return await call(None)
        # an AddOrder's guard is read while it holds its place among the next AddOrders,
        # never a WHMCS slot nor the other writes' places: a Salesforce slow or down holds
        # back AddOrders only, not the AcceptOrders of orders already made
        nxt = self._next_add if guard is not None else self._next
        # the read with the slot held (below): every time the wait for the slot outlived the
        # verdict (a max age of 0 included: the strictest setting must not check less), until
        # one is slower than GUARD_SLOT_READ_S
        slot_read = guard is not None
        while True:
            await nxt.acquire()
            try:
                while True:
                    if guard is not None:
                        refused = await guard.current()  # read again first when stale
                        if refused is not None:
                            raise GuardRefused(refused)
                    # the renewal last before the wait for a slot (a slow read first could
                    # leave it to the fence in the slot: a flush with the slot held)
                    await fence(action, queued=True)
                    if guard is None or not guard.outlived():  # it waited for the lease
                        break
                await self._slots.acquire()
            finally:
                nxt.release()
            held = True
            try:
                if guard is not None and slot_read and guard.stale():
                    # the wait for the slot outlived the verdict: read once more, holding
                    # the slot for at most GUARD_SLOT_READ_S — a Salesforce slower than
                    # that gets the slot back and is read holding none, then the write
                    # queues again (and is not read in the slot again: a read slower than
                    # the max age never loops; a fast one after a lease wait's second
                    # queueing is read again, as the first)
                    reading = asyncio.ensure_future(guard.current())
                    reading.add_done_callback(retrieved)
                    done, _ = await asyncio.wait({reading}, timeout=GUARD_SLOT_READ_S)
                    if not done:
                        slot_read = False
                        held = False
                        self._slots.release()
                        refused = await reading
                        if refused is not None:
                            raise GuardRefused(refused)
                        continue
                    refused = reading.result()
                    if refused is not None:
                        raise GuardRefused(refused)
                deadline = await fence(action)
                if guard is not None and guard.outlived():
                    # the fence waited for the lease: the verdict is read again holding no
                    # slot, and the write queues again (each pass follows a real wait)
                    held = False
                    self._slots.release()
                    continue
                return await call(deadline)
            finally:
                if held:
                    self._slots.release()

"""The guard read: many Orders with ONE SOQL query (``Id IN (...)``), coalesced across the
Orders that need a read at about the same time (:class:`GuardReads`).

Salesforce being down or rate-limited must never fail an Order: :meth:`Guard.fetch` retries
transient, auth and limit errors with capped backoff **for as long as it takes** (the events
wait, uncommitted, so nothing is lost) and reports itself unhealthy through
:attr:`Guard.unavailable_since` for ``/healthz``. A non-retryable error (e.g. a field missing
in the org: a deployment problem; a login, permission or API version refused) is retried too,
with the longest backoff, and logged as an error — dead-lettering every event because of a
configuration mistake would be worse. Only a 400, which one id may have caused
(:func:`~common.salesforce.refuses_records`), starts the search for the ids at fault.

The blocking simple-salesforce client runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from common.backoff import Backoff
from common.errors import PipelineError, SalesforceError
from common.ids import is_salesforce_id
from common.salesforce import refuses_records

log = logging.getLogger(__name__)

ORDER_FIELDS = ("Id, Status, Activation_Status__c, WHMCS_Order_Id__c, OpportunityId, "
                "AccountId, Account.WH_Account__c")
ITEM_FIELDS = ("Id, Quantity, UnitPrice, Product2Id, Product2.Name, "
               "Product2.WHMCS_Product_Id__c, Product2.Billing_Cycle__c, "
               "Product2.Item_Class__c, Product2.Portal_ConfigOptions_JSON__c")
MAX_IDS_PER_QUERY = 300  # keeps the GET URL well below Salesforce's 16 KB limit


class QueryClient(Protocol):
    def query(self, soql: str) -> list[dict[str, Any]]: ...


def guard_soql(order_ids: Iterable[str]) -> str:
    ids = sorted(set(order_ids))
    for order_id in ids:
        if not is_salesforce_id(order_id):  # never let a bad id inject SOQL
            raise ValueError(f"not a Salesforce id: {order_id!r}")
    quoted = ", ".join(f"'{i}'" for i in ids)
    # the items in OrderItemNumber order (the portal's creation order): Salesforce gives a
    # query's rows in no defined order without ORDER BY, and the mapping takes the first
    # Service item as the one the Add-ons ride on and the Opportunity links to
    return (f"SELECT {ORDER_FIELDS}, (SELECT {ITEM_FIELDS} FROM OrderItems "
            f"ORDER BY OrderItemNumber) FROM Order WHERE Id IN ({quoted})")


def _key18(order_id: str) -> str:
    return order_id[:15]


class Guard:
    def __init__(self, client: QueryClient, *, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 observer: Callable[[float, str], None] | None = None) -> None:
        self.client = client
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._observer = observer or (lambda _s, _o: None)
        self.queries = 0
        self.unavailable_since: float | None = None
        self.last_error: str | None = None
        self._accepted: str | None = None  # an id Salesforce answered a guard query for

    async def fetch(self, order_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Order records by their 15-char id prefix → look up with :meth:`find`."""
        return (await self.fetch_each(order_ids))[0]

    async def fetch_each(self, order_ids: Iterable[str]
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, PipelineError]]:
        """:meth:`fetch`, and the ids Salesforce refuses to be queried with (an 18-char id
        whose case checksum is wrong is refused, and takes its whole query with it): when a
        query is refused with a 400, its halves are asked, down to the ids refused on their
        own while others were answered. Refused whole — every id alone too, e.g. the bad id
        alone in its read — a query Salesforce answered (:meth:`_answers_others`) tells the
        ids' fault (each refused) from the query's (the org's fields): that one is waited out
        as before, and no Order is failed for it."""
        ids = sorted({i for i in order_ids if is_salesforce_id(i)})
        out: dict[str, dict[str, Any]] = {}
        refused: dict[str, PipelineError] = {}
        for start in range(0, len(ids), MAX_IDS_PER_QUERY):
            chunk = ids[start:start + MAX_IDS_PER_QUERY]
            try:
                records = await self._split(chunk, refused)
            except _Refusal as refusal:
                if await self._answers_others(chunk):
                    self._refuse(chunk, refusal, refused)
                    records = []
                else:
                    records = await self._query(guard_soql(chunk))
            for record in records:
                out[_key18(str(record["Id"]))] = record
        return out, refused

    async def _split(self, chunk: list[str], refused: dict[str, PipelineError]
                     ) -> list[dict[str, Any]]:
        """Records of ``chunk``; its ids refused alone go to ``refused``. Raises
        :class:`_Refusal` only when every id of ``chunk`` is refused."""
        try:
            answered = await self._query(guard_soql(chunk), refusal_raises=True)
            self._accepted = chunk[0]
            return answered
        except _Refusal:
            if len(chunk) == 1:
                raise
        middle = len(chunk) // 2
        records: list[dict[str, Any]] = []
        failed: list[tuple[list[str], _Refusal]] = []
        for half in (chunk[:middle], chunk[middle:]):
            try:
                records += await self._split(half, refused)
            except _Refusal as refusal:
                failed.append((half, refusal))
        if len(failed) == 2:
            raise failed[0][1]
        for half, why in failed:  # refused id by id while its sibling was answered
            self._refuse(half, why, refused)
        return records

    async def _answers_others(self, chunk: list[str]) -> bool:
        """Whether Salesforce answers the guard query for an id it accepts — then the
        refusal of ``chunk`` (all of it, every id alone) was its ids'. The id: one it
        answered before, else the 15-char form of an 18-char id of ``chunk`` (no case
        checksum to be wrong; its records are not used). Refused too, or no such id at
        hand: the query's (the org's fields), not an Order's."""
        probe = self._accepted or next((i[:15] for i in chunk if len(i) == 18), None)
        if probe is None:
            return False
        try:
            await self._query(guard_soql([probe]), refusal_raises=True)
        except _Refusal:
            return False
        self._accepted = probe
        return True

    @staticmethod
    def _refuse(ids: list[str], why: _Refusal, refused: dict[str, PipelineError]) -> None:
        for order_id in ids:
            refused[order_id] = why.error
            log.error("guard query refused for Order %s alone: %s", order_id, why.error,
                      extra={"order_id": order_id})

    @staticmethod
    def find(orders: dict[str, dict[str, Any]], order_id: str) -> dict[str, Any] | None:
        """15- and 18-char ids of the same record match (Salesforce returns 18)."""
        return orders.get(_key18(order_id))

    async def _query(self, soql: str, *, refusal_raises: bool = False) -> list[dict[str, Any]]:
        """The query's records, retried while Salesforce is away; a refusal its ids may have
        caused (:func:`refuses_records`) raises :class:`_Refusal` with ``refusal_raises``,
        else is waited out too, like any refusal no id causes."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            started = time.monotonic()
            try:
                self.queries += 1
                records = await asyncio.to_thread(self.client.query, soql)
                self._observer(time.monotonic() - started, "success")
                if self.unavailable_since is not None:
                    log.info("Salesforce reachable again")
                self.unavailable_since, self.last_error = None, None
                return records
            except PipelineError as exc:
                self._observer(time.monotonic() - started, "error")
                if not exc.retryable and refusal_raises and refuses_records(exc):
                    # an answer about these ids (split off and failed one by one), not an
                    # outage: it left /readyz and SfprovSalesforceUnavailable failing until
                    # the next query succeeded — on a quiet worker, for good
                    raise _Refusal(exc) from exc
                self.unavailable_since = self.unavailable_since or time.time()
                self.last_error = f"{type(exc).__name__}: {exc}"
                wait = backoff.next_delay()
                if exc.retry_after:  # what Salesforce asked for, within the cap
                    wait = min(max(wait, exc.retry_after), self.backoff_max_s)
                if not exc.retryable:
                    wait = self.backoff_max_s
                    if refuses_records(exc):
                        log.error("guard query refused; retrying (check the org's fields)",
                                  extra={"cause": self.last_error})
                    else:
                        # no id causes this: splitting the read asked ~2n times, unpaced
                        log.error("Salesforce refuses this installation's guard query; "
                                  "retrying (check the login, the integration user's "
                                  "permissions, the API version)",
                                  extra={"cause": self.last_error})
                else:
                    log.warning("guard query failed; retrying", extra={"cause": self.last_error})
                await self._sleep(wait)


class _Refusal(Exception):
    """Salesforce refused a guard query (not retryable): ``error``."""

    def __init__(self, error: PipelineError) -> None:
        super().__init__(str(error))
        self.error = error


_reading: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "sfprov_guard_reading", default=())


def reading_orders() -> tuple[str, ...]:
    """The Orders of the guard read running in this task (its observer's spans)."""
    return _reading.get()


class GuardReads:
    """Coalesces the guard reads of Orders that need one at about the same time: the first
    Order waits up to ``linger_s`` for company, a read starts at once when ``max_ids`` are
    waiting — so Salesforce calls per Order stay those of batches, while no Order waits for
    another's WHMCS calls. At most ``concurrency`` reads run at once.

    While the worker is ``busy`` (a backlog: many Orders in flight), the first waits up to
    ``busy_linger_s`` instead: each Order then waits behind hundreds of others anyway, and
    the reads grow toward ``max_ids`` (a 1,000-Order burst of ``make bench``: 21–35 reads at
    50 ms, 8–11 with this). At a steady rate the short wait keeps the latency."""

    def __init__(self, guard: Guard, *, linger_s: float = 0.05,
                 busy_linger_s: float | None = None, busy: Callable[[], bool] | None = None,
                 max_ids: int = 200, concurrency: int = 4,
                 on_read: Callable[[int], None] | None = None) -> None:
        self.guard = guard
        self._on_read = on_read or (lambda _n: None)
        self.linger_s, self.max_ids = linger_s, max_ids
        self.busy_linger_s = linger_s if busy_linger_s is None else busy_linger_s
        self._busy = busy or (lambda: False)
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self.reads = 0

    async def get(self, order_id: str) -> dict[str, Any] | None:
        """The Order as Salesforce has it now (None: not found)."""
        future: asyncio.Future[dict[str, Any] | None] = \
            asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, []).append(future)
        if len(self._waiting) >= self.max_ids:
            self._flush()
        elif self._timer is None:
            linger = self.busy_linger_s if self._busy() else self.linger_s
            self._timer = asyncio.get_running_loop().call_later(linger, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, {}
        if waiting:
            asyncio.ensure_future(self._read(waiting))

    async def _read(self, waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]]
                    ) -> None:
        try:
            async with self._slots:
                self.reads += 1
                self._on_read(len(waiting))
                _reading.set(tuple(waiting))
                orders, refused = await self.guard.fetch_each(list(waiting))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for order_id, futures in waiting.items():
            found = Guard.find(orders, order_id)
            error = refused.get(order_id)
            for future in futures:
                if future.done():
                    continue
                if error is not None:  # the event's own: retried, then a dead letter
                    future.set_exception(SalesforceError(
                        f"Salesforce refuses to be queried for Order {order_id}: {error}",
                        error_code=getattr(error, "error_code", None), retryable=False))
                else:
                    future.set_result(found)

"""Run-time switchable fault injection and the API-call counters.

:class:`Faults` is the live configuration (``GET``/``POST /__sandbox/faults``): added
latency on REST and gRPC, a fraction of REST calls hanging before they are handled (the
client's timeout passes first; the call is then carried out all the same, as a slow org
finishes what its caller gave up on), a fraction failing with 503 or with per-record
``UNABLE_TO_LOCK_ROW``, permanent per-record errors for chosen ids, paused keepalives,
the daily API limit, and a *hold* on the next sObject Collections updates (each waits,
unprocessed, until ``POST /__sandbox/hold/release`` — a write delayed at will past what
others write meanwhile, as when its sender froze just before sending), and refused
``Subscribe`` calls: the next ``subscribe_error_calls`` (-1: every one until cleared) end
at once, after authentication, with gRPC status ``subscribe_error_status`` and, unless
empty, trailer ``error-code: subscribe_error_code`` — REFERENCE §1's
``…subscription.limit.exceeded`` (the default), ``…concurrent.client.limit.exceeded``, or a
bare ``INTERNAL``. One-shot actions (expire tokens, drop streams, inject bad events) are
separate admin endpoints.

Besides the faults, two org limits are switchable here: ``daily_limit`` (REST API requests)
and ``delivery_allocation`` — REFERENCE §1's "24 h delivery allocation … summed over all
subscribers": Pub/Sub events delivered to any stream in the last 24 hours of the sandbox
clock. Once it is used up, a stream with an event to deliver ends (after delivering up to the
allocation) and a new ``Subscribe`` is refused — both with :data:`LIMIT_STATUS` and trailer
``error-code:`` :data:`LIMIT_EXCEEDED`, as the ``subscribe_error_*`` fault renders it — until
deliveries leave the window. :class:`Counters` keeps both usages, each a
:class:`RollingWindow`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from sandbox.flags import parse_flag

from .errors import SfError

LIMIT_EXCEEDED = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
#: the gRPC status of a Pub/Sub limit error (the injected one's default too)
LIMIT_STATUS = "RESOURCE_EXHAUSTED"
#: the default 24-hour delivery allocation: far above any test or benchmark run (a real org
#: has 50,000 on Performance/Unlimited, 25,000 on Enterprise; ``--delivery-allocation``)
DELIVERY_ALLOCATION = 5_000_000

_MESSAGES = {
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": "Injected validation rule: this record cannot be saved",
    "ENTITY_IS_DELETED": "entity is deleted",
    "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record or 1 records: {id}",
    "INSUFFICIENT_ACCESS_OR_READONLY": "insufficient access rights on object id",
}


@dataclass
class Faults:
    rest_latency_ms: float = 0.0
    grpc_latency_ms: float = 0.0
    rest_503_rate: float = 0.0
    rest_hang_rate: float = 0.0  # a fraction of REST calls waits rest_hang_s, then runs
    rest_hang_s: float = 0.0
    lock_row_rate: float = 0.0
    #: record id (18 chars) -> errorCode (message chosen per code) for every write to it
    record_errors: dict[str, str] = field(default_factory=dict)
    keepalives_paused: bool = False
    #: keepalives carry the stream's own position (the last event it delivered) instead of
    #: a newer bus position: what Salesforce may do ("can be the last event consumed in
    #: your client"), so a quiet channel's stored id ages past the retention
    keepalives_hold_position: bool = False
    daily_limit: int = 5_000_000
    #: Pub/Sub events deliverable in 24 hours, summed over every subscriber
    delivery_allocation: int = DELIVERY_ALLOCATION
    #: the next N ``PATCH composite/sobjects`` calls wait for a release (counts down)
    hold_collection_calls: int = 0
    #: the next N ``Subscribe`` calls fail (counts down; -1: all of them until cleared) ...
    subscribe_error_calls: int = 0
    #: ... with this gRPC status (a ``grpc.StatusCode`` name) ...
    subscribe_error_status: str = LIMIT_STATUS
    #: ... and this ``error-code`` trailer ("" sends none)
    subscribe_error_code: str = LIMIT_EXCEEDED
    #: the seed of the rates' random draws (None: unseeded): a chaos run's ``--seed`` repeats
    #: the same misbehaviour for the same sequence of calls
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; an unknown key or a bad value is refused (ValueError)
        and then nothing changes."""
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}")
            current = getattr(self, key)
            if key == "seed":
                if isinstance(value, bool) or not isinstance(value, int | str | None):
                    raise ValueError(f"seed: an integer or null, not {value!r}")
                value = None if value in (None, "") else int(value)
            elif isinstance(current, bool):
                value = parse_flag(key, value)
            elif isinstance(current, int | float):
                value = type(current)(value)
            elif isinstance(current, dict):
                value = dict(value or {})
            elif isinstance(current, str):
                value = "" if value is None else str(value)
            if key == "subscribe_error_status" and (
                    value not in grpc.StatusCode.__members__ or value == "OK"):
                raise ValueError(f"subscribe_error_status: {value!r} is not a gRPC error "
                                 "status name (e.g. RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE)")
            if key == "delivery_allocation" and value < 0:
                raise ValueError("delivery_allocation: a number of events (0 or more)")
            if key == "subscribe_error_calls" and value < -1:
                raise ValueError("subscribe_error_calls: a count, or -1 for every call")
            values[key] = value
        for key, value in values.items():
            setattr(self, key, value)
        if "seed" in values:
            self._rng = random.Random(self.seed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def take_subscribe_error(self) -> tuple[str, str] | None:
        """(status name, error code) this Subscribe call must end with, if any; counts down."""
        if self.subscribe_error_calls == 0:
            return None
        if self.subscribe_error_calls > 0:
            self.subscribe_error_calls -= 1
        return self.subscribe_error_status, self.subscribe_error_code

    def rest_hang(self) -> float:
        """Seconds this REST call hangs before it is handled (0: it does not)."""
        if self.rest_hang_rate > 0 and self.rest_hang_s > 0 and \
                self._rng.random() < self.rest_hang_rate:
            return self.rest_hang_s
        return 0.0

    def rest_unavailable(self) -> bool:
        return self.rest_503_rate > 0 and self._rng.random() < self.rest_503_rate

    def record_error(self, record_id: str) -> SfError | None:
        """The injected error for a write to ``record_id``, if any (permanent or random)."""
        code = self.record_errors.get(record_id)
        if code is None and self.lock_row_rate > 0 and self._rng.random() < self.lock_row_rate:
            code = "UNABLE_TO_LOCK_ROW"
        if code is None:
            return None
        message = _MESSAGES.get(code, f"Injected error {code}").format(id=record_id)
        return SfError(code, message, [])


#: the window of the daily API limit and of the delivery allocation (Salesforce counts the
#: last 24 hours, not a calendar day) ...
API_WINDOW_MS = 86_400_000
#: ... counted per minute of the sandbox clock: a use leaves the window 24 h after its minute
API_BUCKET_MS = 60_000
_WINDOW_BUCKETS = API_WINDOW_MS // API_BUCKET_MS


class RollingWindow:
    """A usage over a rolling 24-hour window of the sandbox clock, as an org counts its
    limits: what was used in the last 1,440 minutes, counted per minute (a use leaves the
    window 24 h after the start of its minute) — no reset at UTC midnight. With a store
    attached (:meth:`attach`) the minutes are persisted under ``kind``
    (:data:`.store.USAGE_TABLES`), so a restart forgets none of them."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        #: uses per minute of the sandbox clock (minute number -> count)
        self.minutes: dict[int, int] = {}
        self._used = 0  # the sum of minutes
        self._first = -1  # the oldest minute still in the window, as of the last look
        self._store: Any = None

    def attach(self, store: Any) -> None:
        """Persist the usage in ``store`` (a :class:`~.store.Store`), reading what it holds."""
        self._store = store
        self.minutes = store.usage(self.kind)
        self._used, self._first = sum(self.minutes.values()), -1
        self._roll(store.now_ms())

    def _roll(self, now_ms: int) -> None:
        """Drop the minutes that left the window by ``now_ms``."""
        first = now_ms // API_BUCKET_MS - _WINDOW_BUCKETS + 1
        if first <= self._first:
            return
        self._first = first
        stale = [minute for minute in self.minutes if minute < first]
        for minute in stale:
            self._used -= self.minutes.pop(minute)
        if stale and self._store is not None:
            self._store.drop_usage(self.kind, first)

    def take(self, now_ms: int, limit: int, count: int = 1) -> int:
        """Count up to ``count`` uses against ``limit`` for the 24 hours up to ``now_ms``;
        how many were counted (0: the limit is reached, nothing counted)."""
        self._roll(now_ms)
        count = max(0, min(count, limit - self._used))
        if count:
            minute = now_ms // API_BUCKET_MS
            self.minutes[minute] = self.minutes.get(minute, 0) + count
            self._used += count
            if self._store is not None:
                self._store.add_usage(self.kind, minute, count)
        return count

    @property
    def used(self) -> int:
        """The uses of the last 24 hours (as of the last use without a store)."""
        if self._store is not None:
            self._roll(self._store.now_ms())
        return self._used

    def reset(self) -> None:
        self.minutes.clear()
        self._used = 0
        if self._store is not None:
            self._store.drop_usage(self.kind)


class Counters:
    """Calls per kind, plus two :class:`RollingWindow` usages: the daily API usage behind
    ``Sforce-Limit-Info`` (as an org's ``DailyApiRequests``) and the Pub/Sub events delivered
    against the delivery allocation. With a store attached (:meth:`attach`, as
    :class:`~.core.Sandbox` does) both are persisted, so a restart forgets none of them; only
    ``POST /__sandbox/counters/reset`` (:meth:`reset`) zeroes them."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.api = RollingWindow("api")
        self.deliveries = RollingWindow("delivery")

    def attach(self, store: Any) -> None:
        """Persist the usages in ``store`` (a :class:`~.store.Store`), reading what it holds."""
        self.api.attach(store)
        self.deliveries.attach(store)

    def count(self, kind: str, n: int = 1) -> None:
        self.calls[kind] += n

    def use_api(self, now_ms: int, limit: int) -> bool:
        """Count one API request against the limit of the 24 hours up to ``now_ms``; False
        (nothing counted) when that many were made already."""
        return self.api.take(now_ms, limit) == 1

    @property
    def api_used(self) -> int:
        """The API requests of the last 24 hours."""
        return self.api.used

    def snapshot(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "api_used": self.api_used,
                "events_delivered_24h": self.deliveries.used}

    def reset(self) -> None:
        self.calls.clear()
        self.api.reset()
        self.deliveries.reset()

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
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from .errors import SfError

LIMIT_EXCEEDED = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"

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
    daily_limit: int = 5_000_000
    #: the next N ``PATCH composite/sobjects`` calls wait for a release (counts down)
    hold_collection_calls: int = 0
    #: the next N ``Subscribe`` calls fail (counts down; -1: all of them until cleared) ...
    subscribe_error_calls: int = 0
    #: ... with this gRPC status (a ``grpc.StatusCode`` name) ...
    subscribe_error_status: str = "RESOURCE_EXHAUSTED"
    #: ... and this ``error-code`` trailer ("" sends none)
    subscribe_error_code: str = LIMIT_EXCEEDED

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; an unknown key or a bad value is refused (ValueError)
        and then nothing changes."""
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
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
            if key == "subscribe_error_calls" and value < -1:
                raise ValueError("subscribe_error_calls: a count, or -1 for every call")
            values[key] = value
        for key, value in values.items():
            setattr(self, key, value)

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
                random.random() < self.rest_hang_rate:
            return self.rest_hang_s
        return 0.0

    def rest_unavailable(self) -> bool:
        return self.rest_503_rate > 0 and random.random() < self.rest_503_rate

    def record_error(self, record_id: str) -> SfError | None:
        """The injected error for a write to ``record_id``, if any (permanent or random)."""
        code = self.record_errors.get(record_id)
        if code is None and self.lock_row_rate > 0 and random.random() < self.lock_row_rate:
            code = "UNABLE_TO_LOCK_ROW"
        if code is None:
            return None
        message = _MESSAGES.get(code, f"Injected error {code}").format(id=record_id)
        return SfError(code, message, [])


#: the daily API limit's window (Salesforce counts the last 24 hours, not a calendar day) ...
API_WINDOW_MS = 86_400_000
#: ... counted per minute of the sandbox clock: a call leaves the window 24 h after its minute
API_BUCKET_MS = 60_000
_WINDOW_BUCKETS = API_WINDOW_MS // API_BUCKET_MS


class Counters:
    """API calls per kind plus the daily API usage behind ``Sforce-Limit-Info``.

    The usage is a rolling 24-hour window on the sandbox clock, as an org's
    ``DailyApiRequests``: the calls of the last 1,440 minutes, counted per minute (a call
    leaves the window 24 h after the start of its minute) — no reset at UTC midnight. With a
    store attached (:meth:`attach`, as :class:`~.core.Sandbox` does) the minutes are
    persisted, so a restart forgets none of them; only ``POST /__sandbox/counters/reset``
    (:meth:`reset`) zeroes them."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        #: API requests per minute of the sandbox clock (minute number -> requests)
        self.api_minutes: dict[int, int] = {}
        self._used = 0  # the sum of api_minutes
        self._first = -1  # the oldest minute still in the window, as of the last look
        self._store: Any = None

    def attach(self, store: Any) -> None:
        """Persist the usage in ``store`` (a :class:`~.store.Store`), reading what it holds."""
        self._store = store
        self.api_minutes = store.api_usage()
        self._used, self._first = sum(self.api_minutes.values()), -1
        self._roll(store.now_ms())

    def count(self, kind: str, n: int = 1) -> None:
        self.calls[kind] += n

    def _roll(self, now_ms: int) -> None:
        """Drop the minutes that left the window by ``now_ms``."""
        first = now_ms // API_BUCKET_MS - _WINDOW_BUCKETS + 1
        if first <= self._first:
            return
        self._first = first
        stale = [minute for minute in self.api_minutes if minute < first]
        for minute in stale:
            self._used -= self.api_minutes.pop(minute)
        if stale and self._store is not None:
            self._store.drop_api_usage(first)

    def use_api(self, now_ms: int, limit: int) -> bool:
        """Count one API request against the limit of the 24 hours up to ``now_ms``; False
        (nothing counted) when that many were made already."""
        self._roll(now_ms)
        if self._used >= limit:
            return False
        minute = now_ms // API_BUCKET_MS
        self.api_minutes[minute] = self.api_minutes.get(minute, 0) + 1
        self._used += 1
        if self._store is not None:
            self._store.add_api_usage(minute)
        return True

    @property
    def api_used(self) -> int:
        """The API requests of the last 24 hours (as of the last request without a store)."""
        if self._store is not None:
            self._roll(self._store.now_ms())
        return self._used

    def snapshot(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "api_used": self.api_used}

    def reset(self) -> None:
        self.calls.clear()
        self.api_minutes.clear()
        self._used = 0
        if self._store is not None:
            self._store.drop_api_usage()

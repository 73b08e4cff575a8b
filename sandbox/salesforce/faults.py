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


class Counters:
    """API calls per kind plus the rolling daily API usage behind ``Sforce-Limit-Info``."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.api_day = -1
        self.api_used = 0

    def count(self, kind: str, n: int = 1) -> None:
        self.calls[kind] += n

    def use_api(self, now_ms: int, limit: int) -> bool:
        """Count one API request against the daily limit; False when the limit is hit."""
        day = now_ms // 86_400_000
        if day != self.api_day:
            self.api_day, self.api_used = day, 0
        if self.api_used >= limit:
            return False
        self.api_used += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "api_used": self.api_used}

    def reset(self) -> None:
        self.calls.clear()
        self.api_used = 0

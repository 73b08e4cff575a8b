"""Fault injection: how the sandbox misbehaves, switchable at run time and per action.

A :class:`FaultSpec` applies to one action (``"AddOrder"``, case-insensitive) or to every
action (``"*"``); an action's own spec replaces the ``"*"`` spec. Fields (all off by
default):

- ``latency_ms`` (+ ``jitter_ms``): added delay before the action runs.
- ``error_rate`` + ``error_kind`` (``"500"``, ``"503"`` or ``"html"``): that fraction of
  requests answers HTTP 500/503 with an HTML error page or HTTP 200 with an HTML page
  (a PHP fatal error) instead of JSON. With ``error_after_commit`` the action runs (and
  commits) first — the response is lost, the effect is not.
- ``whmcs_error_rate`` + ``whmcs_error``: that fraction answers ``result=error`` with the
  chosen message, before the action runs (nothing is written). With
  ``whmcs_error_after_commit`` the action runs first and the error comes after its effects:
  ``AcceptOrder`` as WHMCS's does when a provisioning module fails — it runs the accept
  (with ``autosetup`` the services and addons are set up, Active) and answers the module's
  errors, the order left ``Pending`` (WHMCS sets it Active only without errors); any other
  action commits in full.
- ``invalid_ip_rate``: that fraction answers 403 "Invalid IP <caller>" — an allow-list
  flap. A valid ``accesskey`` bypasses it, as it bypasses the real allow-list, unless
  ``invalid_ip_ignores_accesskey``.
- ``hang_rate`` + ``hang_s`` + ``hang_mode``: **commit-then-hang**. The action runs and
  commits; then the response is delayed ``hang_s`` seconds (``"delay"``) or the connection
  is dropped without an answer (``"drop"``). The caller times out not knowing the order
  exists.
- ``times``: fire at most this many times (any fault of this spec), then switch off —
  for deterministic tests ("the first AddOrder hangs").
- ``match``: the spec applies only to requests with a parameter value containing this
  text (e.g. ``"sfOrderId=801..."``, found in ``AddOrder``'s ``notes``), so one order can
  misbehave while every other call goes through. Such a spec is kept beside the action's
  unscoped spec (several per action, one per ``match``) and is consulted first; once its
  ``times`` are used up, the unscoped spec applies again.

Randomness comes from one ``random.Random(seed)`` per :class:`Faults`, so a run with the
same seed and request sequence misbehaves the same way.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class FaultSpec:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_kind: str = "503"
    error_after_commit: bool = False
    whmcs_error_rate: float = 0.0
    whmcs_error: str = "An unexpected error occurred"
    whmcs_error_after_commit: bool = False
    invalid_ip_rate: float = 0.0
    invalid_ip_ignores_accesskey: bool = False
    hang_rate: float = 0.0
    hang_s: float = 30.0
    hang_mode: str = "delay"
    times: int | None = None
    match: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        spec = cls(**data)
        if spec.error_kind not in ("500", "503", "html"):
            raise ValueError("error_kind must be 500, 503 or html")
        if spec.hang_mode not in ("delay", "drop"):
            raise ValueError("hang_mode must be delay or drop")
        return spec


@dataclass
class Plan:
    """What to do to one request, decided before it runs."""

    latency_s: float = 0.0
    error_kind: str | None = None  # "500" | "503" | "html"
    error_after_commit: bool = False
    whmcs_error: str | None = None
    whmcs_error_after_commit: bool = False
    invalid_ip: bool = False
    invalid_ip_bypassable: bool = True
    hang_s: float | None = None
    drop: bool = False


NO_FAULT = Plan()


class Faults:
    """The current fault table; :meth:`plan` is called once per API request."""

    def __init__(self, seed: int | None = None) -> None:
        self.specs: dict[str, FaultSpec] = {}
        self.seed = seed
        self.rng = random.Random(seed)
        self.fired: dict[str, int] = {}

    def set(self, action: str, spec: FaultSpec | dict[str, Any]) -> None:
        if isinstance(spec, dict):
            spec = FaultSpec.from_dict(spec)
        key = action.strip().lower() or "*"
        if spec.match:
            key = f"{key}|{spec.match}"
        self.specs[key] = spec
        self.fired[key] = 0

    def clear(self, action: str | None = None) -> None:
        if action is None:
            self.specs.clear()
            self.fired.clear()
        else:
            base = action.strip().lower()
            for key in [k for k in self.specs if k == base or k.startswith(base + "|")]:
                self.specs.pop(key, None)

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "fired": dict(self.fired),
                "faults": {k: asdict(v) for k, v in self.specs.items()}}

    def _exhausted(self, key: str, spec: FaultSpec) -> bool:
        return spec.times is not None and self.fired.get(key, 0) >= spec.times

    def _matching(self, action: str, params: Mapping[str, Any] | None) -> str | None:
        """The key of a live ``match``-scoped spec of ``action`` (or ``*``) this request meets."""
        if not params:
            return None
        values = [v for value in params.values()
                  for v in (value.values() if isinstance(value, Mapping) else (value,))]
        for key, spec in self.specs.items():
            scope, _, _ = key.partition("|")
            if (spec.match and scope in (action, "*") and not self._exhausted(key, spec)
                    and any(spec.match in str(v) for v in values)):
                return key
        return None

    def plan(self, action: str, params: Mapping[str, Any] | None = None) -> Plan:
        """What to do to one request of ``action`` (``params``: its parsed form)."""
        if not self.specs:
            return NO_FAULT
        key = self._matching(action.lower(), params) or action.lower()
        if key not in self.specs:
            key = "*"
        spec = self.specs.get(key)
        if spec is None:
            return NO_FAULT
        if self._exhausted(key, spec):
            return NO_FAULT
        rng = self.rng
        out = Plan()
        if spec.latency_ms or spec.jitter_ms:
            out.latency_s = (spec.latency_ms + rng.uniform(0, spec.jitter_ms)) / 1000.0
        fired = False
        if spec.invalid_ip_rate and rng.random() < spec.invalid_ip_rate:
            out.invalid_ip = True
            out.invalid_ip_bypassable = not spec.invalid_ip_ignores_accesskey
            fired = True
        elif spec.whmcs_error_rate and rng.random() < spec.whmcs_error_rate:
            out.whmcs_error = spec.whmcs_error
            out.whmcs_error_after_commit = spec.whmcs_error_after_commit
            fired = True
        elif spec.error_rate and rng.random() < spec.error_rate:
            out.error_kind = spec.error_kind
            out.error_after_commit = spec.error_after_commit
            fired = True
        elif spec.hang_rate and rng.random() < spec.hang_rate:
            if spec.hang_mode == "drop":
                out.drop = True
            else:
                out.hang_s = spec.hang_s
            fired = True
        if fired:
            self.fired[key] = self.fired.get(key, 0) + 1
        elif not out.latency_s:
            return NO_FAULT
        return out

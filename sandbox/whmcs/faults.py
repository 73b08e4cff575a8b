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
- ``times``: fire at most this many times (any fault of this spec, latency included;
  once per request it reaches), then switch off — for deterministic tests ("the first
  AddOrder hangs").
- ``match``: the spec applies only to requests with a parameter value containing this
  text (e.g. ``"sfOrderId=801..."``, found in ``AddOrder``'s ``notes``), so one order can
  misbehave while every other call goes through. Such a spec is kept beside the action's
  unscoped spec (several per action, one per ``match``) and is consulted first; once its
  ``times`` are used up, the unscoped spec applies again.

The rates share one draw per request: a request meets at most one of the invalid-IP flap,
the WHMCS error, the HTTP error and the hang, each with its own rate's probability (so
``error_rate=0.5, hang_rate=0.5`` is half errors, half hangs); rates adding up to more
than 1 are refused. Latency comes with whichever, or alone.

A spec *fires* on a request — counted in ``fired`` (per table key) and ``fired_kinds``
(``{"latency": n, "hang": n, ...}``), and towards ``times`` — only when its faults reach
it: the flap refusing it, or the request authenticated. A request the login ban, the IP
allow-list, a wrong access key or wrong credentials refuse gets no fault (no latency
either) and uses none up.

Fields are checked when a spec is set (:meth:`FaultSpec.from_dict`): numbers finite and
not negative, rates at most 1, ``times`` a whole number or null, flags true/false, text
fields text (a number given for one is taken as its text, ``"error_kind": 500`` as
``"500"``; a number given as text, ``"hang_rate": "0.5"``, as the number); anything else
is refused naming the field.

Randomness comes from one ``random.Random(seed)`` per :class:`Faults`, so a run with the
same seed and request sequence misbehaves the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sandbox.flags import parse_flag

RATE_FIELDS = ("invalid_ip_rate", "whmcs_error_rate", "error_rate", "hang_rate")
"""The rates, in the order their shares of the one draw are laid out."""
_NUMBER_FIELDS = frozenset({"latency_ms", "jitter_ms", "hang_s", *RATE_FIELDS})
_FLAG_FIELDS = frozenset({"error_after_commit", "whmcs_error_after_commit",
                          "invalid_ip_ignores_accesskey"})
TEXT_FIELDS = frozenset({"error_kind", "whmcs_error", "hang_mode", "match"})
"""Fields whose value is text, whatever it looks like (the CLI passes them unparsed)."""
_CHOICES = {"error_kind": ("500", "503", "html"), "hang_mode": ("delay", "drop")}


def _number(name: str, value: Any) -> float:
    """A finite, non-negative number (a JSON number or its text); a rate at most 1."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{name}: a number is expected, not {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}: a number is expected, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}: a finite number of at least 0 is expected, not {value!r}")
    if name in RATE_FIELDS and number > 1:
        raise ValueError(f"{name}: a rate between 0 and 1 is expected, not {value!r}")
    return number


def _times(value: Any) -> int | None:
    if value is None:
        return None
    whole_text = isinstance(value, str) and value.strip().isdigit()
    if whole_text or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"times: a whole number of at least 0 (or null) is expected, "
                         f"not {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    """Text; a JSON number is taken as its text (``"error_kind": 500`` is ``"500"``)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{name}: text is expected, not {value!r}")
    text = value if isinstance(value, str) else str(value)
    choices = _CHOICES.get(name)
    if choices and text not in choices:
        raise ValueError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, "
                         f"not {value!r}")
    return text


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
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSpec:
        """A spec from JSON-like ``data``, each field checked (and a number given as text,
        or text given as a number, taken as the field wants); ``ValueError`` naming the
        field otherwise, or naming the rates when they add up to more than 1."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault spec is a JSON object of fields, not {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(map(str, unknown))}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name in _NUMBER_FIELDS:
                values[name] = _number(name, value)
            elif name in _FLAG_FIELDS:
                values[name] = parse_flag(name, value)
            elif name in TEXT_FIELDS:
                values[name] = _text(name, value)
            else:  # times
                values[name] = _times(value)
        spec = cls(**values)
        rates = [name for name in RATE_FIELDS if getattr(spec, name)]
        if sum(getattr(spec, name) for name in rates) > 1 + 1e-9:
            raise ValueError(f"{' + '.join(rates)} add up to more than 1: each is a share "
                             f"of the same requests")
        return spec


@dataclass
class Plan:
    """What to do to one request, drawn before it is checked; :meth:`Faults.fire` uses it
    up once it reaches the request."""

    latency_s: float = 0.0
    error_kind: str | None = None  # "500" | "503" | "html"
    error_after_commit: bool = False
    whmcs_error: str | None = None
    whmcs_error_after_commit: bool = False
    invalid_ip: bool = False
    invalid_ip_bypassable: bool = True
    hang_s: float | None = None
    drop: bool = False
    key: str | None = None  # the spec drawn from (its key in the table)
    spec: FaultSpec | None = None

    @property
    def active(self) -> bool:
        """Whether anything is to be done to the request."""
        return bool(self.latency_s or self.invalid_ip or self.whmcs_error is not None
                    or self.error_kind is not None or self.hang_s is not None or self.drop)

    def kinds(self) -> list[str]:
        """What the plan does, as counted in ``fired_kinds``: a plan that refuses with the
        flap does only that (the request goes no further)."""
        if self.invalid_ip:
            return ["invalid_ip"]
        named = (("latency", bool(self.latency_s)),
                 ("whmcs_error", self.whmcs_error is not None),
                 ("error", self.error_kind is not None),
                 ("hang", self.hang_s is not None), ("drop", self.drop))
        return [name for name, on in named if on]


NO_FAULT = Plan()


class Faults:
    """The current fault table. :meth:`plan` is called once per API request, before its
    checks; :meth:`fire` once that plan reaches it (see :mod:`sandbox.whmcs.server`)."""

    def __init__(self, seed: int | None = None) -> None:
        self.specs: dict[str, FaultSpec] = {}
        self.seed = seed
        self.rng = random.Random(seed)
        self.fired: dict[str, int] = {}
        self.fired_kinds: dict[str, dict[str, int]] = {}

    @staticmethod
    def key_of(action: str, spec: FaultSpec) -> str:
        """The table key of ``spec`` set for ``action``."""
        key = action.strip().lower() or "*"
        return f"{key}|{spec.match}" if spec.match else key

    def set(self, action: str, spec: FaultSpec | dict[str, Any]) -> None:
        if isinstance(spec, dict):
            spec = FaultSpec.from_dict(spec)
        key = self.key_of(action, spec)
        self.specs[key] = spec
        self.fired[key] = 0
        self.fired_kinds[key] = {}

    def clear(self, action: str | None = None) -> None:
        if action is None:
            self.specs.clear()
            self.fired.clear()
            self.fired_kinds.clear()
        else:
            base = action.strip().lower()
            for key in [k for k in self.specs if k == base or k.startswith(base + "|")]:
                self.specs.pop(key, None)
                self.fired.pop(key, None)  # counts of a spec gone are no fault's any more
                self.fired_kinds.pop(key, None)

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "fired": dict(self.fired),
                "fired_kinds": {k: dict(v) for k, v in self.fired_kinds.items()},
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
        """What to do to one request of ``action`` (``params``: its parsed form). Drawn
        (the RNG moves) but not used up: see :meth:`fire`."""
        if not self.specs:
            return NO_FAULT
        key = self._matching(action.lower(), params) or action.lower()
        if key not in self.specs:
            key = "*"
        spec = self.specs.get(key)
        if spec is None or self._exhausted(key, spec):
            return NO_FAULT
        rng = self.rng
        out = Plan(key=key, spec=spec)
        if spec.latency_ms or spec.jitter_ms:
            out.latency_s = (spec.latency_ms + rng.uniform(0, spec.jitter_ms)) / 1000.0
        if any(getattr(spec, name) for name in RATE_FIELDS):
            draw, upto = rng.random(), 0.0  # one draw, each rate its own share of [0, 1)
            for name in RATE_FIELDS:
                upto += getattr(spec, name)
                if draw < upto:
                    self._apply(out, spec, name)
                    break
        return out if out.active else NO_FAULT

    @staticmethod
    def _apply(out: Plan, spec: FaultSpec, rate: str) -> None:
        if rate == "invalid_ip_rate":
            out.invalid_ip = True
            out.invalid_ip_bypassable = not spec.invalid_ip_ignores_accesskey
        elif rate == "whmcs_error_rate":
            out.whmcs_error = spec.whmcs_error
            out.whmcs_error_after_commit = spec.whmcs_error_after_commit
        elif rate == "error_rate":
            out.error_kind = spec.error_kind
            out.error_after_commit = spec.error_after_commit
        elif spec.hang_mode == "drop":
            out.drop = True
        else:
            out.hang_s = spec.hang_s

    def fire(self, plan: Plan) -> bool:
        """Count ``plan`` as fired (towards ``times`` and ``fired``): called once the plan
        reaches its request — the flap refusing it, or the request authenticated. False
        when its spec has been used up or replaced since it was drawn: apply nothing."""
        if plan.key is None:
            return True
        spec = self.specs.get(plan.key)
        if spec is None or spec is not plan.spec or self._exhausted(plan.key, spec):
            return False
        self.fired[plan.key] = self.fired.get(plan.key, 0) + 1
        kinds = self.fired_kinds.setdefault(plan.key, {})
        for kind in plan.kinds():
            kinds[kind] = kinds.get(kind, 0) + 1
        return True

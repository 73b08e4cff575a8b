"""The integration user's profile: what it may do to each object and event.

The requirements (*Integration User Permissions*) give the integration user Create, Read and
Update — never Delete — on Account, Contact, Order, OrderItem, Opportunity and Case; Read
only on Product2 and PricebookEntry; and Subscribe, not Publish, on
``OrderProvisionRequested__e`` (the Flow publishes it). The sandbox holds its configured
integration user (``--username``) to that profile, so a pipeline that wrote a price book,
deleted a record or published its own requests would be refused here as in a correctly set
up org. The other users (the CS agent, the Flow's automated process) are unrestricted.

An admin can change the profile at run time (``POST /__sandbox/permissions``), as one would
edit a permission set, e.g. to grant Publish for a test that publishes its own event.

Salesforce documents the permissions, not the exact words of a refusal; the sandbox answers
a refused write with the code Salesforce gives for refused record access,
``INSUFFICIENT_ACCESS_OR_READONLY`` (per record in a collection), and a refused publish or
subscribe with gRPC ``PERMISSION_DENIED``. An object without Read does not exist for the
user, as an org hides it from a profile that cannot see it: SOQL answers as for an unknown
name (``INVALID_TYPE`` in FROM, ``INVALID_FIELD`` for a relationship through it, see
:mod:`.soql`), describe-global leaves it out and its describe and records answer 404
``NOT_FOUND``. Describe tells the rest: object ``createable``/``updateable``/``deletable``
from the letters, and a field createable/updateable only where the object is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import SfError
from .events import TOPICS
from .model import sobject

CREATE, READ, UPDATE, DELETE = "C", "R", "U", "D"
SUBSCRIBE, PUBLISH = "S", "P"
_WORDS = {CREATE: "create", READ: "read", UPDATE: "update", DELETE: "delete",
          SUBSCRIBE: "subscribe to", PUBLISH: "publish to"}

# the requirements' table; objects it does not name (User, Pricebook2) are read-only
INTEGRATION_OBJECTS: dict[str, str] = {
    "Account": "CRU", "Contact": "CRU", "Order": "CRU", "OrderItem": "CRU",
    "Opportunity": "CRU", "Case": "CRU", "Product2": "R", "PricebookEntry": "R",
}
DEFAULT_OBJECT = "R"
INTEGRATION_EVENTS: dict[str, str] = {"/event/OrderProvisionRequested__e": "S"}
DEFAULT_EVENT = ""


@dataclass
class Profile:
    """Object permissions (``"CRUD"`` letters) and event permissions (``"S"``, ``"P"``)."""

    objects: dict[str, str] = field(default_factory=lambda: dict(INTEGRATION_OBJECTS))
    events: dict[str, str] = field(default_factory=lambda: dict(INTEGRATION_EVENTS))

    def may(self, type_name: str, op: str) -> bool:
        return op in self.objects.get(type_name, DEFAULT_OBJECT)

    def may_event(self, topic: str, op: str) -> bool:
        return op in self.events.get(topic, DEFAULT_EVENT)

    def check(self, type_name: str, op: str) -> None:
        """Raise ``INSUFFICIENT_ACCESS_OR_READONLY`` unless ``op`` is granted on the object."""
        if not self.may(type_name, op):
            raise SfError("INSUFFICIENT_ACCESS_OR_READONLY",
                          f"insufficient access rights on object id: this user may not "
                          f"{_WORDS[op]} {type_name}")

    def as_dict(self) -> dict[str, Any]:
        return {"objects": dict(self.objects), "events": dict(self.events),
                "default_object": DEFAULT_OBJECT, "default_event": DEFAULT_EVENT}

    def update(self, body: Any) -> None:
        """Merge ``{"objects": {name: letters}, "events": {topic: letters}}``.

        The whole body is checked before anything changes (ValueError naming the first
        problem), so a refused edit leaves the profile as it was. Names are canonicalised as
        Salesforce reads them (``order`` is ``Order``; an event with or without ``/event/``);
        an unknown name or key is refused rather than stored where no check would look it
        up. Letters follow Setup's dependencies: Create and Edit need Read, Delete needs
        Read and Edit (Setup ticks them for you; here they must be given).
        """
        if not isinstance(body, dict):
            raise ValueError('a JSON object {"objects": {...}, "events": {...}} is required')
        unknown = sorted(set(body) - {"objects", "events"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}: only 'objects' and 'events'")
        objects = {name: _object_letters(name, letters)
                   for name, letters in _entries(body, "objects", _object_name)}
        events = {name: _event_letters(name, letters)
                  for name, letters in _entries(body, "events", _event_name)}
        self.objects.update(objects)
        self.events.update(events)

    def reset(self) -> None:
        self.objects, self.events = dict(INTEGRATION_OBJECTS), dict(INTEGRATION_EVENTS)


def _entries(body: dict[str, Any], key: str, canonical: Callable[[str], str]
             ) -> list[tuple[str, Any]]:
    """``body[key]`` as (canonical name, letters as given); ValueError for an unknown name
    or one given twice under two spellings (``Order`` and ``order``)."""
    given = body.get(key) or {}
    if not isinstance(given, dict):
        raise ValueError(f"{key}: an object of name → letters is required")
    out: dict[str, Any] = {}
    for name, letters in given.items():
        known = canonical(str(name))
        if known in out:
            raise ValueError(f"{key}.{name}: {known} is given twice")
        out[known] = letters
    return list(out.items())


def _object_name(name: str) -> str:
    obj = sobject(name)
    if obj is None:
        raise ValueError(f"objects.{name}: no such sObject in the sandbox's org")
    return obj.name


def _event_name(name: str) -> str:
    short = name.removeprefix("/event/")
    for topic in TOPICS:
        if topic.removeprefix("/event/").lower() == short.lower():
            return topic
    raise ValueError(f"events.{name}: no such platform event (known: {sorted(TOPICS)})")


def _letters(where: str, letters: Any, allowed: str) -> str:
    if not isinstance(letters, str) or set(letters.upper()) - set(allowed):
        raise ValueError(f"{where}: a string of letters from {allowed!r} is required, "
                         f"not {letters!r}")
    return "".join(c for c in allowed if c in letters.upper())


def _object_letters(name: str, letters: Any) -> str:
    out = _letters(f"objects.{name}", letters, CREATE + READ + UPDATE + DELETE)
    needs = {CREATE: READ, UPDATE: READ, DELETE: READ + UPDATE}
    for op, required in needs.items():
        missing = [c for c in required if op in out and c not in out]
        if missing:
            words = " and ".join(_WORDS[c] for c in missing)
            raise ValueError(f"objects.{name}: {_WORDS[op]} needs {words} (given {out!r})")
    return out


def _event_letters(name: str, letters: Any) -> str:
    return _letters(f"events.{name}", letters, SUBSCRIBE + PUBLISH)

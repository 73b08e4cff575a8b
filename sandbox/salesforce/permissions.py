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
subscribe with gRPC ``PERMISSION_DENIED``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SfError

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
                "default_object": DEFAULT_OBJECT}

    def update(self, body: dict[str, Any]) -> None:
        """Merge ``{"objects": {name: letters}, "events": {topic: letters}}``."""
        for key, allowed in (("objects", "CRUD"), ("events", "SP")):
            given = body.get(key) or {}
            if not isinstance(given, dict):
                raise ValueError(f"{key}: an object of name → letters is required")
            for name, letters in given.items():
                if not isinstance(letters, str) or set(letters) - set(allowed):
                    raise ValueError(f"{key}.{name}: letters of {allowed!r} are required")
                getattr(self, key)[str(name)] = "".join(c for c in allowed if c in letters)

    def reset(self) -> None:
        self.objects, self.events = dict(INTEGRATION_OBJECTS), dict(INTEGRATION_EVENTS)

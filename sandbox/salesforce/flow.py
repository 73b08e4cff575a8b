"""The Order Approval Flow (record-triggered, after save) and the platform event it publishes.

Entry conditions (from the requirements document): ``Status`` changed to ``Approved``, or
``Activation_Status__c`` changed to ``Activating`` (a retry). Actions, in the same
transaction as the triggering save: ``Activation_Status__c = 'Activating'``, clear
``Activation_Error__c`` and ``Activation_Error_DateTime__c``, and publish
``OrderProvisionRequested__e`` with ``OrderId__c``, ``IdemKey__c = Id + "-" + flow
timestamp``, ``CorrelationId__c`` (uuid4), ``RequestedBy__c`` (the saving user's
username), ``Version__c`` 1.0, ``CreatedDate`` (sandbox clock, epoch ms) and
``CreatedById``. The flow timestamp is strictly increasing within the process (ms,
bumped when two approvals share a millisecond), so every IdemKey is unique.
"""

from __future__ import annotations

import datetime as dt
import uuid

from .events import PROVISION_SCHEMA, TOPIC
from .store import Tx

_last_stamp_ms = 0


def _flow_timestamp(now_ms: int) -> int:
    global _last_stamp_ms
    _last_stamp_ms = max(now_ms, _last_stamp_ms + 1)
    return _last_stamp_ms


def triggers(old: dict, new: dict) -> bool:
    """True when a save of an Order meets the flow's entry conditions."""
    approved = new.get("Status") == "Approved" and old.get("Status") != "Approved"
    retry = (new.get("Activation_Status__c") == "Activating"
             and old.get("Activation_Status__c") != "Activating")
    return approved or retry


def run(tx: Tx, old: dict, new: dict, user: dict) -> None:
    """Apply the flow to ``new`` (mutated) and stage its event in ``tx`` when it triggers."""
    if not triggers(old, new):
        return
    new["Activation_Status__c"] = "Activating"
    new["Activation_Error__c"] = None
    new["Activation_Error_DateTime__c"] = None
    now_ms = tx.store.now_ms()
    stamp = _flow_timestamp(now_ms)
    iso = dt.datetime.fromtimestamp(stamp / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    payload = {
        "CreatedDate": now_ms,
        "CreatedById": user["Id"],
        "OrderId__c": new["Id"],
        "IdemKey__c": f"{new['Id']}-{iso}{stamp % 1000:03d}Z",
        "CorrelationId__c": str(uuid.uuid4()),
        "RequestedBy__c": user.get("Username"),
        "Version__c": 1.0,
    }
    tx.add_event(TOPIC, str(uuid.uuid4()), PROVISION_SCHEMA.schema_id,
                 PROVISION_SCHEMA.encode(payload), now_ms)

"""Builders of guard-query records (as Salesforce returns them), request values and the
provisioner's policy of the WHMCS client tests."""

from __future__ import annotations

from typing import Any

from streams.provision import ProvisionPolicy

ORDER_ID = "801000000000001AAA"


def product(name: str = "INET-1G", *, pid: Any = 1, cycle: str | None = "Monthly",
            item_class: str | None = "Service", options: str | None = None) -> dict[str, Any]:
    return {"Name": name, "WHMCS_Product_Id__c": pid, "Billing_Cycle__c": cycle,
            "Item_Class__c": item_class, "Portal_ConfigOptions_JSON__c": options}


def item(prod: dict[str, Any] | None = None, *, qty: Any = 1.0, item_id: str = "802A") -> dict:
    return {"attributes": {"type": "OrderItem"}, "Id": item_id, "Quantity": qty,
            "UnitPrice": 100.0, "Product2Id": "01t", "Product2": prod or product()}


def order(*items: dict[str, Any], order_id: str = ORDER_ID, client: Any = "1001",
          status: str | None = "Activating", whmcs_order_id: Any = None) -> dict[str, Any]:
    records = list(items) if items else [item()]
    return {"attributes": {"type": "Order"}, "Id": order_id, "Status": "Approved",
            "Activation_Status__c": status, "WHMCS_Order_Id__c": whmcs_order_id,
            "OpportunityId": "006000000000001AAA", "AccountId": "001000000000001AAA",
            "Account": {"WH_Account__c": client},
            "OrderItems": {"totalSize": len(records), "done": True, "records": records}}


def request_value(order_id: str = ORDER_ID, *, idem_key: str | None = None,
                  event_uuid: str = "uuid-1", correlation_id: str = "corr-1") -> dict[str, Any]:
    return {"event_uuid": event_uuid, "replay_id": b"\x01", "schema_id": "s1",
            "channel": "/event/OrderProvisionRequested__e", "received_at": 1_700_000_000_000,
            "CreatedDate": 1_700_000_000_000, "CreatedById": "005000000000001AAA",
            "OrderId__c": order_id, "IdemKey__c": idem_key or f"{order_id}-1700000000000",
            "CorrelationId__c": correlation_id, "RequestedBy__c": None, "Version__c": 1.0}


def policy(**kw: Any) -> ProvisionPolicy:
    """Short timeouts and backoffs for the provisioner against a fast WHMCS."""
    base: dict[str, Any] = dict(retry_deadline_s=10, whmcs_timeout_s=1.0, lookup_grace_s=0.1,
                                backoff_initial_s=0.05, backoff_max_s=0.2)
    base.update(kw)
    return ProvisionPolicy(**base)

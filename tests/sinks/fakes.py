"""An in-memory stand-in for ``SalesforceClient.update_collection`` and ``describe`` (unit
tests only; integration tests use the Salesforce sandbox). Like the sandbox's org, it
refuses an update whose ``Activation_Outcome_Ms__c`` is older than the stored one with the
fence rule's error (``fence_field = None`` switches that off)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.errors import SalesforceError, SalesforceLimitError
from sinks.fence import RULE_MESSAGE

FENCE_FIELD = "Activation_Outcome_Ms__c"
MAX_CHUNKS = 10  # chunks of one type in a mixed call
#: the fields the sink writes (sinks.mapping), as the org's describe lists them
WRITTEN = {"Order": ("Activation_Status__c", "Activation_Error__c", "Activation_Error_DateTime__c",
                     "WHMCS_Order_Id__c", "Status", FENCE_FIELD),
           "Opportunity": ("StageName", "WHMCS_Service_ID__c", FENCE_FIELD)}
NUMBERS = {"WHMCS_Order_Id__c", "WHMCS_Service_ID__c", FENCE_FIELD}  # Number(18, 0)


def described_field(name: str) -> dict[str, Any]:
    """A field's describe entry as Salesforce gives it (a Number(18, 0): precision 18,
    scale 0; other types report 0 for both)."""
    number = name in NUMBERS
    return {"name": name, "type": "double" if number else "string", "updateable": True,
            "precision": 18 if number else 0, "scale": 0}


class FakeCollections:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[list[dict[str, Any]]] = []
        self.record_errors: dict[str, list[dict[str, Any]]] = {}  # id → errors, each call
        self.fail_call: Callable[[list[dict[str, Any]]], Exception | None] = lambda _r: None
        self.api_usage: tuple[int, int] | None = None
        self.fence_field: str | None = FENCE_FIELD  # the org's validation rule on this field
        #: sobject → {field name: describe entry}; what describe() answers
        self.fields: dict[str, dict[str, dict[str, Any]]] = {
            sobject: {name: described_field(name) for name in names}
            for sobject, names in WRITTEN.items()}
        #: objects the integration user lost Update on (revoke_update): describe says so,
        #: and every record of them is refused as Salesforce refuses it
        self.read_only: set[str] = set()
        self.describes: list[str] = []
        #: errors every record of a call gets (its transaction rolled back by the org's
        #: automation, as a governor limit does), or None
        self.call_errors: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None] = \
            lambda _r: None

    def describe(self, sobject: str) -> dict[str, Any]:
        self.describes.append(sobject)
        may = sobject not in self.read_only  # a field is updatable only where its object is
        return {"name": sobject, "updateable": may, "fields": [
            {**f, "updateable": bool(f.get("updateable")) and may}
            for f in self.fields.get(sobject, {}).values()]}

    def revoke_update(self, sobject: str) -> None:
        """An admin removes the integration user's Update (Edit) on ``sobject``."""
        self.read_only.add(sobject)

    def grant_update(self, sobject: str) -> None:
        self.read_only.discard(sobject)

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]:
        assert not all_or_none and len(records) <= 200
        self.calls.append(records)
        self.api_usage = (len(self.calls), 15000)
        error = self.fail_call(records)
        if error is not None:
            raise error
        types = [r["attributes"]["type"] for r in records]
        chunks = sum(1 for i, t in enumerate(types) if i == 0 or t != types[i - 1])
        if chunks > MAX_CHUNKS:  # as Salesforce (and its sandbox) refuses such a call
            raise SalesforceError(f"Salesforce 400 INVALID_BATCH_REQUEST: {chunks} chunks",
                                  status=400, error_code="INVALID_BATCH_REQUEST",
                                  retryable=False)
        rolled_back = self.call_errors(records)
        if rolled_back:
            return [{"id": r["id"], "success": False, "errors": rolled_back} for r in records]
        out = []
        for record in records:
            errors = self.record_errors.get(record["id"])
            if record["attributes"]["type"] in self.read_only:
                errors = [{"statusCode": "INSUFFICIENT_ACCESS_OR_READONLY",
                           "message": "insufficient access rights on object id", "fields": []}]
            if errors:
                out.append({"id": record["id"], "success": False, "errors": errors})
                continue
            key = (record["attributes"]["type"], record["id"])
            if self._older(self.records.get(key, {}), record):
                out.append({"id": record["id"], "success": False, "errors": [
                    {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "message": RULE_MESSAGE,
                     "fields": [self.fence_field]}]})
                continue
            stored = self.records.setdefault(key, {})
            stored.update({k: v for k, v in record.items() if k not in ("attributes", "id")})
            out.append({"id": record["id"], "success": True, "errors": []})
        return out

    def _older(self, stored: dict[str, Any], record: dict[str, Any]) -> bool:
        if self.fence_field is None:
            return False
        prior, new = stored.get(self.fence_field), record.get(self.fence_field)
        return prior is not None and new is not None and new < prior


def limit_error() -> SalesforceLimitError:
    return SalesforceLimitError("Salesforce 403 REQUEST_LIMIT_EXCEEDED", status=403,
                                error_code="REQUEST_LIMIT_EXCEEDED", retry_after=60.0)


def bad_request() -> SalesforceError:
    return SalesforceError("Salesforce 400 JSON_PARSER_ERROR", status=400,
                           error_code="JSON_PARSER_ERROR", retryable=False)

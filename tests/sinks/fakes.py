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
            sobject: {FENCE_FIELD: {"name": FENCE_FIELD, "type": "double", "updateable": True}}
            for sobject in ("Order", "Opportunity")}
        self.describes: list[str] = []

    def describe(self, sobject: str) -> dict[str, Any]:
        self.describes.append(sobject)
        return {"name": sobject, "fields": list(self.fields.get(sobject, {}).values())}

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
        out = []
        for record in records:
            errors = self.record_errors.get(record["id"])
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

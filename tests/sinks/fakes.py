"""An in-memory stand-in for ``SalesforceClient.update_collection`` (unit tests only;
integration tests use the Salesforce sandbox)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.errors import SalesforceError, SalesforceLimitError


class FakeCollections:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[list[dict[str, Any]]] = []
        self.record_errors: dict[str, list[dict[str, Any]]] = {}  # id → errors, each call
        self.fail_call: Callable[[list[dict[str, Any]]], Exception | None] = lambda _r: None
        self.api_usage: tuple[int, int] | None = None

    def update_collection(self, records: list[dict[str, Any]], *,
                          all_or_none: bool = False) -> list[dict[str, Any]]:
        assert not all_or_none and len(records) <= 200
        self.calls.append(records)
        self.api_usage = (len(self.calls), 15000)
        error = self.fail_call(records)
        if error is not None:
            raise error
        out = []
        for record in records:
            errors = self.record_errors.get(record["id"])
            if errors:
                out.append({"id": record["id"], "success": False, "errors": errors})
                continue
            key = (record["attributes"]["type"], record["id"])
            stored = self.records.setdefault(key, {})
            stored.update({k: v for k, v in record.items() if k not in ("attributes", "id")})
            out.append({"id": record["id"], "success": True, "errors": []})
        return out


def limit_error() -> SalesforceLimitError:
    return SalesforceLimitError("Salesforce 403 REQUEST_LIMIT_EXCEEDED", status=403,
                                error_code="REQUEST_LIMIT_EXCEEDED", retry_after=60.0)


def bad_request() -> SalesforceError:
    return SalesforceError("Salesforce 400 JSON_PARSER_ERROR", status=400,
                           error_code="JSON_PARSER_ERROR", retryable=False)

"""The one error type of the sandbox's data layer, carrying a Salesforce ``errorCode``.

REST renders it as ``[{"message", "errorCode", "fields"}]`` (or, inside sObject
Collections results, ``{"statusCode", "message", "fields"}``); ``fields`` is always there,
an empty list when no field is to blame.
"""

from __future__ import annotations


class SfError(Exception):
    """A Salesforce API error: ``code`` (errorCode), ``message``, ``fields``, HTTP status."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None,
                 status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = fields or []
        self.status = status

    def rest_body(self) -> list[dict]:
        return [{"message": self.message, "errorCode": self.code, "fields": list(self.fields)}]

    def record_error(self) -> dict:
        return {"statusCode": self.code, "message": self.message, "fields": list(self.fields)}

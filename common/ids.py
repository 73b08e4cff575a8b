"""Salesforce record ids as the pipeline accepts them: 15 or 18 ASCII letters and digits.

Checked where an Order id enters (the connector, the worker's decoding) so a blank, oversized
or injected ``OrderId__c`` ends as one dead letter with the reason, instead of reaching a
SOQL query, WHMCS notes or a write-back. The 18-character case checksum is not verified:
ids typed by hand in tools and tests often lack it, and Salesforce answers a wrong one with a
clear error of its own.
"""

from __future__ import annotations

import re

_SALESFORCE_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def is_salesforce_id(value: object) -> bool:
    return isinstance(value, str) and _SALESFORCE_ID.fullmatch(value) is not None


def describe_bad_id(value: object, limit: int = 40) -> str:
    """A short, printable rendering of a rejected id for a dead letter's reason."""
    text = repr(value)
    shown = text if len(text) <= limit else text[:limit] + "…"
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{shown}{size}"

"""Outcome → record updates, exactly per DESIGN "Salesforce write-back"."""

from __future__ import annotations

import datetime as dt

from sinks.mapping import (
    ACTIVATION_ERROR_LENGTH,
    OPPORTUNITY,
    ORDER,
    RecordKey,
    iso_datetime,
    truncate,
    updates_for,
)

COMPLETED = dt.datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=dt.UTC)


def outcome(status: str, **extra: object) -> dict:
    base = {"order_id": "801000000000001AAA", "opportunity_id": "006000000000001AAA",
            "status": status, "whmcs_order_id": 4711, "whmcs_service_ids": [91, 92],
            "error_code": None, "error_message": None, "completed_at": COMPLETED}
    base.update(extra)
    return base


def by_type(updates: list) -> dict:
    return {u.key.sobject: u for u in updates}


def test_provisioned_writes_order_and_opportunity() -> None:
    updates = by_type(updates_for(outcome("Provisioned")))
    assert updates[ORDER].key == RecordKey(ORDER, "801000000000001AAA")
    assert updates[ORDER].fields == {"Activation_Status__c": "Provisioned",
                                     "WHMCS_Order_Id__c": 4711, "Activation_Error__c": None,
                                     "Activation_Error_DateTime__c": None}
    assert updates[OPPORTUNITY].key == RecordKey(OPPORTUNITY, "006000000000001AAA")
    assert updates[OPPORTUNITY].fields == {"StageName": "Active", "WHMCS_Service_ID__c": 91}


def test_provisioned_sets_order_status_only_when_configured() -> None:
    assert "Status" not in by_type(updates_for(outcome("Provisioned")))[ORDER].fields
    order = by_type(updates_for(outcome("Provisioned"), set_order_activated=True))[ORDER]
    assert order.fields["Status"] == "Activated"


def test_provisioned_without_opportunity_or_ids_leaves_unknown_fields_out() -> None:
    updates = updates_for(outcome("Provisioned", opportunity_id=None, whmcs_order_id=None))
    assert [u.key.sobject for u in updates] == [ORDER]
    assert "WHMCS_Order_Id__c" not in updates[0].fields
    opp = by_type(updates_for(outcome("Provisioned", whmcs_service_ids=[])))[OPPORTUNITY]
    assert opp.fields == {"StageName": "Active"}


def test_failed_writes_order_error_and_time_only() -> None:
    updates = updates_for(outcome("Failed", error_code="MISSING_WHMCS_CLIENT",
                                  error_message="Account has no WH_Account__c"))
    assert len(updates) == 1 and updates[0].key.sobject == ORDER
    assert updates[0].fields == {
        "Activation_Status__c": "Failed",
        "Activation_Error__c": "MISSING_WHMCS_CLIENT: Account has no WH_Account__c",
        "Activation_Error_DateTime__c": "2025-03-04T05:06:07.891Z",
    }


def test_failed_error_is_truncated_to_the_field_length() -> None:
    updates = updates_for(outcome("Failed", error_message="x" * 1000))
    text = updates[0].fields["Activation_Error__c"]
    assert len(text) == ACTIVATION_ERROR_LENGTH == 255
    assert text.endswith("…")


def test_failed_without_reason_still_says_something() -> None:
    updates = updates_for(outcome("Failed"))
    assert updates[0].fields["Activation_Error__c"]


def test_skipped_and_duplicate_write_nothing() -> None:
    assert updates_for(outcome("Skipped")) == []
    assert updates_for(outcome("Duplicate")) == []


def test_iso_datetime_accepts_epoch_ms_and_naive() -> None:
    assert iso_datetime(0) == "1970-01-01T00:00:00.000Z"
    assert iso_datetime(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_datetime(dt.datetime(2025, 1, 1, 0, 0)) == "2025-01-01T00:00:00.000Z"


def test_truncate_keeps_short_text() -> None:
    assert truncate("short") == "short"
    assert truncate("a" * 255) == "a" * 255


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_activation_error_fits_255_utf16_units() -> None:
    """Salesforce may count a Text field's length in UTF-16 code units: 255 astral characters
    (510 units) were sent, which it can refuse (STRING_TOO_LONG)."""
    updates = updates_for(outcome("Failed", error_code="WHMCS_ERROR", error_message="𠮟" * 300))
    text = updates[0].fields["Activation_Error__c"]
    assert _utf16_units(text) <= ACTIVATION_ERROR_LENGTH
    assert text.endswith("…") and text.startswith("WHMCS_ERROR: 𠮟")
    text.encode("utf-8")  # a whole str: no surrogate pair split in two
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    for odd in ("𠮟" * 300, "a" + "𠮟" * 300, "ab" + "𠮟" * 127 + "c"):
        cut = truncate(odd)
        assert _utf16_units(cut) <= ACTIVATION_ERROR_LENGTH and cut.endswith("…")
        assert odd.startswith(cut[:-1]) and _utf16_units(cut) >= ACTIVATION_ERROR_LENGTH - 1
    # what fits in 255 units is kept whole, even with astral characters
    assert truncate("a" + "𠮟" * 127) == "a" + "𠮟" * 127

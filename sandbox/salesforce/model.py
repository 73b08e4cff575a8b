"""The emulated org's data model: the sObjects and fields the pipeline touches.

Taken from the requirements document ("Required Objects & Fields"). Field names are
case-insensitive on input (as in Salesforce) and canonical on output. Every object gets
the system fields (``Id``, ``IsDeleted``, ``CreatedDate``, ``CreatedById``,
``LastModifiedDate``, ``LastModifiedById``, ``SystemModstamp``).

Value conventions (as the REST API renders them): numbers are JSON numbers (floats for
Number/Currency fields), dates ``YYYY-MM-DD``, datetimes ``YYYY-MM-DDTHH:MM:SS.sss+0000``
in UTC, booleans JSON booleans, empty values ``null``.

A Number/Currency field takes a finite number (NaN and infinities, as JSON or text, are
``INVALID_TYPE_ON_FIELD_IN_RECORD``) with at most ``precision - scale`` digits left of the
point — 18 where no precision is declared, Salesforce's largest — else
``NUMBER_OUTSIDE_VALID_RANGE``; the field's scale is not applied (the value is kept as
given).
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass, field
from typing import Any

from .errors import SfError

#: digits left of the point of a Number field without a declared precision (Salesforce's
#: largest Number field is Number(18, 0))
MAX_NUMBER_DIGITS = 18


@dataclass(frozen=True)
class Field:
    """One field. ``type`` is one of: id, string, textarea, picklist, reference, date,
    datetime, double, currency, boolean, autonumber."""

    name: str
    type: str = "string"
    picklist: tuple[str, ...] = ()
    restricted: bool = True
    ref: str | None = None
    rel: str | None = None
    updateable: bool = True
    createable: bool = True
    required: bool = False
    length: int = 255
    #: describe's ``precision`` (all digits) and ``scale`` (right of the point): a
    #: Number(18, 0) reports 18 and 0 (set where the sink's start-up check reads them)
    precision: int = 0
    scale: int = 0


@dataclass
class SObject:
    name: str
    fields: dict[str, Field]
    #: child relationship name -> (child type, foreign-key field on the child)
    children: dict[str, tuple[str, str]] = field(default_factory=dict)
    autonumber: tuple[str, str] | None = None  # (field, zero-padded format width as text)

    def __post_init__(self) -> None:
        self._lower = {name.lower(): f for name, f in self.fields.items()}
        self._rels = {f.rel.lower(): f for f in self.fields.values() if f.rel}
        self._child_lower = {name.lower(): name for name in self.children}

    def field(self, name: str) -> Field | None:
        return self._lower.get(name.lower())

    def relationship(self, name: str) -> Field | None:
        """The reference field behind parent relationship ``name`` (``Account``)."""
        return self._rels.get(name.lower())

    def child(self, name: str) -> str | None:
        """Canonical child relationship name for ``name`` (``OrderItems``), or None."""
        return self._child_lower.get(name.lower())


def _pick(*values: str) -> tuple[str, ...]:
    return values


def _ref(name: str, target: str, **kw: Any) -> Field:
    return Field(name, "reference", ref=target, rel=name[:-2] if name.endswith("Id") else name,
                 length=18, **kw)


_SYSTEM = [
    Field("Id", "id", updateable=False, createable=False, length=18),
    Field("IsDeleted", "boolean", updateable=False, createable=False),
    Field("CreatedDate", "datetime", updateable=False, createable=False),
    _ref("CreatedById", "User", updateable=False, createable=False),
    Field("LastModifiedDate", "datetime", updateable=False, createable=False),
    _ref("LastModifiedById", "User", updateable=False, createable=False),
    Field("SystemModstamp", "datetime", updateable=False, createable=False),
]

ORDER_STATUS = _pick("Draft", "Pending Review", "Approved", "Activated", "Cancelled")
ACTIVATION_STATUS = _pick("Pending Review", "Activating", "Provisioned", "Failed")
STAGES = _pick("Introduction", "Ready", "Post Processing", "Active", "△Cancelling",
               "△Cancelled", "Void")


def _obj(name: str, fields: list[Field], children: dict[str, tuple[str, str]] | None = None,
         autonumber: tuple[str, str] | None = None) -> SObject:
    all_fields = {f.name: f for f in _SYSTEM + fields}
    return SObject(name, all_fields, children or {}, autonumber)


OBJECTS: dict[str, SObject] = {o.name: o for o in [
    _obj("User", [Field("Username", required=True), Field("Name"), Field("Email"),
                  Field("IsActive", "boolean")]),
    _obj("Account", [
        Field("Name", required=True), Field("SF_Account_No__c"), Field("WH_Account__c"),
        Field("Phone"), Field("BillingCity"),
        Field("Internet_Eligibility__c"),
        Field("Internet_Eligibility_Status__c", "picklist", _pick("Pending", "Checked")),
        Field("Internet_Eligibility_Request_Date_Time__c", "datetime"),
        Field("Internet_Eligibility_Checked_Date_Time__c", "datetime"),
        Field("Id_Verification_Status__c", "picklist", _pick("Pending", "Verified", "Rejected")),
        Field("Id_Verification_Submitted_Date_Time__c", "datetime"),
        Field("Id_Verification_Verified_Date_Time__c", "datetime"),
        Field("Id_Verification_Note__c", "textarea", length=32768),
        Field("Id_Verification_Rejection_Message__c"),
        Field("Portal_Status__c", "picklist", _pick("Active", "Inactive")),
        Field("Portal_Registration_Source__c", "picklist",
              _pick("Legacy", "Portal Signup", "Portal Checkout")),
    ], {"Contacts": ("Contact", "AccountId"), "Opportunities": ("Opportunity", "AccountId"),
        "Orders": ("Order", "AccountId"), "Cases": ("Case", "AccountId")}),
    _obj("Contact", [_ref("AccountId", "Account"), Field("FirstName"),
                     Field("LastName", required=True), Field("Email"), Field("Phone")]),
    _obj("Product2", [
        Field("Name", required=True), Field("ProductCode"), Field("IsActive", "boolean"),
        Field("Description", "textarea", length=4000),
        Field("WHMCS_Product_Id__c"),
        Field("Billing_Cycle__c", "picklist", _pick("Monthly", "Annually", "One-time")),
        Field("Item_Class__c", "picklist", _pick("Service", "Activation", "Add-on")),
        Field("Portal_ConfigOptions_JSON__c", "textarea", length=131072),
    ]),
    _obj("Pricebook2", [Field("Name", required=True), Field("IsActive", "boolean"),
                        Field("IsStandard", "boolean", updateable=False)]),
    _obj("PricebookEntry", [_ref("Pricebook2Id", "Pricebook2", required=True),
                            _ref("Product2Id", "Product2", required=True),
                            Field("UnitPrice", "currency", required=True),
                            Field("IsActive", "boolean")]),
    _obj("Opportunity", [
        Field("Name", required=True), _ref("AccountId", "Account"),
        Field("StageName", "picklist", STAGES, required=True),
        Field("CloseDate", "date", required=True),
        Field("CommodityType", "picklist", _pick(
            "Personal SonixNet Home Internet", "Corporate SonixNet Home Internet", "SIM", "VPN")),
        Field("Application_Stage__c", "picklist", restricted=False),
        Field("CancellationNotice__c", "picklist", restricted=False),
        Field("ScheduledCancellationDateAndTime__c", "datetime"),
        Field("LineReturn__c", "picklist", restricted=False),
        Field("Portal_Source__c", "picklist", _pick(
            "Portal - Internet Eligibility Request", "Portal - Order Placement",
            "Sales - Manual")),
        Field("WHMCS_Service_ID__c", "double"),
        Field("Activation_Outcome_Ms__c", "double", precision=18),  # Number(18, 0): .validation
    ], {"Orders": ("Order", "OpportunityId"), "Cases": ("Case", "OpportunityId")}),
    _obj("Order", [
        Field("Name"), Field("OrderNumber", "autonumber", updateable=False, createable=False),
        _ref("AccountId", "Account", required=True), _ref("OpportunityId", "Opportunity"),
        _ref("Pricebook2Id", "Pricebook2"),
        Field("Status", "picklist", ORDER_STATUS, required=True),
        Field("EffectiveDate", "date", required=True),
        Field("Description", "textarea", length=32000),
        Field("Activation_Status__c", "picklist", ACTIVATION_STATUS),
        Field("Activation_Error__c", length=255),
        Field("Activation_Error_DateTime__c", "datetime"),
        Field("WHMCS_Order_Id__c", "double"),
        Field("Activation_Outcome_Ms__c", "double", precision=18),  # Number(18, 0): .validation
    ], {"OrderItems": ("OrderItem", "OrderId")}, ("OrderNumber", "8")),
    _obj("OrderItem", [
        _ref("OrderId", "Order", required=True, updateable=False),
        _ref("Product2Id", "Product2"), _ref("PricebookEntryId", "PricebookEntry"),
        Field("Quantity", "double", required=True), Field("UnitPrice", "currency",
                                                           required=True),
        Field("OrderItemNumber", "autonumber", updateable=False, createable=False),
    ], autonumber=("OrderItemNumber", "10")),
    _obj("Case", [
        Field("Subject"), Field("Description", "textarea", length=32000),
        Field("Type", "picklist", _pick("Eligibility Check", "ID Verification",
                                        "Cancellation Request", "General Inquiry")),
        Field("Status", "picklist", _pick("New", "Working", "Escalated", "Closed")),
        Field("Origin", "picklist", _pick("Web", "Email", "Phone", "Portal")),
        _ref("AccountId", "Account"), _ref("OpportunityId", "Opportunity"),
        Field("CaseNumber", "autonumber", updateable=False, createable=False),
    ], autonumber=("CaseNumber", "8")),
]}
_OBJECTS_LOWER = {name.lower(): obj for name, obj in OBJECTS.items()}


def sobject(name: str) -> SObject | None:
    return _OBJECTS_LOWER.get(name.lower())


def format_datetime(ms: int) -> str:
    """Epoch ms → Salesforce REST datetime text."""
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}+0000"


def parse_datetime(text: str) -> dt.datetime:
    value = text.strip().replace("Z", "+00:00")
    if len(value) >= 5 and value[-5] in "+-" and value[-3] != ":":
        value = value[:-2] + ":" + value[-2:]
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def normalize_datetime(text: str) -> str:
    parsed = parse_datetime(text)
    return format_datetime(int(parsed.timestamp() * 1000))


def coerce(obj: SObject, f: Field, value: Any) -> Any:
    """Validate and normalise one incoming value for ``f``; raises :class:`SfError`."""
    if value is None or value == "":
        return None
    kind = f.type
    try:
        if kind == "picklist":
            text = str(value)
            if f.restricted and text not in f.picklist:
                raise SfError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{f.name}: bad value for restricted picklist field: {text}",
                              [f.name])
            return text
        if kind in ("string", "textarea"):
            text = value if isinstance(value, str) else str(value)
            if len(text) > f.length:
                raise SfError("STRING_TOO_LONG",
                              f"{f.name}: data value too large: {text[:40]}... "
                              f"(max length={f.length})", [f.name])
            return text
        if kind in ("double", "currency"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError(value)  # Decimal would read a list as its digit tuple
            number = decimal.Decimal(value)  # exact: 10**400 is not an overflow here
            if not number.is_finite():
                raise ValueError(value)
            digits = f.precision - f.scale if f.precision else MAX_NUMBER_DIGITS
            if abs(number) >= decimal.Decimal(10) ** digits:
                raise SfError("NUMBER_OUTSIDE_VALID_RANGE",
                              f"{f.name}: value outside of valid range on numeric field: "
                              f"{value}", [f.name])
            return float(number)
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError(value)
        if kind == "date":
            return dt.date.fromisoformat(str(value)[:10]).isoformat()
        if kind == "datetime":
            return normalize_datetime(str(value))
        if kind == "reference":
            from .ids import to18
            ref = to18(str(value))
            if ref is None:
                raise SfError("MALFORMED_ID",
                              f"{f.name}: id value of incorrect type: {value}", [f.name])
            return ref
    except (ValueError, TypeError, OverflowError, decimal.InvalidOperation) as exc:
        raise SfError("INVALID_TYPE_ON_FIELD_IN_RECORD",
                      f"{f.name}: value not of required type: {value}", [f.name]) from exc
    return value

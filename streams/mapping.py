"""Map a Salesforce Order (as the guard query returns it) to a WHMCS ``AddOrder`` (REFERENCE §5).

Pure: no I/O. :func:`map_order` returns a :class:`WhmcsOrderRequest` or raises
:class:`MappingError` carrying the outcome's ``error_code`` and a message naming the item.

Rules:

* ``clientid`` ← ``Order.Account.WH_Account__c`` (a positive integer, possibly sent by
  Salesforce as ``"12"``, ``"12.0"`` or ``12.0``; text only in plain ASCII decimal digits:
  ``"1e2"``, ``"4_2"`` or ``"12.5"`` is no id); empty → ``MISSING_WHMCS_CLIENT``, not a
  positive integer → ``INVALID_WHMCS_CLIENT``. WHMCS ids (clients, products, addons, config options)
  are at most :data:`MAX_ID` (its tables' signed 32-bit ``int``): a larger one is invalid,
  not a number to send (it would not fit the outcome's Avro ``long`` either).
* One ``pid[i]`` per ``Service`` or ``Activation`` item, the Service items first, each
  class in ``OrderItemNumber`` order (the guard's query sorts them): WHMCS creates the services in ``pid[]`` order, and the
  first service id is the one the Opportunity links to (``WHMCS_Service_ID__c``): an
  installation fee's only when the Order has no Service item
  (``Product2.WHMCS_Product_Id__c``; missing → ``MISSING_PRODUCT_MAPPING``), with
  ``billingcycle[i]`` (Monthly→monthly, Annually→annually, One-time→onetime; anything
  else → ``INVALID_BILLING_CYCLE``) and ``qty[i]`` (a whole number from 1 to
  :data:`MAX_QUANTITY`, else ``INVALID_QUANTITY``).
* ``Add-on`` items: their ``WHMCS_Product_Id__c`` is a WHMCS *addon* id. WHMCS attaches
  addons per product line, and a Salesforce OrderItem has no parent link, so **every add-on
  goes to ``addons[i]`` of the first Service item** (repeated ``Quantity`` times). WHMCS
  gives each service of a line all of the line's add-ons, so when that item's ``Quantity``
  is above 1 the add-ons ride on a line of one of its services and the rest of the item
  follows as a line of its own: the add-ons made (and billed) are the ones ordered. An
  order with add-ons but no Service item → ``ADDON_WITHOUT_SERVICE``.
* ``configoptions[i]`` ← ``Product2.Portal_ConfigOptions_JSON__c``: a JSON object of option
  id → scalar value, sent as base64 of the PHP-serialized array; malformed JSON, a
  non-object, an id not written as a plain ASCII decimal (``"05"``, ``"5.0"`` and
  ``"１２"`` would reach WHMCS as text keys no option matches) or non-scalar values →
  ``INVALID_CONFIG_OPTIONS``.
  Empty → not sent.
* An item with another or no ``Item_Class__c`` → ``UNKNOWN_ITEM_CLASS``; no items at all →
  ``NO_ITEMS``; more items than Salesforce returns in one answer (a child subquery's
  ``done: false``) → ``TOO_MANY_ITEMS``, never a partial order.
* ``notes`` carries ``sfOrderId=<Order Id>`` (the marker crash recovery looks for) and the
  IdemKey; ``paymentmethod``/``noinvoice``/``noemail`` come from settings.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from common.whmcs import marker
from streams.phpserial import PHP_INT_MAX, PHP_INT_MIN, b64_serialize

BILLING_CYCLES = {"monthly": "monthly", "annually": "annually", "one-time": "onetime",
                  "onetime": "onetime", "one time": "onetime"}
SERVICE, ACTIVATION, ADDON = "Service", "Activation", "Add-on"


class MappingError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class WhmcsItem:
    pid: int
    billingcycle: str
    qty: int
    configoptions: str | None = None  # base64(php_serialize(...))
    addons: tuple[int, ...] = ()


@dataclass(frozen=True)
class WhmcsOrderRequest:
    order_id: str
    client_id: int
    items: tuple[WhmcsItem, ...]
    notes: str
    payment_method: str = "mailin"
    no_invoice: bool = False
    no_email: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """AddOrder parameters (lists become PHP bracket arrays in the client)."""
        params: dict[str, Any] = {
            "clientid": self.client_id,
            "paymentmethod": self.payment_method,
            "pid": [i.pid for i in self.items],
            "billingcycle": [i.billingcycle for i in self.items],
            "qty": [i.qty for i in self.items],
            "notes": self.notes,
            "noinvoice": self.no_invoice,
            "noemail": self.no_email,
        }
        if any(i.configoptions for i in self.items):
            params["configoptions"] = [i.configoptions for i in self.items]
        if any(i.addons for i in self.items):
            params["addons"] = [",".join(map(str, i.addons)) if i.addons else None
                                for i in self.items]
        params.update(self.extra)
        return params


MAX_ID = 2**31 - 1  # WHMCS keeps its ids in signed 32-bit int columns
MAX_QUANTITY = 1000  # per item; add-ons are repeated this often in one request
_OPTION_ID = re.compile(r"[1-9][0-9]*", re.ASCII)  # a config option id written plainly
# a whole number as text: "12", " +12 ", "12.0" (ASCII digits and spaces only)
_WHOLE_NUMBER = re.compile(r"\s*\+?([0-9]+)(?:\.0*)?\s*", re.ASCII)


def _positive_int(raw: Any, upper: int = MAX_ID) -> int | None:
    """``12`` / ``12.0`` / ``"12"`` / ``" 12 "`` / ``"12.0"`` → 12; anything else, or above
    ``upper``, → None. Text must be a plainly written ASCII whole number: not read through
    ``float()``, which took ``"1e2"`` for 100, ``"4_2"`` for 42 and rounded
    ``"2147483647.0000001"``."""
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw) or raw != int(raw):
            return None
        value = int(raw)
    else:
        match = _WHOLE_NUMBER.fullmatch(str(raw))
        if match is None:
            return None
        try:
            value = int(match.group(1))
        except ValueError:  # past Python's digit limit for int(): far past any id
            return None
    return value if 0 < value <= upper else None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _config_options(raw: Any, item: str) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        options = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise MappingError("INVALID_CONFIG_OPTIONS",
                           f"{item}: Portal_ConfigOptions_JSON__c is not valid JSON: {exc}") from None
    except RecursionError:  # a RuntimeError: it escaped as a worker error, no outcome
        raise MappingError("INVALID_CONFIG_OPTIONS",
                           f"{item}: Portal_ConfigOptions_JSON__c is nested too deeply "
                           "to be config options") from None
    if not isinstance(options, dict):
        raise MappingError("INVALID_CONFIG_OPTIONS",
                           f"{item}: Portal_ConfigOptions_JSON__c must be a JSON object")
    for key, value in options.items():
        # ASCII only: str.isdigit()/float() also take "１２" or "١٢", which phpserial would
        # send as a text key that matches no WHMCS option (the option silently ignored)
        if not (_OPTION_ID.fullmatch(str(key)) and _positive_int(key) is not None):
            raise MappingError("INVALID_CONFIG_OPTIONS",
                               f"{item}: config option id {key!r} is not a positive integer "
                               "written plainly (like \"12\")")
        if not isinstance(value, str | int | float | bool) or value is None:
            raise MappingError("INVALID_CONFIG_OPTIONS",
                               f"{item}: config option {key} has a non-scalar value")
        if isinstance(value, float) and not math.isfinite(value):
            raise MappingError("INVALID_CONFIG_OPTIONS",
                               f"{item}: config option {key} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and \
                not PHP_INT_MIN <= value <= PHP_INT_MAX:
            # PHP's unserialize clamps it to PHP_INT_MAX: another value than was ordered
            raise MappingError("INVALID_CONFIG_OPTIONS",
                               f"{item}: config option {key} is {value}, beyond PHP's "
                               "64-bit integers")
        if isinstance(value, str) and not _encodes(value):
            # JSON may escape half a UTF-16 pair ("\ud83d": an emoji cut in two); it has no
            # UTF-8 form, so the serializer raised and the event became a worker error
            raise MappingError("INVALID_CONFIG_OPTIONS",
                               f"{item}: config option {key} has text that is not valid "
                               "Unicode (half of a UTF-16 surrogate pair)")
    if not options:
        return None
    return b64_serialize(options)


def _records(sub: Any) -> list[dict[str, Any]]:
    if not sub:
        return []
    if isinstance(sub, dict):
        if sub.get("done") is False:  # the rest is behind nextRecordsUrl
            raise MappingError("TOO_MANY_ITEMS",
                               f"the Order has {sub.get('totalSize', 'more')} items, more than "
                               "Salesforce returns in one answer; split it into smaller Orders")
        return list(sub.get("records") or [])
    return list(sub)


def client_id_of(order: dict[str, Any]) -> int:
    raw = (order.get("Account") or {}).get("WH_Account__c")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise MappingError("MISSING_WHMCS_CLIENT",
                           "Account.WH_Account__c (the WHMCS client id) is empty")
    client_id = _positive_int(raw)
    if client_id is None:
        raise MappingError("INVALID_WHMCS_CLIENT",
                           f"Account.WH_Account__c {raw!r} is not a WHMCS client id")
    return client_id


def map_order(order: dict[str, Any], *, idem_key: str, payment_method: str = "mailin",
              no_invoice: bool = False, no_email: bool = True) -> WhmcsOrderRequest:
    """The AddOrder request for ``order`` (a guard-query record). Raises MappingError."""
    order_id = str(order["Id"])
    client_id = client_id_of(order)
    items = _records(order.get("OrderItems"))
    if not items:
        raise MappingError("NO_ITEMS", "the Order has no OrderItems")
    lines: list[dict[str, Any]] = []
    addons: list[int] = []
    for item in items:
        product = item.get("Product2") or {}
        name = f"OrderItem {item.get('Id', '?')} ({product.get('Name') or 'unnamed product'})"
        item_class = product.get("Item_Class__c")
        whmcs_id = _positive_int(product.get("WHMCS_Product_Id__c"))
        qty = _positive_int(item.get("Quantity"), upper=MAX_QUANTITY)
        if qty is None:
            raise MappingError("INVALID_QUANTITY",
                               f"{name}: Quantity {item.get('Quantity')!r} is not a whole "
                               f"number from 1 to {MAX_QUANTITY}")
        if item_class == ADDON:
            if whmcs_id is None:
                raise MappingError("MISSING_PRODUCT_MAPPING",
                                   f"{name}: Product2.WHMCS_Product_Id__c (addon id) "
                                   f"{product.get('WHMCS_Product_Id__c')!r} is empty or not "
                                   "a WHMCS addon id")
            addons.extend([whmcs_id] * qty)
            continue
        if item_class not in (SERVICE, ACTIVATION):
            raise MappingError("UNKNOWN_ITEM_CLASS",
                               f"{name}: Item_Class__c {item_class!r} is not Service, "
                               "Activation or Add-on")
        if whmcs_id is None:
            raise MappingError("MISSING_PRODUCT_MAPPING",
                               f"{name}: Product2.WHMCS_Product_Id__c "
                               f"{product.get('WHMCS_Product_Id__c')!r} is empty or invalid")
        cycle_raw = product.get("Billing_Cycle__c")
        cycle = BILLING_CYCLES.get(str(cycle_raw or "").strip().lower())
        if cycle is None:
            raise MappingError("INVALID_BILLING_CYCLE",
                               f"{name}: Billing_Cycle__c {cycle_raw!r} is not Monthly, "
                               "Annually or One-time")
        lines.append({"pid": whmcs_id, "billingcycle": cycle, "qty": qty, "class": item_class,
                      "configoptions": _config_options(
                          product.get("Portal_ConfigOptions_JSON__c"), name)})
    lines.sort(key=lambda line: line["class"] != SERVICE)  # stable: Services first
    if addons:
        first_service = next((i for i, line in enumerate(lines) if line["class"] == SERVICE),
                             None)
        if first_service is None:
            raise MappingError("ADDON_WITHOUT_SERVICE",
                               "the Order has Add-on items but no Service item to attach "
                               "them to")
        line = lines[first_service]
        if line["qty"] > 1:
            # WHMCS gives every service a line creates all of the line's add-ons: on a line
            # of 2 services, 2 add-ons ordered became 4 (and billed). So the add-ons go on
            # a line of one service, and the rest of that item on a line of its own.
            rest = {**line, "qty": line["qty"] - 1}
            lines[first_service] = {**line, "qty": 1}
            lines.insert(first_service + 1, rest)
        lines[first_service]["addons"] = tuple(addons)
    if not lines:
        raise MappingError("NO_ITEMS", "the Order has no Service or Activation items")
    whmcs_items = tuple(WhmcsItem(pid=line["pid"], billingcycle=line["billingcycle"],
                                  qty=line["qty"], configoptions=line["configoptions"],
                                  addons=line.get("addons", ())) for line in lines)
    return WhmcsOrderRequest(order_id=order_id, client_id=client_id, items=whmcs_items,
                             notes=f"{marker(order_id)} idemKey={idem_key}",
                             payment_method=payment_method, no_invoice=no_invoice,
                             no_email=no_email)

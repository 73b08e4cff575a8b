"""The WHMCS API actions: parameters, validation and response shapes.

Each action is ``fn(store, params, ctx) -> dict`` returning the success body without
``result``; a failure raises :class:`ApiError` with the message WHMCS would return. Action
names are matched case-insensitively, as WHMCS does. Messages quoted in
``../shared/REFERENCE.md`` §4 are WHMCS's own; the few WHMCS does not document (an unknown
product, addon or config option, a cycle the product does not offer) use the wording in
:data:`MESSAGES` and are marked as the sandbox's.

Ids come back as WHMCS returns them: ``AddOrder`` gives ``orderid``/``invoiceid`` as
integers and ``serviceids``/``addonids`` as comma-separated strings; ``GetOrders`` rows are
all strings (WHMCS builds them from raw database rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.whmcs import phpserial
from sandbox.whmcs.catalog import cycle_key
from sandbox.whmcs.forms import Params, array, scalar, truthy
from sandbox.whmcs.listing import (
    client_body,
    order_body,
    page,
    product_body,
    service_body,
)
from sandbox.whmcs.store import NewItem, Store

MESSAGES = {
    "client_not_found": "Client ID Not Found",
    "client_closed": "Unable to add order when client status is Closed",
    "no_items": "No items added to cart so order cannot proceed",
    "not_pending": "Order ID not found or Status not Pending",
    "order_not_found": "Order ID Not Found",
    "command_not_found": "Command Not Found",
    # Not documented by WHMCS; the sandbox's wording:
    "bad_product": "Invalid Product ID",
    "bad_cycle": "Invalid Billing Cycle Requested",
    "bad_addon": "Invalid Addon ID",
    "bad_option": "Invalid Configurable Option",
    "bad_serialized": "Invalid base64 serialized array data",
}


class ApiError(Exception):
    """A WHMCS ``result=error`` answer; ``str(exc)`` is the message."""


@dataclass
class Context:
    """Per-server settings the actions need."""

    gateways: tuple[str, ...] = ("mailin", "paypal", "banktransfer")
    currency: dict[str, str] = field(default_factory=lambda: {
        "code": "JPY", "prefix": "¥", "suffix": " JPY"})


Action = Callable[[Store, Params, Context], dict[str, Any]]


def _int(params: Params, name: str, default: int = 0) -> int:
    raw = scalar(params, name).strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


# -- clients ------------------------------------------------------------------------------


def add_client(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    for name, what in (("firstname", "first name"), ("lastname", "last name"),
                       ("email", "email address")):
        if not scalar(p, name).strip():
            raise ApiError(f"You did not enter your {what}")
    email = scalar(p, "email").strip()
    if store.email_taken(email) and not truthy(p, "skipvalidation"):
        raise ApiError("A user already exists with that email address")
    skip = {"action", "identifier", "secret", "username", "password", "accesskey",
            "responsetype", "password2"}
    fields = {k: v for k, v in p.items() if k not in skip and isinstance(v, str)}
    client = store.add_client(fields)
    return {"clientid": client.id, "owner_id": client.id}


def get_clients_details(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    client_id = _int(p, "clientid")
    client = store.client(client_id)
    if client is None and scalar(p, "email"):
        email = scalar(p, "email").lower()
        client = next((c for c in store.clients.values() if c.email.lower() == email), None)
    if client is None:
        raise ApiError("Client Not Found")
    body = client_body(client, ctx.currency["code"])
    return {"userid": client.id, "id": client.id, **body, "client": body,
            "stats": {"numactivehosting": 0}}


# -- orders -------------------------------------------------------------------------------


def _decode_array(text: str) -> dict[Any, Any]:
    if not text:
        return {}
    try:
        value = phpserial.b64loads(text)
    except phpserial.PhpSerialError:
        raise ApiError(MESSAGES["bad_serialized"]) from None
    if not isinstance(value, dict):
        raise ApiError(MESSAGES["bad_serialized"])
    return value


def _config_options(store: Store, pid: int, text: str) -> dict[int, Any]:
    product = store.products[pid]
    out: dict[int, Any] = {}
    for key, value in _decode_array(text).items():
        try:
            option_id = int(key)
            option = product.options[option_id]
            choice = int(value)
        except (KeyError, ValueError, TypeError):
            raise ApiError(MESSAGES["bad_option"]) from None
        if choice not in option[1]:
            raise ApiError(MESSAGES["bad_option"])
        out[option_id] = choice
    return out


def _items(store: Store, p: Params) -> list[NewItem]:
    qtys, cycles = array(p, "qty"), array(p, "billingcycle")
    overrides, addons = array(p, "priceoverride"), array(p, "addons")
    options, customs = array(p, "configoptions"), array(p, "customfields")
    items = []
    for index, raw_pid in array(p, "pid").items():
        try:
            pid = int(raw_pid)
        except ValueError:
            pid = 0
        product = store.products.get(pid)
        if product is None:
            raise ApiError(MESSAGES["bad_product"])
        requested = cycles.get(index, "").strip()
        cycle = cycle_key(requested) if requested else product.default_cycle()
        if cycle is None or not product.offers(cycle):
            raise ApiError(MESSAGES["bad_cycle"])
        qty = max(1, int(qtys[index])) if qtys.get(index, "").strip().isdigit() else 1
        price = product.pricing[cycle]
        if overrides.get(index, "").strip():
            try:
                price = float(overrides[index])
            except ValueError:
                raise ApiError("Invalid price override") from None
        chosen = []
        for raw in filter(None, (a.strip() for a in addons.get(index, "").split(","))):
            addon = store.addons.get(int(raw)) if raw.isdigit() else None
            if addon is None or pid not in addon.pids:
                raise ApiError(MESSAGES["bad_addon"])
            chosen.append((addon.id, addon.price))
        items.append(NewItem(pid, qty, cycle, price,
                             _config_options(store, pid, options.get(index, "")),
                             _decode_array(customs.get(index, "")), chosen))
    return items


def add_order(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    client = store.client(_int(p, "clientid"))
    if client is None:
        raise ApiError(MESSAGES["client_not_found"])
    if client.status == "Closed":
        raise ApiError(MESSAGES["client_closed"])
    method = scalar(p, "paymentmethod").strip()
    if method not in ctx.gateways:
        raise ApiError("Invalid Payment Method. Valid options include " + ",".join(ctx.gateways))
    items = _items(store, p)
    if not items:
        raise ApiError(MESSAGES["no_items"])
    flags = {k: truthy(p, k) for k in ("noinvoice", "noinvoiceemail", "noemail")}
    made = store.create_order(client.id, method, items, notes=scalar(p, "notes"),
                              promocode=scalar(p, "promocode"),
                              ipaddress=scalar(p, "clientip"),
                              invoice=not flags["noinvoice"], flags=flags)
    service_ids = ",".join(map(str, made["serviceids"]))
    body: dict[str, Any] = {"orderid": made["orderid"], "serviceids": service_ids,
                            "productids": service_ids,
                            "addonids": ",".join(map(str, made["addonids"])),
                            "domainids": ""}
    if made["invoiceid"]:
        body["invoiceid"] = made["invoiceid"]
    return body


def accept_order(store: Store, p: Params, ctx: Context, *,
                 order_active: bool = True) -> dict[str, Any]:
    """``order_active`` False: as WHMCS when a provisioning module reported errors — the
    services are set up, the order stays Pending (see :func:`dispatch`)."""
    order_id = _int(p, "orderid")
    if store.order_status(order_id) != "Pending":
        raise ApiError(MESSAGES["not_pending"])
    autosetup = truthy(p, "autosetup")
    store.accept_order(order_id, autosetup=autosetup, serverid=_int(p, "serverid"),
                       username=scalar(p, "serviceusername"),
                       password=scalar(p, "servicepassword"), order_active=order_active)
    return {}


def cancel_order(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    order_id = _int(p, "orderid")
    status = store.order_status(order_id)
    if status is None:
        raise ApiError(MESSAGES["order_not_found"])
    if status != "Pending":
        raise ApiError(MESSAGES["not_pending"])
    store.cancel_order(order_id)
    return {}


def get_orders(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if _int(p, "id"):
        filters["id"] = _int(p, "id")
    if _int(p, "userid"):
        filters["userid"] = _int(p, "userid")
    if scalar(p, "status"):
        filters["status"] = scalar(p, "status")
    start, limit = _int(p, "limitstart", 0), _int(p, "limitnum", 25)
    total, rows = store.find_orders(filters, max(start, 0), max(limit, 0))
    orders = [order_body(store, row, ctx.currency) for row in rows]
    return page(total, start, {"orders": {"order": orders}}, len(orders))


def get_clients_products(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for name, column in (("clientid", "userid"), ("serviceid", "id"), ("pid", "pid")):
        if _int(p, name):
            filters[column] = _int(p, name)
    start, limit = _int(p, "limitstart", 0), _int(p, "limitnum", 25)
    total, rows = store.find_services(filters, max(start, 0), max(limit, 0))
    products = [service_body(store, row) for row in rows]
    head = {"clientid": str(_int(p, "clientid")), "serviceid": scalar(p, "serviceid"),
            "pid": scalar(p, "pid"), "domain": scalar(p, "domain")}
    return {**head, **page(total, start, {"products": {"product": products}}, len(products))}


def get_products(store: Store, p: Params, ctx: Context) -> dict[str, Any]:
    pids = {int(x) for x in scalar(p, "pid").split(",") if x.strip().isdigit()}
    gid = _int(p, "gid")
    chosen = [prod for prod in sorted(store.products.values(), key=lambda x: x.id)
              if (not pids or prod.id in pids) and (not gid or prod.gid == gid)]
    return {"totalresults": len(chosen),
            "products": {"product": [product_body(prod, ctx.currency) for prod in chosen]}}


ACTIONS: dict[str, Action] = {
    "addclient": add_client,
    "getclientsdetails": get_clients_details,
    "addorder": add_order,
    "acceptorder": accept_order,
    "cancelorder": cancel_order,
    "getorders": get_orders,
    "getclientsproducts": get_clients_products,
    "getproducts": get_products,
}


def dispatch(store: Store, params: Params, ctx: Context, *,
             error_after_commit: str | None = None) -> dict[str, Any]:
    """Run the action named in ``params``; the full JSON envelope, success or error.

    ``error_after_commit`` (the ``whmcs_error_after_commit`` fault): the action runs, then
    the answer is ``result=error`` with this message — ``AcceptOrder`` as WHMCS's
    ``acceptOrder()`` with a failing provisioning module (the services set up, the order
    left Pending: WHMCS makes it Active only without errors), any other action in full."""
    fn = ACTIONS.get(scalar(params, "action").strip().lower())
    try:
        if fn is None:
            raise ApiError(MESSAGES["command_not_found"])
        if error_after_commit is not None:
            if fn is accept_order:
                accept_order(store, params, ctx, order_active=False)
            else:
                fn(store, params, ctx)
            raise ApiError(error_after_commit)
        return {"result": "success", **fn(store, params, ctx)}
    except ApiError as exc:
        return {"result": "error", "message": str(exc)}

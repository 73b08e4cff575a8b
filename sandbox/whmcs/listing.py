"""Response bodies of the read actions (GetOrders, GetClientsProducts, GetProducts, ...).

Shapes follow WHMCS: lists wrapped as ``{"orders": {"order": [...]}}``; money as strings
with two decimals; billing cycles in display form; GetOrders rows entirely as strings.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sandbox.whmcs.catalog import Product, display_cycle
from sandbox.whmcs.store import Client, Store


def money(value: float) -> str:
    return f"{value:.2f}"


def page(total: int, start: int, body: dict[str, Any], returned: int) -> dict[str, Any]:
    return {"totalresults": total, "startnumber": start, "numreturned": returned, **body}


def client_body(client: Client, currency_code: str) -> dict[str, Any]:
    return {"id": client.id, "firstname": client.firstname, "lastname": client.lastname,
            "fullname": f"{client.firstname} {client.lastname}".strip(),
            "companyname": client.companyname, "email": client.email,
            "status": client.status, "datecreated": client.datecreated,
            "currency_code": currency_code,
            **{k: v for k, v in client.extra.items() if k != "password2"}}


def _lineitems(store: Store, order_id: int) -> list[dict[str, str]]:
    out = []
    for s in store.order_services(order_id):
        product = store.products.get(s["pid"])
        out.append({"type": "product", "relid": str(s["id"]), "producttype": "Other",
                    "product": product.name if product else "", "domain": "",
                    "billingcycle": display_cycle(s["billingcycle"]),
                    "amount": money(s["amount"]), "status": s["status"]})
    for a in store.order_addons(order_id):
        addon = store.addons.get(a["addonid"])
        out.append({"type": "addon", "relid": str(a["id"]), "producttype": "Addon",
                    "product": addon.name if addon else "", "domain": "",
                    "billingcycle": display_cycle(a["billingcycle"]),
                    "amount": money(a["amount"]), "status": a["status"]})
    return out


def order_body(store: Store, row: sqlite3.Row, currency: dict[str, str]) -> dict[str, Any]:
    client = store.clients.get(row["userid"])
    name = f"{client.firstname} {client.lastname}" if client else ""
    return {
        "id": str(row["id"]), "ordernum": row["ordernum"], "userid": str(row["userid"]),
        "contactid": "0", "requestor_id": "0", "admin_requestor_id": "1",
        "date": row["date"], "nameservers": "", "transfersecret": "", "renewals": "",
        "promocode": row["promocode"], "promotype": "", "promovalue": "",
        "orderdata": "[]", "amount": money(row["amount"]),
        "paymentmethod": row["paymentmethod"], "invoiceid": str(row["invoiceid"]),
        "status": row["status"], "ipaddress": row["ipaddress"], "fraudmodule": "",
        "fraudoutput": "", "notes": row["notes"], "paymentmethodname": row["paymentmethod"],
        "paymentstatus": row["invoicestatus"] or "", "name": name,
        "currencyprefix": currency["prefix"], "currencysuffix": currency["suffix"],
        "frauddata": "", "validationdata": "",
        "lineitems": {"lineitem": _lineitems(store, row["id"])},
    }


def service_body(store: Store, row: sqlite3.Row) -> dict[str, Any]:
    product = store.products.get(row["pid"])
    chosen = json.loads(row["configoptions"])
    options = []
    for oid, choice in chosen.items():
        name, subs = product.options.get(int(oid), ("", {})) if product else ("", {})
        options.append({"id": int(oid), "option": name, "type": "dropdown",
                        "value": subs.get(int(choice), str(choice))})
    customs = [{"id": k, "name": str(k), "translated_name": str(k), "value": v}
               for k, v in json.loads(row["customfields"]).items()]
    addons = [{"id": a["id"], "addonid": a["addonid"], "status": a["status"],
               "billingcycle": display_cycle(a["billingcycle"]),
               "recurringamount": money(a["amount"])}
              for a in store.service_addon_rows(row["id"])]
    return {
        "id": row["id"], "clientid": row["userid"], "orderid": row["orderid"],
        "pid": row["pid"], "regdate": row["regdate"],
        "name": product.name if product else "", "translated_name": product.name if product
        else "", "groupname": "SonixNet", "domain": "", "dedicatedip": "",
        "serverid": row["serverid"], "firstpaymentamount": money(row["amount"]),
        "recurringamount": money(0 if row["billingcycle"] == "onetime" else row["amount"]),
        "paymentmethod": "mailin", "billingcycle": display_cycle(row["billingcycle"]),
        "nextduedate": row["regdate"], "status": row["status"], "username": row["username"],
        "password": "", "notes": "",
        "customfields": {"customfield": customs},
        "configoptions": {"configoption": options},
        "addons": {"addon": addons},
    }


def product_body(product: Product, currency: dict[str, str]) -> dict[str, Any]:
    prices = {c: money(v) for c, v in product.pricing.items() if c != "free"}
    setup = {f"{c[0]}setupfee": "0.00" for c in ("monthly", "quarterly", "semiannually",
                                                  "annually", "biennially", "triennially")}
    options = [{"id": oid, "name": name, "type": "1",
                "options": {"option": [{"id": sid, "name": label, "rawName": label,
                                        "recurring": 0} for sid, label in subs.items()]}}
               for oid, (name, subs) in product.options.items()]
    return {
        "pid": product.id, "gid": product.gid, "type": product.type, "name": product.name,
        "description": "", "module": "", "paytype": product.paytype,
        "pricing": {currency["code"]: {"prefix": currency["prefix"],
                                       "suffix": currency["suffix"], **setup, **prices}},
        "customfields": {"customfield": []},
        "configoptions": {"configoption": options},
    }

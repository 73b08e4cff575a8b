"""Seed the org from :mod:`sandbox.seed`, the catalogue shared with the WHMCS sandbox.

Idempotent and incremental: products, the standard pricebook and its entries are created
once (matched by ``ProductCode``); accounts are matched by ``SF_Account_No__c``; orders
continue the deterministic sequence of :func:`sandbox.seed.orders` where the previous
seeding stopped (counted in the store's meta). Every Order starts in ``Pending Review``
with ``Activation_Status__c = 'Pending Review'``, an Opportunity in ``Post Processing``
and its items; deliberately broken orders (see ``sandbox.seed``) are included and
reported with their reason.
"""

from __future__ import annotations

from typing import Any

from sandbox import seed as catalogue

from . import dml
from .core import Sandbox

_COMMODITY = {"INET": "Personal SonixNet Home Internet", "SIM": "SIM", "VPN": "VPN"}


def _ensure_catalog(sb: Sandbox, tx: Any, user: dict) -> tuple[str, dict[str, tuple[str, str]]]:
    """Returns the standard pricebook id and code -> (product id, pricebook entry id)."""
    store = sb.store
    pricebook = next((r for r in store.by_type["Pricebook2"].values() if r.get("IsStandard")),
                     None)
    if pricebook is None:
        pricebook = dml.create(tx, "Pricebook2", {"Name": "Standard Price Book",
                                                  "IsActive": True}, user)
        pricebook["IsStandard"] = True
    products = {r["ProductCode"]: r for r in store.by_type["Product2"].values()}
    entries = {r["Product2Id"]: r for r in store.by_type["PricebookEntry"].values()}
    out: dict[str, tuple[str, str]] = {}
    for item in catalogue.CATALOG:
        product = products.get(item.code) or dml.create(tx, "Product2", {
            "Name": item.name, "ProductCode": item.code, "IsActive": True,
            "WHMCS_Product_Id__c": None if item.whmcs_id is None else str(item.whmcs_id),
            "Billing_Cycle__c": item.billing_cycle, "Item_Class__c": item.item_class,
            "Portal_ConfigOptions_JSON__c": item.config_options_json,
            "Description": f"seed-broken: {item.broken}" if item.broken else None}, user)
        entry = entries.get(product["Id"]) or dml.create(tx, "PricebookEntry", {
            "Pricebook2Id": pricebook["Id"], "Product2Id": product["Id"],
            "UnitPrice": item.unit_price, "IsActive": True}, user)
        out[item.code] = (product["Id"], entry["Id"])
    return pricebook["Id"], out


def _ensure_accounts(sb: Sandbox, tx: Any, user: dict, count: int) -> list[str]:
    existing = {r.get("SF_Account_No__c"): r["Id"] for r in sb.store.by_type["Account"].values()}
    ids: list[str] = []
    for acct in catalogue.accounts(count):
        account_id = existing.get(acct.sf_account_no)
        if account_id is None:
            first, _, rest = acct.name.partition(" ")
            account_id = dml.create(tx, "Account", {
                "Name": acct.name, "SF_Account_No__c": acct.sf_account_no,
                "WH_Account__c": None if acct.whmcs_client_id is None
                else str(acct.whmcs_client_id),
                "Portal_Status__c": "Active", "Portal_Registration_Source__c": "Portal Signup",
                "Id_Verification_Status__c": "Verified",
                "Internet_Eligibility_Status__c": "Checked",
                "Internet_Eligibility__c": "Home 10G"}, user)["Id"]
            dml.create(tx, "Contact", {"AccountId": account_id, "FirstName": first,
                                       "LastName": rest.split(" (")[0], "Email": acct.email},
                       user)
        ids.append(account_id)
    return ids


def seed(sb: Sandbox, *, accounts: int = 20, orders: int = 50, broken_every: int = 50,
         rng_seed: int = 7) -> dict[str, Any]:
    """Create ``accounts`` accounts (at least) and ``orders`` more Orders with items."""
    user = sb.users[sb.config.username]
    accounts = max(accounts, len(sb.store.by_type["Account"]), 4)
    done = int(sb.store.meta.get("seed:orders", "0"))
    created: list[dict[str, Any]] = []
    with sb.store.transaction() as tx:
        pricebook_id, catalog = _ensure_catalog(sb, tx, user)
        account_ids = _ensure_accounts(sb, tx, user, accounts)
        today = sb.store.now_ms()
        plan = catalogue.orders(done + orders, accounts, seed=rng_seed,
                                broken_every=broken_every)[done:]
        for spec in plan:
            account_id = account_ids[spec.account_index]
            family = spec.item_codes[0].split("-")[0] if spec.item_codes else "INET"
            opp = dml.create(tx, "Opportunity", {
                "Name": f"Seed opportunity {spec.index:06d}", "AccountId": account_id,
                "StageName": "Post Processing", "CloseDate": _date(today),
                "CommodityType": _COMMODITY.get(family, "Personal SonixNet Home Internet"),
                "Portal_Source__c": "Portal - Order Placement"}, user)
            order = dml.create(tx, "Order", {
                "Name": f"Seed order {spec.index:06d}", "AccountId": account_id,
                "OpportunityId": opp["Id"], "Pricebook2Id": pricebook_id,
                "Status": "Pending Review", "EffectiveDate": _date(today),
                "Activation_Status__c": "Pending Review",
                "Description": f"seed-broken: {spec.broken}" if spec.broken else None}, user)
            for code, qty in zip(spec.item_codes, spec.quantities, strict=False):
                product_id, entry_id = catalog[code]
                dml.create(tx, "OrderItem", {
                    "OrderId": order["Id"], "Product2Id": product_id,
                    "PricebookEntryId": entry_id, "Quantity": qty,
                    "UnitPrice": catalogue.catalog_item(code).unit_price}, user)
            created.append({"order_id": order["Id"], "order_number": order["OrderNumber"],
                            "opportunity_id": opp["Id"], "index": spec.index,
                            "account_index": spec.account_index, "broken": spec.broken})
        tx.meta["seed:orders"] = done + len(plan)
    return {"accounts": len(account_ids), "orders": created}


def _date(now_ms: int) -> str:
    from .model import format_datetime
    return format_datetime(now_ms)[:10]

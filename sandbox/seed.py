"""The one catalogue both sandboxes are seeded from, so that they agree.

Salesforce's `Product2.WHMCS_Product_Id__c` values are WHMCS product ids (Service and
Activation items) or WHMCS addon ids (Add-on items); every seeded Account's
`WH_Account__c` is a WHMCS client id that the WHMCS sandbox creates — except the
deliberately broken accounts, listed below.

Everything here is deterministic: account ``i`` is the same on every machine and run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: Config options known to WHMCS: option id -> (name, {sub-option id: label}).
CONFIG_OPTIONS: dict[int, tuple[str, dict[int, str]]] = {
    1: ("Router rental", {1: "None", 2: "Wi-Fi 6 router", 3: "Wi-Fi 7 router"}),
    2: ("Static IP block", {4: "None", 5: "/30", 6: "/29"}),
    3: ("SIM type", {7: "Physical SIM", 8: "eSIM"}),
}


@dataclass(frozen=True)
class CatalogItem:
    """One sellable item. ``whmcs_id`` is a product id, or an addon id for Add-ons."""

    code: str
    name: str
    item_class: str  # Service | Activation | Add-on
    billing_cycle: str | None  # Monthly | Annually | One-time (Salesforce picklist values)
    unit_price: float
    whmcs_id: int | None
    config_options_json: str | None = None
    #: WHMCS config option ids the product accepts (WHMCS side only).
    accepts_options: tuple[int, ...] = ()
    broken: str | None = None  # why this item is deliberately unprovisionable


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem("INET-1G", "SonixNet Home Internet 1G", "Service", "Monthly", 5980.0, 1,
                '{"1": "2"}', accepts_options=(1, 2)),
    CatalogItem("INET-10G", "SonixNet Home Internet 10G", "Service", "Monthly", 7980.0, 2,
                '{"1": "3", "2": "5"}', accepts_options=(1, 2)),
    CatalogItem("SIM-DATA-20", "SIM Data 20GB", "Service", "Monthly", 2480.0, 3,
                '{"3": "8"}', accepts_options=(3,)),
    CatalogItem("VPN-ROUTER", "VPN Router (annual)", "Service", "Annually", 30000.0, 4),
    CatalogItem("INET-ACT", "Internet installation fee", "Activation", "One-time", 22000.0, 5),
    CatalogItem("SIM-ACT", "SIM activation fee", "Activation", "One-time", 3300.0, 6),
    CatalogItem("ADDON-IPV4", "Static IPv4 address", "Add-on", "Monthly", 1100.0, 1),
    CatalogItem("ADDON-SUPPORT", "Premium support", "Add-on", "Monthly", 550.0, 2),
    # Deliberately broken items (the pipeline must fail these orders with a clear reason).
    CatalogItem("LEGACY-PLAN", "Legacy plan (no WHMCS mapping)", "Service", "Monthly",
                3980.0, None, broken="MISSING_PRODUCT_MAPPING"),
    CatalogItem("INET-BADJSON", "Internet 1G (corrupt config options)", "Service", "Monthly",
                5980.0, 1, "{router: wifi6", accepts_options=(1, 2),
                broken="INVALID_CONFIG_OPTIONS"),
)

#: WHMCS products: pid -> (name, billing cycles offered (WHMCS request form), option ids).
WHMCS_PRODUCTS: dict[int, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    1: ("SonixNet Home Internet 1G", ("monthly", "annually"), (1, 2)),
    2: ("SonixNet Home Internet 10G", ("monthly", "annually"), (1, 2)),
    3: ("SIM Data 20GB", ("monthly",), (3,)),
    4: ("VPN Router", ("annually",), ()),
    5: ("Internet installation fee", ("onetime",), ()),
    6: ("SIM activation fee", ("onetime",), ()),
}

#: WHMCS addons: addon id -> (name, billing cycle, pids it can be attached to).
WHMCS_ADDONS: dict[int, tuple[str, str, tuple[int, ...]]] = {
    1: ("Static IPv4 address", "monthly", (1, 2)),
    2: ("Premium support", "monthly", (1, 2, 3, 4)),
}

#: The order shapes seeded in Salesforce: codes of the items an order carries.
ORDER_SHAPES: tuple[tuple[str, ...], ...] = (
    ("INET-1G", "INET-ACT"),
    ("INET-10G", "INET-ACT", "ADDON-IPV4"),
    ("SIM-DATA-20", "SIM-ACT"),
    ("VPN-ROUTER", "ADDON-SUPPORT"),
    ("INET-1G", "INET-ACT", "ADDON-SUPPORT"),
)
BROKEN_ORDER_SHAPES: dict[str, tuple[str, ...]] = {
    "MISSING_PRODUCT_MAPPING": ("LEGACY-PLAN",),
    "INVALID_CONFIG_OPTIONS": ("INET-BADJSON", "INET-ACT"),
    "NO_ITEMS": (),
}

#: The first WHMCS client id; account i (0-based) has client id FIRST_CLIENT_ID + i.
FIRST_CLIENT_ID = 1001
#: A client id that WHMCS does not know (for the "Client ID Not Found" broken account).
UNKNOWN_CLIENT_ID = 999999


@dataclass(frozen=True)
class SeedAccount:
    index: int
    name: str
    sf_account_no: str
    whmcs_client_id: int | None
    whmcs_client_status: str = "Active"  # Active | Closed (WHMCS side)
    email: str = ""
    broken: str | None = None


#: Accounts 0..2 are deliberately broken; every other account is provisionable.
BROKEN_ACCOUNTS: dict[int, str] = {
    0: "MISSING_WHMCS_CLIENT",    # WH_Account__c empty in Salesforce
    1: "WHMCS_CLIENT_NOT_FOUND",  # WH_Account__c points at a client WHMCS does not have
    2: "WHMCS_CLIENT_CLOSED",     # WHMCS client exists with status Closed
}

_FIRST = ("Aiko", "Ben", "Chika", "Daniel", "Emi", "Farah", "Goro", "Hana", "Ivan", "Jun",
          "Kenta", "Lena", "Mei", "Noah", "Oliver", "Rin", "Sora", "Taro", "Yui", "Zoe")
_LAST = ("Sato", "Suzuki", "Takahashi", "Tanaka", "Ito", "Watanabe", "Yamamoto", "Nakamura",
         "Kobayashi", "Kato", "Smith", "Brown", "Wilson", "Garcia", "Muller")


def account(index: int) -> SeedAccount:
    """Seed account ``index`` (0-based), identical in both sandboxes."""
    first = _FIRST[index % len(_FIRST)]
    last = _LAST[(index // len(_FIRST)) % len(_LAST)]
    name = f"{first} {last} ({index:05d})"
    email = f"{first.lower()}.{last.lower()}.{index:05d}@example.jp"
    client_id: int | None = FIRST_CLIENT_ID + index
    status = "Active"
    broken = BROKEN_ACCOUNTS.get(index)
    if broken == "MISSING_WHMCS_CLIENT":
        client_id = None
    elif broken == "WHMCS_CLIENT_NOT_FOUND":
        client_id = UNKNOWN_CLIENT_ID
    elif broken == "WHMCS_CLIENT_CLOSED":
        status = "Closed"
    return SeedAccount(index, name, f"SF{index + 1:07d}", client_id, status, email, broken)


def accounts(count: int) -> list[SeedAccount]:
    return [account(i) for i in range(count)]


def whmcs_clients(count: int) -> list[SeedAccount]:
    """The accounts the WHMCS sandbox creates as clients (all but the missing/unknown ones)."""
    return [a for a in accounts(count)
            if a.whmcs_client_id is not None and a.whmcs_client_id != UNKNOWN_CLIENT_ID]


@dataclass(frozen=True)
class SeedOrder:
    index: int
    account_index: int
    item_codes: tuple[str, ...]
    quantities: tuple[int, ...] = field(default=())
    broken: str | None = None


def orders(count: int, account_count: int, *, seed: int = 7,
           broken_every: int = 50) -> list[SeedOrder]:
    """``count`` orders over ``account_count`` accounts.

    Every ``broken_every``-th order (when > 0) is deliberately broken, cycling through the
    broken accounts and broken order shapes, so a demo shows each kind of failure.
    """
    rng = random.Random(seed)
    broken_kinds = [("account", i) for i in sorted(BROKEN_ACCOUNTS)] + [
        ("shape", k) for k in BROKEN_ORDER_SHAPES]
    out: list[SeedOrder] = []
    healthy_accounts = [i for i in range(account_count) if i not in BROKEN_ACCOUNTS] or [0]
    for i in range(count):
        if broken_every > 0 and i % broken_every == broken_every - 1:
            kind, what = broken_kinds[(i // broken_every) % len(broken_kinds)]
            if kind == "account":
                codes = ORDER_SHAPES[0]
                out.append(SeedOrder(i, int(what) % max(account_count, 1), codes,
                                     tuple(1 for _ in codes), BROKEN_ACCOUNTS[int(what)]))
            else:
                codes = BROKEN_ORDER_SHAPES[str(what)]
                out.append(SeedOrder(i, rng.choice(healthy_accounts), codes,
                                     tuple(1 for _ in codes), str(what)))
            continue
        codes = ORDER_SHAPES[rng.randrange(len(ORDER_SHAPES))]
        out.append(SeedOrder(i, rng.choice(healthy_accounts), codes, tuple(1 for _ in codes)))
    return out


def catalog_item(code: str) -> CatalogItem:
    for item in CATALOG:
        if item.code == code:
            return item
    raise KeyError(code)

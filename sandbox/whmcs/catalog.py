"""WHMCS products, addons and config options, built from ``sandbox.seed``.

Product ids, offered billing cycles and accepted config options come from
``seed.WHMCS_PRODUCTS`` / ``seed.CONFIG_OPTIONS``; prices from ``seed.CATALOG`` (the
Salesforce unit price of the item mapped to that WHMCS id). A cycle a product does not
offer is priced ``-1.00``, as WHMCS's GetProducts shows it; an annual price of a monthly
product is ten months. Billing cycles travel in the request form (``monthly``) and are
shown in the display form (``Monthly``, ``One Time``) in responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox import seed

#: WHMCS billing cycles: request form -> display form.
CYCLES: dict[str, str] = {
    "free": "Free Account",
    "onetime": "One Time",
    "monthly": "Monthly",
    "quarterly": "Quarterly",
    "semiannually": "Semi-Annually",
    "annually": "Annually",
    "biennially": "Biennially",
    "triennially": "Triennially",
}
_DISPLAY_TO_REQUEST = {v.lower().replace("-", "").replace(" ", ""): k for k, v in CYCLES.items()}


def cycle_key(value: str) -> str | None:
    """Normalise a billing cycle from either form (``One Time``/``onetime``) to request form."""
    key = value.strip().lower().replace("-", "").replace(" ", "")
    if key in CYCLES:
        return key
    return _DISPLAY_TO_REQUEST.get(key)


def display_cycle(key: str) -> str:
    return CYCLES.get(key, key)


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    pricing: dict[str, float]  # request-form cycle -> price; -1 = not offered
    options: dict[int, tuple[str, dict[int, str]]]  # option id -> (name, {sub id: label})
    gid: int = 1
    type: str = "other"

    @property
    def paytype(self) -> str:
        offered = [c for c, p in self.pricing.items() if p >= 0]
        if offered == ["free"]:
            return "free"
        return "onetime" if offered == ["onetime"] else "recurring"

    def offers(self, cycle: str) -> bool:
        return self.pricing.get(cycle, -1) >= 0

    def default_cycle(self) -> str:
        return next(c for c, p in self.pricing.items() if p >= 0)

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "pricing": self.pricing, "gid": self.gid,
                "type": self.type,
                "options": {str(k): [n, {str(s): lbl for s, lbl in subs.items()}]
                            for k, (n, subs) in self.options.items()}}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Product:
        options = {int(k): (n, {int(s): lbl for s, lbl in subs.items()})
                   for k, (n, subs) in doc["options"].items()}
        return cls(doc["id"], doc["name"], doc["pricing"], options, doc["gid"], doc["type"])


@dataclass(frozen=True)
class Addon:
    id: int
    name: str
    billingcycle: str  # request form
    price: float
    pids: tuple[int, ...]

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "billingcycle": self.billingcycle,
                "price": self.price, "pids": list(self.pids)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Addon:
        return cls(doc["id"], doc["name"], doc["billingcycle"], doc["price"],
                   tuple(doc["pids"]))


def _unit_price(whmcs_id: int, classes: tuple[str, ...]) -> tuple[float, str | None]:
    for item in seed.CATALOG:
        if item.whmcs_id == whmcs_id and item.item_class in classes and not item.broken:
            return item.unit_price, item.billing_cycle
    return 0.0, None


def seed_products() -> list[Product]:
    out = []
    for pid, (name, cycles, option_ids) in seed.WHMCS_PRODUCTS.items():
        unit, sf_cycle = _unit_price(pid, ("Service", "Activation"))
        monthly = unit if sf_cycle != "Annually" else round(unit / 10, 2)
        prices = {"onetime": unit, "monthly": monthly, "quarterly": monthly * 3,
                  "semiannually": monthly * 6, "annually": monthly * 10,
                  "biennially": monthly * 20, "triennially": monthly * 30}
        if sf_cycle == "Annually":
            prices["annually"] = unit
        pricing = {c: (float(prices.get(c, 0.0)) if c in cycles else -1.0) for c in CYCLES}
        options = {oid: seed.CONFIG_OPTIONS[oid] for oid in option_ids}
        out.append(Product(pid, name, pricing, options))
    return out


def seed_addons() -> list[Addon]:
    out = []
    for aid, (name, cycle, pids) in seed.WHMCS_ADDONS.items():
        price, _ = _unit_price(aid, ("Add-on",))
        out.append(Addon(aid, name, cycle, price, tuple(pids)))
    return out

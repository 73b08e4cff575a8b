"""The WHMCS sandbox's durable state: SQLite in WAL mode, hot lookups cached in memory.

One :class:`Store` per server process, used from the event loop's thread only. Every write
commits before the method returns (``synchronous=NORMAL``: durable across a process crash,
which is what the tests and the commit-then-hang fault need). Products, addons and clients
are also kept in dicts, because every AddOrder needs them; a client missing from its dict
is looked up in the database (:meth:`Store.client`), so clients seeded into a running
sandbox's database by another process are found.

Ids follow WHMCS: integer autoincrement per table, clients seeded at
``seed.FIRST_CLIENT_ID + i``; clients created through AddClient get ids above
:data:`FIRST_ADDED_CLIENT_ID` (never ``seed.UNKNOWN_CLIENT_ID``). Each order records the
Salesforce marker ``sfOrderId=<id>`` found in its notes (column ``sf_order_id``) so the
counters can say how many WHMCS orders each Salesforce Order produced.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import seed
from sandbox.whmcs.catalog import Addon, Product, seed_addons, seed_products

FIRST_ADDED_CLIENT_ID = 500_000
SF_MARKER = re.compile(r"sfOrderId=([A-Za-z0-9]{15,18})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
  id INTEGER PRIMARY KEY, firstname TEXT, lastname TEXT, companyname TEXT, email TEXT,
  status TEXT NOT NULL, datecreated TEXT, extra TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS addons (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
  id INTEGER PRIMARY KEY, ordernum TEXT NOT NULL, userid INTEGER NOT NULL, date TEXT NOT NULL,
  amount REAL NOT NULL, paymentmethod TEXT NOT NULL, invoiceid INTEGER NOT NULL DEFAULT 0,
  status TEXT NOT NULL, promocode TEXT NOT NULL DEFAULT '', notes TEXT NOT NULL DEFAULT '',
  ipaddress TEXT NOT NULL DEFAULT '', sf_order_id TEXT, flags TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS orders_userid ON orders(userid);
CREATE INDEX IF NOT EXISTS orders_sf ON orders(sf_order_id);
CREATE TABLE IF NOT EXISTS services (
  id INTEGER PRIMARY KEY, orderid INTEGER NOT NULL, userid INTEGER NOT NULL,
  pid INTEGER NOT NULL, regdate TEXT NOT NULL, billingcycle TEXT NOT NULL,
  amount REAL NOT NULL, status TEXT NOT NULL, configoptions TEXT NOT NULL DEFAULT '{}',
  customfields TEXT NOT NULL DEFAULT '{}', username TEXT NOT NULL DEFAULT '',
  password TEXT NOT NULL DEFAULT '', serverid INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS services_order ON services(orderid);
CREATE INDEX IF NOT EXISTS services_user ON services(userid);
CREATE TABLE IF NOT EXISTS service_addons (
  id INTEGER PRIMARY KEY, orderid INTEGER NOT NULL, serviceid INTEGER NOT NULL,
  userid INTEGER NOT NULL, addonid INTEGER NOT NULL, billingcycle TEXT NOT NULL,
  amount REAL NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS service_addons_order ON service_addons(orderid);
CREATE TABLE IF NOT EXISTS invoices (
  id INTEGER PRIMARY KEY, userid INTEGER NOT NULL, orderid INTEGER NOT NULL,
  date TEXT NOT NULL, duedate TEXT NOT NULL, total REAL NOT NULL, status TEXT NOT NULL);
"""


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Client:
    id: int
    firstname: str
    lastname: str
    companyname: str
    email: str
    status: str
    datecreated: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class NewItem:
    """One validated AddOrder item: a product, its cycle, price and addons."""

    pid: int
    qty: int
    billingcycle: str  # request form
    price: float
    configoptions: dict[int, Any]
    customfields: dict[Any, Any]
    addons: list[tuple[int, float]]  # (addon id, price)


class Store:
    """SQLite state plus in-memory caches of products, addons and clients."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.products: dict[int, Product] = {}
        self.addons: dict[int, Addon] = {}
        self.clients: dict[int, Client] = {}
        self._load()

    # -- seeding and caches -------------------------------------------------------------

    def _load(self) -> None:
        for row in self.db.execute("SELECT doc FROM products"):
            p = Product.from_doc(json.loads(row[0]))
            self.products[p.id] = p
        for row in self.db.execute("SELECT doc FROM addons"):
            a = Addon.from_doc(json.loads(row[0]))
            self.addons[a.id] = a
        for row in self.db.execute("SELECT * FROM clients"):
            self.clients[row["id"]] = self._client(row)

    @staticmethod
    def _client(row: sqlite3.Row) -> Client:
        return Client(row["id"], row["firstname"], row["lastname"], row["companyname"],
                      row["email"], row["status"], row["datecreated"],
                      json.loads(row["extra"]))

    def is_seeded(self) -> bool:
        return bool(self.products)

    def seed(self, account_count: int) -> int:
        """Create the catalogue and the clients of ``account_count`` seed accounts.

        Idempotent: existing rows are kept, so seeding more accounts later only adds.
        Returns the number of clients now known.
        """
        self.db.execute("BEGIN")
        for p in seed_products():
            self.db.execute("INSERT OR REPLACE INTO products VALUES (?, ?)",
                            (p.id, json.dumps(p.to_doc())))
        for a in seed_addons():
            self.db.execute("INSERT OR REPLACE INTO addons VALUES (?, ?)",
                            (a.id, json.dumps(a.to_doc())))
        stamp = now()
        rows = []
        for acct in seed.whmcs_clients(account_count):
            first, _, rest = acct.name.partition(" ")
            rows.append((acct.whmcs_client_id, first, rest, "", acct.email,
                         acct.whmcs_client_status, stamp,
                         json.dumps({"sf_account_no": acct.sf_account_no})))
        self.db.executemany("INSERT OR IGNORE INTO clients (id, firstname, lastname, "
                            "companyname, email, status, datecreated, extra) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")
        self.products.clear()
        self.addons.clear()
        self.clients.clear()
        self._load()
        return len(self.clients)

    # -- clients ------------------------------------------------------------------------

    def client(self, client_id: int) -> Client | None:
        """The client with this id: from the cache, else from the database — another process
        (``python -m sandbox.whmcs seed`` on the live database) may have added it since the
        cache was loaded. Only a miss reads SQLite, so the hot path stays a dict lookup."""
        client = self.clients.get(client_id)
        if client is None:
            row = self.db.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone()
            if row is not None:
                client = self.clients[client_id] = self._client(row)
        return client

    def add_client(self, fields: dict[str, str]) -> Client:
        top = max((c for c in self.clients if c != seed.UNKNOWN_CLIENT_ID), default=0)
        new_id = max(top, FIRST_ADDED_CLIENT_ID) + 1
        if new_id == seed.UNKNOWN_CLIENT_ID:
            new_id += 1
        known = ("firstname", "lastname", "companyname", "email", "status")
        extra = {k: v for k, v in fields.items() if k not in known}
        client = Client(new_id, fields.get("firstname", ""), fields.get("lastname", ""),
                        fields.get("companyname", ""), fields.get("email", ""),
                        fields.get("status") or "Active", now(), extra)
        self.db.execute("INSERT INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (client.id, client.firstname, client.lastname, client.companyname,
                         client.email, client.status, client.datecreated, json.dumps(extra)))
        self.clients[client.id] = client
        return client

    def email_taken(self, email: str) -> bool:
        email = email.lower()
        return any(c.email.lower() == email for c in self.clients.values())

    # -- orders -------------------------------------------------------------------------

    def create_order(self, client_id: int, paymentmethod: str, items: list[NewItem], *,
                     notes: str, promocode: str, ipaddress: str, invoice: bool,
                     flags: dict[str, bool]) -> dict[str, Any]:
        """Insert an order with its services, addons and (optionally) its invoice.

        Returns ``{"orderid", "serviceids", "addonids", "invoiceid"}`` (ids as ints).
        """
        stamp = now()
        amount = sum(i.price * i.qty + sum(p for _, p in i.addons) * i.qty for i in items)
        marker = SF_MARKER.search(notes)
        db = self.db
        db.execute("BEGIN")
        try:
            cur = db.execute(
                "INSERT INTO orders (ordernum, userid, date, amount, paymentmethod, status, "
                "promocode, notes, ipaddress, sf_order_id, flags) "
                "VALUES ('', ?, ?, ?, ?, 'Pending', ?, ?, ?, ?, ?)",
                (client_id, stamp, amount, paymentmethod, promocode, notes, ipaddress,
                 marker.group(1) if marker else None, json.dumps(flags)))
            order_id = cur.lastrowid
            assert order_id is not None
            ordernum = str(1_000_000_000 + (order_id * 7_919_811) % 8_999_999_999)
            service_ids: list[int] = []
            addon_ids: list[int] = []
            for item in items:
                for _ in range(item.qty):
                    cur = db.execute(
                        "INSERT INTO services (orderid, userid, pid, regdate, billingcycle, "
                        "amount, status, configoptions, customfields) "
                        "VALUES (?, ?, ?, ?, ?, ?, 'Pending', ?, ?)",
                        (order_id, client_id, item.pid, stamp[:10], item.billingcycle,
                         item.price, json.dumps(item.configoptions),
                         json.dumps(item.customfields)))
                    service_id = cur.lastrowid
                    assert service_id is not None
                    service_ids.append(service_id)
                    for addon_id, price in item.addons:
                        cur = db.execute(
                            "INSERT INTO service_addons (orderid, serviceid, userid, addonid, "
                            "billingcycle, amount, status) VALUES (?, ?, ?, ?, ?, ?, 'Pending')",
                            (order_id, service_id, client_id, addon_id,
                             self.addons[addon_id].billingcycle, price))
                        assert cur.lastrowid is not None
                        addon_ids.append(cur.lastrowid)
            invoice_id = 0
            if invoice:
                cur = db.execute(
                    "INSERT INTO invoices (userid, orderid, date, duedate, total, status) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (client_id, order_id, stamp[:10], stamp[:10], amount,
                     "Paid" if amount == 0 else "Unpaid"))
                invoice_id = cur.lastrowid or 0
            db.execute("UPDATE orders SET ordernum = ?, invoiceid = ? WHERE id = ?",
                       (ordernum, invoice_id, order_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"orderid": order_id, "serviceids": service_ids, "addonids": addon_ids,
                "invoiceid": invoice_id}

    def order_status(self, order_id: int) -> str | None:
        row = self.db.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
        return row[0] if row else None

    def accept_order(self, order_id: int, *, autosetup: bool, serverid: int,
                     username: str, password: str, order_active: bool = True) -> None:
        """Pending → Active; with ``autosetup`` the services and addons become Active.
        ``order_active`` False: the order stays Pending (a provisioning module failed)."""
        db = self.db
        db.execute("BEGIN")
        if order_active:
            db.execute("UPDATE orders SET status = 'Active' WHERE id = ?", (order_id,))
        sets: list[str] = []
        args: list[Any] = []
        if autosetup:
            sets.append("status = 'Active'")
        if serverid:
            sets.append("serverid = ?")
            args.append(serverid)
        if username:
            sets.append("username = ?")
            args.append(username)
        if password:
            sets.append("password = ?")
            args.append(password)
        if sets:
            db.execute(f"UPDATE services SET {', '.join(sets)} WHERE orderid = ?",
                       (*args, order_id))
        if autosetup:
            db.execute("UPDATE service_addons SET status = 'Active' WHERE orderid = ?",
                       (order_id,))
        db.execute("COMMIT")

    def cancel_order(self, order_id: int) -> None:
        db = self.db
        db.execute("BEGIN")
        db.execute("UPDATE orders SET status = 'Cancelled' WHERE id = ?", (order_id,))
        db.execute("UPDATE services SET status = 'Cancelled' WHERE orderid = ?", (order_id,))
        db.execute("UPDATE service_addons SET status = 'Cancelled' WHERE orderid = ?",
                   (order_id,))
        db.execute("UPDATE invoices SET status = 'Cancelled' WHERE orderid = ? "
                   "AND status = 'Unpaid'", (order_id,))
        db.execute("COMMIT")

    # -- queries ------------------------------------------------------------------------

    @staticmethod
    def _where(filters: dict[str, Any], prefix: str = "") -> tuple[str, list[Any]]:
        clauses = [f"{prefix}{col} = ?" for col in filters]
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", list(filters.values())

    def find_orders(self, filters: dict[str, Any], start: int,
                    limit: int) -> tuple[int, list[sqlite3.Row]]:
        """(total matching, one page of order rows, newest first). Filter keys are columns."""
        where, args = self._where(filters, "o.")
        total = self.db.execute(f"SELECT COUNT(*) FROM orders o{where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT o.*, i.status AS invoicestatus FROM orders o LEFT JOIN invoices i "
            f"ON i.id = o.invoiceid{where} "
            f"ORDER BY o.id DESC LIMIT ? OFFSET ?", (*args, limit, start)).fetchall()
        return total, rows

    def order_services(self, order_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM services WHERE orderid = ? ORDER BY id",
                               (order_id,)).fetchall()

    def order_addons(self, order_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM service_addons WHERE orderid = ? ORDER BY id",
                               (order_id,)).fetchall()

    def find_services(self, filters: dict[str, Any], start: int,
                      limit: int) -> tuple[int, list[sqlite3.Row]]:
        where, args = self._where(filters)
        total = self.db.execute(f"SELECT COUNT(*) FROM services{where}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT * FROM services{where} ORDER BY id LIMIT ? OFFSET ?",
                               (*args, limit, start)).fetchall()
        return total, rows

    def service_addon_rows(self, service_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM service_addons WHERE serviceid = ? ORDER BY id",
                               (service_id,)).fetchall()

    def marker_counts(self) -> dict[str, int]:
        """Salesforce Order id → number of WHMCS orders whose notes carry its marker, in any
        status (Pending, Active, Cancelled, Fraud): a cancelled second order still counts."""
        rows = self.db.execute("SELECT sf_order_id, COUNT(*) FROM orders WHERE sf_order_id "
                               "IS NOT NULL GROUP BY sf_order_id")
        return {r[0]: r[1] for r in rows}

    def orders_for_marker(self, sf_order_id: str) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM orders WHERE sf_order_id = ? ORDER BY id", (sf_order_id,))]

    def close(self) -> None:
        self.db.close()

"""Durable state of the emulated org: records, platform events, tokens, clock, counters
(id sequences, the daily API usage and the Pub/Sub delivery usage).

One SQLite database in WAL mode, mirrored in memory for fast queries. Every change goes
through :meth:`Store.transaction`: the staged record writes and event inserts are
committed to SQLite in **one** transaction and only then applied to memory and announced
to subscribers — so an Order update and the platform event the Flow publishes for it
are durable together or not at all, and a restart loses nothing that was acknowledged.

The clock (:meth:`Store.now_ms`) is wall time plus a persisted offset that tests and
operators advance; it drives record timestamps, token expiry and event retention.

Replay ids are the ``events`` table's AUTOINCREMENT sequence, stepped by a random 1–64 per
event (:meth:`Store.next_replay`): strictly increasing, never reused (the sequence outlives
purges and restarts) and not contiguous, as REFERENCE §1 says of a real bus, whose numbers
other topics and orgs take too — so nothing may compute with them. Besides platform events
the table holds *bus marks* (topic ``''``, no payload): the replay numbers a keepalive hands
a caught-up subscription (:meth:`Store.bus_mark`), as the org's other traffic moves a real
event bus on. They take their number from the same persisted sequence (so every later event
is greater, across restarts too), are never delivered, age and are purged like events (a
mark older than the retention is refused as a replay id), and are not counted as events.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import ids
from .model import OBJECTS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, type TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (replay INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    uuid TEXT NOT NULL, schema_id TEXT NOT NULL, payload BLOB NOT NULL, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_created ON events(created_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, user_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_usage (minute INTEGER PRIMARY KEY, calls INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS delivery_usage (minute INTEGER PRIMARY KEY, events INTEGER NOT NULL);
"""
#: the rolling 24-hour usages kept per minute (:class:`.faults.RollingWindow`): kind ->
#: (table, count column)
USAGE_TABLES = {"api": ("api_usage", "calls"), "delivery": ("delivery_usage", "events")}
_CHILD_LINKS = [(spec[0], spec[1]) for obj in OBJECTS.values() for spec in obj.children.values()]


class Event:
    """One stored platform event; ``replay`` is the store's sequence number."""

    __slots__ = ("replay", "topic", "uuid", "schema_id", "payload", "created_ms")

    def __init__(self, replay: int, topic: str, uuid: str, schema_id: str, payload: bytes,
                 created_ms: int) -> None:
        self.replay, self.topic, self.uuid = replay, topic, uuid
        self.schema_id, self.payload, self.created_ms = schema_id, payload, created_ms


class Tx:
    """Staged writes of one transaction; reads see the staged values first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: dict[str, tuple[str, dict]] = {}
        self.events: list[tuple[str, str, str, bytes, int]] = []
        self.meta: dict[str, Any] = {}
        #: the events as stored (with replay ids), filled in when the transaction commits
        self.committed_events: list[Event] = []

    def get(self, record_id: str) -> dict | None:
        staged = self.records.get(record_id)
        return staged[1] if staged else self.store.get(record_id)

    def put(self, sobject: str, record: dict) -> None:
        self.records[record["Id"]] = (sobject, record)

    def savepoint(self) -> tuple:
        return dict(self.records), list(self.events)

    def rollback_to(self, savepoint: tuple) -> None:
        """Discard what was staged after ``savepoint`` (id sequences stay consumed)."""
        self.records, self.events = dict(savepoint[0]), list(savepoint[1])

    def add_event(self, topic: str, uuid: str, schema_id: str, payload: bytes,
                  created_ms: int) -> None:
        self.events.append((topic, uuid, schema_id, payload, created_ms))


#: the largest step between two successive replay numbers (the smallest is 1)
REPLAY_MAX_STEP = 64


def _owner_only(path: str) -> None:
    """The database readable by its owner only: its ``tokens`` table holds the bearer
    tokens it issued, live for hours (SQLite gives the ``-wal`` and ``-shm`` files the
    database's mode). Made 0644 under the default umask, any local user could call the
    sandbox as the integration user."""
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o600)


class Store:
    def __init__(self, path: str, rng: random.Random | None = None) -> None:
        #: draws the gaps between replay numbers (pass a seeded one for a repeatable run)
        self.rng = rng or random.Random()
        _owner_only(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        self.meta: dict[str, str] = dict(self.conn.execute("SELECT key, value FROM meta"))
        if "org_id" not in self.meta:
            pod = ids.base62(secrets.randbelow(62 ** 2), 2)
            self._set_meta({"pod": pod, "org_id": ids.make_id(
                "00D", pod, secrets.randbelow(62 ** 6))})
        self.by_type: dict[str, dict[str, dict]] = {name: {} for name in OBJECTS}
        self.type_of: dict[str, str] = {}
        self.children: dict[tuple[str, str], dict[str, list[str]]] = {
            link: {} for link in _CHILD_LINKS}
        for _rid, rtype, data in self.conn.execute("SELECT id, type, data FROM records"):
            self._apply(rtype, json.loads(data))
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        self.last_replay = row[0] if row else 0
        mark = self.conn.execute("SELECT replay, created_ms FROM events WHERE topic = '' "
                                 "ORDER BY replay DESC LIMIT 1").fetchone()
        #: the newest bus mark (replay, created_ms), if any
        self.last_mark: tuple[int, int] | None = (mark[0], mark[1]) if mark else None
        self.tokens: dict[str, tuple[str, int]] = {
            t: (u, e) for t, u, e in self.conn.execute("SELECT * FROM tokens")}
        #: the org's session timeout (``Sandbox`` sets it from ``token_lifetime_s``)
        self.session_timeout_ms = 7_200_000
        self.listeners: list[Callable[[], None]] = []

    # -- meta, clock, sequences ------------------------------------------------------
    @property
    def org_id(self) -> str:
        return self.meta["org_id"]

    def _set_meta(self, values: dict[str, Any]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, str(v)) for k, v in values.items()])
        self.meta.update({k: str(v) for k, v in values.items()})

    def now_ms(self) -> int:
        return int(time.time() * 1000) + int(self.meta.get("clock_offset_ms", "0"))

    def advance_clock(self, seconds: float) -> int:
        offset = int(self.meta.get("clock_offset_ms", "0")) + int(seconds * 1000)
        self._set_meta({"clock_offset_ms": offset})
        return self.now_ms()

    def next_replay(self, previous: int) -> int:
        """The replay number after ``previous``: a random step up, so successive ids leave
        gaps (the bus's other traffic) while staying strictly increasing."""
        return previous + self.rng.randint(1, REPLAY_MAX_STEP)

    def new_id(self, sobject: str, tx: Tx) -> str:
        key = f"seq:{sobject}"
        seq = int(tx.meta.get(key, self.meta.get(key, "0"))) + 1
        tx.meta[key] = seq
        return ids.make_id(ids.KEY_PREFIXES[sobject], self.meta["pod"], seq)

    def autonumber(self, sobject: str, width: int, tx: Tx) -> str:
        key = f"auto:{sobject}"
        seq = int(tx.meta.get(key, self.meta.get(key, "99"))) + 1
        tx.meta[key] = seq
        return str(seq).rjust(width, "0")

    # -- records -----------------------------------------------------------------------
    def get(self, record_id: str) -> dict | None:
        rtype = self.type_of.get(record_id)
        return self.by_type[rtype].get(record_id) if rtype else None

    def child_ids(self, child_type: str, fk: str, parent_id: str) -> list[str]:
        return self.children[(child_type, fk)].get(parent_id, [])

    def _apply(self, rtype: str, record: dict) -> None:
        rid = record["Id"]
        old = self.by_type[rtype].get(rid)
        self.by_type[rtype][rid] = record
        self.type_of[rid] = rtype
        for child_type, fk in _CHILD_LINKS:
            if child_type != rtype:
                continue
            before, after = (old or {}).get(fk), record.get(fk)
            if before == after and old is not None:
                continue
            index = self.children[(child_type, fk)]
            if before and rid in index.get(before, []):
                index[before].remove(rid)
            if after:
                index.setdefault(after, []).append(rid)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Stage writes in the yielded :class:`Tx`; commit them atomically on exit."""
        tx = Tx(self)
        tx_meta = tx.meta
        yield tx
        if not tx.records and not tx.events and not tx_meta:
            return
        conn = self.conn
        new_events: list[Event] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                             [(rid, rtype, json.dumps(rec, ensure_ascii=False))
                              for rid, (rtype, rec) in tx.records.items()])
            replay = self.last_replay
            for topic, uuid, schema_id, payload, created_ms in tx.events:
                replay = self.next_replay(replay)  # AUTOINCREMENT's sequence follows it
                conn.execute("INSERT INTO events (replay, topic, uuid, schema_id, payload, "
                             "created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                             (replay, topic, uuid, schema_id, payload, created_ms))
                new_events.append(Event(replay, topic, uuid, schema_id, payload, created_ms))
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             [(k, str(v)) for k, v in tx_meta.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.meta.update({k: str(v) for k, v in tx_meta.items()})
        tx.committed_events = new_events
        for rtype, rec in tx.records.values():
            self._apply(rtype, rec)
        if new_events:
            self.last_replay = max(self.last_replay, new_events[-1].replay)
            for listener in list(self.listeners):
                listener()

    # -- events ------------------------------------------------------------------------
    def events_after(self, topic: str, replay: int, limit: int) -> list[Event]:
        rows = self.conn.execute(
            "SELECT replay, topic, uuid, schema_id, payload, created_ms FROM events "
            "WHERE replay > ? AND topic = ? ORDER BY replay LIMIT ?", (replay, topic, limit))
        return [Event(*row) for row in rows]

    def event_exists(self, replay: int) -> bool:
        return self.conn.execute("SELECT 1 FROM events WHERE replay = ? AND topic != ''",
                                 (replay,)).fetchone() is not None

    def bus_mark(self, max_age_ms: int) -> int:
        """A replay number at the head of the bus, for a keepalive of a caught-up stream:
        the newest bus mark while nothing was stored after it and it is younger than
        ``max_age_ms``, else a new one from the sequence (persisted, like an event)."""
        now = self.now_ms()
        mark = self.last_mark
        if (mark is not None and mark[0] == self.last_replay and mark[0] > self.purged_upto
                and now - mark[1] < max_age_ms):
            return mark[0]
        replay = self.next_replay(self.last_replay)
        self.conn.execute("INSERT INTO events (replay, topic, uuid, schema_id, payload, "
                          "created_ms) VALUES (?, '', '', '', x'', ?)", (replay, now))
        self.last_replay = replay
        self.last_mark = (replay, now)
        return replay

    @property
    def purged_upto(self) -> int:
        return int(self.meta.get("purged_upto", "0"))

    def purge_events(self, retention_s: float) -> int:
        """Delete events (and bus marks) older than the retention window; returns how many
        events went. ``purged_upto`` is the greatest replay number deleted: an id at or below
        it is no longer valid for a CUSTOM subscribe."""
        cutoff = self.now_ms() - int(retention_s * 1000)
        row = self.conn.execute("SELECT MAX(replay), COALESCE(SUM(topic != ''), 0) FROM events "
                                "WHERE created_ms < ?", (cutoff,)).fetchone()
        if row[0] is None:
            return 0
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("DELETE FROM events WHERE replay <= ?", (row[0],))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('purged_upto', ?)",
                          (str(max(row[0], self.purged_upto)),))
        self.conn.execute("COMMIT")
        self.meta["purged_upto"] = str(max(row[0], self.purged_upto))
        return int(row[1])

    def event_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM events WHERE topic != ''").fetchone()[0]

    # -- rolling usages: daily API requests, Pub/Sub deliveries (faults.RollingWindow) ----
    def usage(self, kind: str) -> dict[int, int]:
        """The ``kind`` usage (:data:`USAGE_TABLES`) per minute of the sandbox clock, as
        persisted."""
        table, column = USAGE_TABLES[kind]
        return dict(self.conn.execute(f"SELECT minute, {column} FROM {table}"))

    def add_usage(self, kind: str, minute: int, count: int = 1) -> None:
        table, column = USAGE_TABLES[kind]
        self.conn.execute(f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT(minute) DO UPDATE "
                          f"SET {column} = {column} + excluded.{column}", (minute, count))

    def drop_usage(self, kind: str, before_minute: int | None = None) -> None:
        """Forget the ``kind`` minutes before ``before_minute`` (every one when None)."""
        table, _ = USAGE_TABLES[kind]
        if before_minute is None:
            self.conn.execute(f"DELETE FROM {table}")
        else:
            self.conn.execute(f"DELETE FROM {table} WHERE minute < ?", (before_minute,))

    # -- tokens ------------------------------------------------------------------------
    def issue_token(self, user_id: str, lifetime_s: float) -> str:
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(72)}"
        expires = self.now_ms() + int(lifetime_s * 1000)
        self.conn.execute("INSERT INTO tokens VALUES (?, ?, ?)", (token, user_id, expires))
        self.tokens[token] = (user_id, expires)
        return token

    def token_user(self, token: str, *, renew: bool = True) -> str | None:
        """The user a live token belongs to, or None (unknown or expired).

        A session times out after ``session_timeout_ms`` without use, as an org's does: a use
        once more than half of the timeout has passed since the session was last renewed
        renews it (Salesforce resets the timer only then, so not every call writes).
        ``renew=False`` only checks: the server's own pushes (a Subscribe stream's responses
        and keepalives) are not the client's use, so they never keep a session alive."""
        entry = self.tokens.get(token)
        now = self.now_ms()
        if entry is None or entry[1] <= now:
            return None
        if renew and entry[1] - now < self.session_timeout_ms // 2:
            expires = now + self.session_timeout_ms
            self.conn.execute("UPDATE tokens SET expires_ms = ? WHERE token = ?",
                              (expires, token))
            self.tokens[token] = (entry[0], expires)
        return entry[0]

    def expire_tokens(self) -> int:
        now = self.now_ms()
        self.conn.execute("UPDATE tokens SET expires_ms = ? WHERE expires_ms > ?", (now, now))
        count = 0
        for token, (user, expires) in list(self.tokens.items()):
            if expires > now:
                self.tokens[token] = (user, now)
                count += 1
        return count

    def close(self) -> None:
        self.conn.close()

"""The running sandbox's shared state: config, store, faults, counters, users, streams.

One instance lives in the serving process and is shared by the HTTP app (REST, OAuth,
admin) and the gRPC servicer; everything runs on one asyncio loop, so no locks.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from . import dml
from .errors import SfError
from .faults import DELIVERY_ALLOCATION, Counters, Faults
from .permissions import Profile
from .store import Store

DEFAULT_CLIENT_ID = "3MVG9sfprovSandboxConsumerKey.local"
DEFAULT_USERNAME = "integration@sfprov.sandbox"
SYSTEM_USER = {"Id": "005000000000000AAA", "Username": "automatedprocess@sandbox"}


@dataclass
class Config:
    """Serve-time settings (see ``python -m sandbox.salesforce serve --help``)."""

    db_path: str
    client_id: str
    username: str
    jwt_cert_pem: bytes
    cs_username: str = "cs.agent@sfprov.sandbox"
    token_lifetime_s: float = 7200.0
    keepalive_s: float = 270.0
    idle_close_s: float = 60.0
    retention_s: float = 72 * 3600.0
    daily_limit: int = 5_000_000
    #: Pub/Sub events deliverable in 24 hours over all subscribers (REFERENCE §1)
    delivery_allocation: int = DELIVERY_ALLOCATION
    login_url: str = ""
    instance_url: str = ""
    extra_audiences: tuple[str, ...] = ("https://login.salesforce.com",
                                         "https://test.salesforce.com")
    api_versions: tuple[str, ...] = tuple(f"{v}.0" for v in range(52, 64))


@dataclass
class Sandbox:
    config: Config
    store: Store = field(init=False)
    faults: Faults = field(default_factory=Faults)
    counters: Counters = field(default_factory=Counters)
    users: dict[str, dict] = field(default_factory=dict)
    #: live Subscribe streams; each has .drop(code, error_code, details)
    streams: set[Any] = field(default_factory=set)
    #: query cursors: id -> (remaining shaped records, totalSize, expiry in sandbox ms)
    cursors: dict[str, tuple[list[dict], int, int]] = field(default_factory=dict)
    #: held collection calls not yet finished: call number -> records in it
    held: dict[int, int] = field(default_factory=dict)
    #: the integration user's object and event permissions (``permissions``)
    profile: Profile = field(default_factory=Profile)
    _release: asyncio.Event | None = None
    _held_ids: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.store = Store(self.config.db_path)
        self.store.session_timeout_ms = int(self.config.token_lifetime_s * 1000)
        self.faults.daily_limit = self.config.daily_limit
        self.faults.delivery_allocation = self.config.delivery_allocation
        self.counters.attach(self.store)  # the daily API and delivery usages outlive a restart
        for name in (self.config.username, self.config.cs_username):
            self.users[name] = self.ensure_user(name)

    @property
    def org_id(self) -> str:
        return self.store.org_id

    def ensure_user(self, username: str) -> dict:
        for user in self.store.by_type["User"].values():
            if user["Username"].lower() == username.lower():
                return user
        with self.store.transaction() as tx:
            return dml.create(tx, "User", {"Username": username, "Name": username.split("@")[0],
                                           "Email": username, "IsActive": True}, SYSTEM_USER)

    def restricted(self, user: dict | None) -> Profile | None:
        """The profile ``user`` is held to: the integration user's, or None (unrestricted)."""
        name = str((user or {}).get("Username") or "")
        return self.profile if name.lower() == self.config.username.lower() else None

    def user_for_token(self, token: str | None) -> dict:
        """The user behind a bearer token or raise 401 ``INVALID_SESSION_ID``."""
        user_id = self.store.token_user(token) if token else None
        user = self.store.get(user_id) if user_id else None
        if user is None:
            raise SfError("INVALID_SESSION_ID", "Session expired or invalid", status=401)
        return user

    def limit_info(self) -> str:
        return f"api-usage={self.counters.api_used}/{self.faults.daily_limit}"

    def purge(self) -> int:
        return self.store.purge_events(self.config.retention_s)

    def take_hold(self, records: int) -> int | None:
        """Register a collection update with ``records`` records as held when the
        ``hold_collection_calls`` fault asks for it; returns its number, else None."""
        if self.faults.hold_collection_calls <= 0:
            return None
        self.faults.hold_collection_calls -= 1
        number = next(self._held_ids)
        self.held[number] = records
        return number

    async def wait_release(self) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        await self._release.wait()

    def release_held(self) -> int:
        """Let every held call proceed (each leaves :attr:`held` once processed)."""
        waiting = len(self.held)
        if self._release is not None:
            self._release.set()
            self._release = None
        return waiting

    def drop_streams(self) -> int:
        streams = list(self.streams)
        for stream in streams:
            stream.drop()
        return len(streams)

    def approve(self, order_ids: list[str] | None = None, count: int | None = None,
                username: str | None = None) -> list[str]:
        """Approve Orders as customer service does (Status → Approved; the Flow runs).

        With ``count``, the oldest ``count`` Orders in ``Pending Review``. Raises
        :class:`SfError` for unknown ids (nothing is approved then).
        """
        user = self.users.get(username or self.config.cs_username) or self.ensure_user(
            username or self.config.cs_username)
        if order_ids is None:
            pending = (r["Id"] for r in self.store.by_type["Order"].values()
                       if r.get("Status") == "Pending Review" and not r.get("IsDeleted"))
            order_ids = [rid for _, rid in zip(range(count or 0), pending, strict=False)]
        approved = []
        with self.store.transaction() as tx:
            for order_id in order_ids:
                approved.append(dml.update(tx, "Order", order_id, {"Status": "Approved"},
                                           user)["Id"])
        return approved

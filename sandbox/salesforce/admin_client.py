"""A small client of the ``/__sandbox`` admin API, shared by the CLI and the harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests


class AdminError(RuntimeError):
    pass


class AdminClient:
    def __init__(self, base_url: str, ca: str | None = None, timeout: float = 120.0) -> None:
        self.base = base_url.rstrip("/") + "/__sandbox"
        self.session = requests.Session()
        # Passed per request: REQUESTS_CA_BUNDLE in the environment overrides session.verify.
        self.verify: str | bool = ca if ca else True
        self.timeout = timeout

    @classmethod
    def from_ready_file(cls, path: str | Path) -> AdminClient:
        info = json.loads(Path(path).read_text())
        return cls(info["instance_url"], info.get("ca") or None)

    def call(self, method: str, path: str, body: dict | None = None,
             params: dict | None = None) -> Any:
        resp = self.session.request(method, self.base + path, json=body, params=params,
                                    timeout=self.timeout, verify=self.verify)
        if resp.status_code >= 400:
            raise AdminError(f"{method} {path}: {resp.status_code} {resp.text}")
        return resp.json()

    def seed(self, accounts: int = 20, orders: int = 50, broken_every: int = 50) -> dict:
        return self.call("POST", "/seed", {"accounts": accounts, "orders": orders,
                                           "broken_every": broken_every})

    def approve(self, count: int | None = None, ids: list[str] | None = None,
                username: str | None = None) -> list[str]:
        body: dict[str, Any] = {"username": username} if username else {}
        if ids is not None:
            body["ids"] = list(ids)
        else:
            body["count"] = int(count or 0)
        return self.call("POST", "/approve", body)["approved"]

    def update(self, sobject: str, record_id: str, fields: dict,
               username: str | None = None, run_flow: bool = True) -> dict:
        return self.call("POST", "/update", {"type": sobject, "id": record_id,
                                             "fields": fields, "username": username,
                                             "run_flow": run_flow})

    def create(self, sobject: str, fields: dict, username: str | None = None) -> dict:
        """A record made as the CS user (or ``username``): not held to the integration
        user's profile."""
        return self.call("POST", "/create", {"type": sobject, "fields": fields,
                                             "username": username})

    def delete(self, record_id: str, username: str | None = None) -> str:
        return self.call("POST", "/delete", {"id": record_id, "username": username})["deleted"]

    def permissions(self) -> dict:
        return self.call("GET", "/permissions")

    def set_permissions(self, *, objects: dict[str, str] | None = None,
                        events: dict[str, str] | None = None) -> dict:
        """Merge into the integration user's profile: ``objects`` sObject → ``"CRUD"``
        letters, ``events`` topic (with or without ``/event/``) → ``"SP"``. Names are read
        as Salesforce reads them; an unknown one, or letters Setup would not allow (Create
        or Edit without Read, Delete without Read and Edit), raise :class:`AdminError` and
        change nothing."""
        return self.call("POST", "/permissions", {"objects": objects or {},
                                                  "events": events or {}})

    def reset_permissions(self) -> dict:
        return self.call("POST", "/permissions/reset")

    def get_record(self, record_id: str) -> dict:
        return self.call("GET", f"/records/{record_id}")

    def query(self, soql: str) -> dict:
        return self.call("POST", "/query", {"q": soql})

    def events(self, after: int = 0, limit: int = 100) -> dict:
        return self.call("GET", "/events", params={"after": after, "limit": limit})

    def set_faults(self, **faults: Any) -> dict:
        return self.call("POST", "/faults", faults)

    def fail_subscribes(self, calls: int = 1,
                        error_code: str = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
                        status: str = "RESOURCE_EXHAUSTED") -> dict:
        """End the next ``calls`` Subscribe calls (-1: all until :meth:`reset_faults`) with
        gRPC ``status`` and trailer ``error-code: error_code`` (none when empty), e.g.
        ``…concurrent.client.limit.exceeded``, or ``status="INTERNAL", error_code=""``."""
        return self.set_faults(subscribe_error_calls=calls, subscribe_error_status=status,
                               subscribe_error_code=error_code)

    def reset_faults(self) -> dict:
        return self.call("POST", "/faults/reset")

    def release_held(self) -> int:
        """Let the held collection updates proceed (``set_faults(hold_collection_calls=N)``)."""
        return self.call("POST", "/hold/release")["released"]

    def expire_tokens(self) -> int:
        return self.call("POST", "/tokens/expire")["expired"]

    def drop_streams(self) -> int:
        return self.call("POST", "/streams/drop")["dropped"]

    def inject_event(self, kind: str, order_id: str | None = None, **raw: Any) -> dict:
        """``kind`` malformed | unknown_schema | raw (``fields=``, ``payload_b64=``,
        ``schema_json=``, ``schema_id=``, ``uuid=``) → ``{"uuid", "schema_id"}``."""
        return self.call("POST", "/events/inject", {"kind": kind, "order_id": order_id, **raw})

    def advance_clock(self, hours: float = 0.0, seconds: float = 0.0) -> dict:
        return self.call("POST", "/clock/advance", {"hours": hours, "seconds": seconds})

    def counters(self) -> dict:
        return self.call("GET", "/counters")

    def reset_counters(self) -> None:
        self.call("POST", "/counters/reset")

    def info(self) -> dict:
        return self.call("GET", "/info")

"""Test harness: run the Salesforce sandbox as a subprocess and drive it.

::

    from sandbox.salesforce.harness import running_sandbox

    with running_sandbox(tmp_path / "sf", keepalive_s=1) as sf:
        created = sf.seed(accounts=10, orders=20)      # -> {"accounts", "orders": [...]}
        ids = sf.approve(5)                            # or sf.approve(ids=[...]); -> ids
        env = sf.env()                                 # SF_* settings for the pipeline
        token = sf.login()["access_token"]             # a JWT bearer exchange
        sf.set_faults(rest_503_rate=0.1); sf.reset_faults()
        sf.set_faults(hold_collection_calls=1); sf.release_held()   # delay one write at will
        sf.fail_subscribes(1, "sfdc.platform.eventbus.grpc.subscription.limit.exceeded")
        sf.counters(); sf.advance_clock(hours=73); sf.get_record(ids[0]); sf.query(soql)
        sf.expire_tokens(); sf.drop_streams(); sf.inject_event("malformed")
        sf.restart()                                   # same ports, same database

Attributes: ``login_url``, ``instance_url``, ``grpc_endpoint``, ``grpc_tls``, ``ca_path``,
``private_key_path``, ``cert_path``, ``client_id``, ``username``, ``org_id``, ``admin``
(:class:`~.admin_client.AdminClient`). The sandbox starts on free ports with TLS on
HTTP (gRPC plaintext unless ``grpc_tls=True``); its log is ``<directory>/sandbox.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import requests

from .admin_client import AdminClient
from .core import DEFAULT_CLIENT_ID, DEFAULT_USERNAME
from .faults import DELIVERY_ALLOCATION
from .tlsgen import jwt_keypair

REPO_ROOT = Path(__file__).resolve().parents[2]


class SalesforceSandbox:
    def __init__(self, directory: str | Path, *, grpc_tls: bool = False,
                 token_lifetime_s: float = 7200, keepalive_s: float = 270,
                 idle_close_s: float = 60, retention_hours: float = 72,
                 daily_limit: int = 5_000_000,
                 delivery_allocation: int = DELIVERY_ALLOCATION,
                 client_id: str = DEFAULT_CLIENT_ID,
                 username: str = DEFAULT_USERNAME, extra_args: tuple[str, ...] = (),
                 startup_timeout: float = 30.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.private_key_path, self.cert_path = jwt_keypair(self.dir / "jwt")
        self.client_id, self.username, self.grpc_tls = client_id, username, grpc_tls
        self._args = ["--token-lifetime", str(token_lifetime_s), "--keepalive", str(keepalive_s),
                      "--idle-close", str(idle_close_s), "--retention-hours",
                      str(retention_hours), "--daily-limit", str(daily_limit),
                      "--delivery-allocation", str(delivery_allocation),
                      "--client-id", client_id, "--username", username, *extra_args]
        if grpc_tls:
            self._args.append("--grpc-tls")
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = (0, 0)
        self.info: dict[str, Any] = {}

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> SalesforceSandbox:
        ready = self.dir / "ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.dir / "sandbox.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [sys.executable, "-m", "sandbox.salesforce", "--dir", str(self.dir), "serve",
               "--http-port", str(self.ports[0]), "--grpc-port", str(self.ports[1]),
               *self._args]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep
                   + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if ready.exists():
                info = json.loads(ready.read_text())
                if info.get("pid") == self.proc.pid:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.dir / "sandbox.log").read_text()[-3000:]
                raise RuntimeError(f"Salesforce sandbox did not start:\n{tail}")
            time.sleep(0.05)
        self.info = info
        self.ports = (info["http_port"], info["grpc_port"])
        self.login_url, self.instance_url = info["login_url"], info["instance_url"]
        self.grpc_endpoint, self.ca_path = info["grpc_endpoint"], info["ca"]
        self.org_id = info["org_id"]
        self.admin = AdminClient(self.instance_url, self.ca_path or None)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same database."""
        self.stop()
        self.start()

    # -- pipeline settings --------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {"SF_LOGIN_URL": self.login_url, "SF_CLIENT_ID": self.client_id,
                "SF_USERNAME": self.username, "SF_PRIVATE_KEY_PATH": str(self.private_key_path),
                "SF_CA_BUNDLE": self.ca_path, "SF_PUBSUB_ENDPOINT": self.grpc_endpoint,
                "SF_PUBSUB_TLS": "true" if self.grpc_tls else "false"}

    def assertion(self, *, audience: str | None = None, exp_in: float = 120,
                  key_path: str | Path | None = None, subject: str | None = None) -> str:
        """A signed JWT bearer assertion (defaults: valid for this sandbox)."""
        key = Path(key_path or self.private_key_path).read_text()
        claims = {"iss": self.client_id, "sub": subject or self.username,
                  "aud": audience or self.login_url, "exp": int(time.time() + exp_in)}
        return jwt.encode(claims, key, algorithm="RS256")

    def login(self, **assertion_kw: Any) -> dict:
        """Exchange an assertion at the token endpoint; returns the JSON (raises on 4xx)."""
        resp = requests.post(self.login_url + "/services/oauth2/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": self.assertion(**assertion_kw)}, verify=self.ca_path or True,
            timeout=30)
        resp.raise_for_status()
        return resp.json()

    # -- admin helpers --------------------------------------------------------------------
    def seed(self, accounts: int = 20, orders: int = 50, broken_every: int = 50) -> dict:
        return self.admin.seed(accounts, orders, broken_every)

    def approve(self, count: int | None = None, ids: list[str] | None = None) -> list[str]:
        return self.admin.approve(count, ids)

    def __getattr__(self, name: str) -> Any:
        if name in ("set_faults", "reset_faults", "counters", "reset_counters", "get_record",
                    "query", "expire_tokens", "drop_streams", "inject_event", "update",
                    "events", "info", "release_held", "create", "delete", "permissions",
                    "set_permissions", "reset_permissions", "fail_subscribes"):
            return getattr(self.__dict__["admin"], name)
        raise AttributeError(name)

    def advance_clock(self, hours: float = 0.0, seconds: float = 0.0) -> dict:
        return self.admin.advance_clock(hours=hours, seconds=seconds)


@contextmanager
def running_sandbox(directory: str | Path, **options: Any) -> Iterator[SalesforceSandbox]:
    """Start a sandbox subprocess in ``directory``; stop it on exit. Options: see
    :class:`SalesforceSandbox`."""
    sandbox = SalesforceSandbox(directory, **options).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()

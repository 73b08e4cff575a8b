"""Run the WHMCS sandbox as a subprocess from tests, benchmarks and ``make up``.

Usage::

    from sandbox.whmcs.harness import whmcs_sandbox

    with whmcs_sandbox(tmp_path) as wh:          # free port, db in tmp_path
        settings_env = wh.env()                  # WHMCS_API_URL, _IDENTIFIER, _SECRET, _ACCESS_KEY
        wh.set_faults("AddOrder", hang_rate=1.0, hang_s=5, times=1)   # commit-then-hang once
        wh.set_faults("AddOrder", error_rate=1.0, match="sfOrderId=801...")  # one order only
        ...run the pipeline against wh.api_url...
        assert wh.duplicates() == {}
        assert len(wh.orders_for("801000000000001AAA")) == 1

``whmcs_sandbox(directory, *, accounts=200, allowed_ips=("127.0.0.1", "::1"),
identifier=..., secret=..., access_key=..., fault_seed=None, startup_timeout=20)`` is a
context manager; it starts ``python -m sandbox.whmcs serve --port 0`` in ``directory``
(database ``directory/whmcs.db``, log ``directory/whmcs.log``), waits for the ready file and
yields a :class:`WhmcsSandbox`:

- ``api_url``, ``admin_url``, ``port``, ``identifier``, ``secret``, ``access_key``, ``db_path``
- ``env()`` → the pipeline's settings pointing at it (``WHMCS_API_URL``,
  ``WHMCS_API_IDENTIFIER``, ``WHMCS_API_SECRET``, ``WHMCS_API_ACCESS_KEY``)
- ``call(action, **params)`` → the decoded JSON of one authenticated API call (test helper;
  list values become ``name[i]`` keys)
- ``set_faults(action="*", **spec)`` (fields of :class:`sandbox.whmcs.faults.FaultSpec`),
  ``set_fault_seed(n)``, ``clear_faults(action=None)``, ``faults()``
- ``set_allowed_ips(ips)``
- ``login_ban()``, ``set_login_ban(ban_after=, ban_window_s=, ban_s=)``, ``lift_login_bans()``
  — WHMCS's ban of an IP after failed logins (on by default: 3 in 30 minutes ban for 15)
- ``counters()`` → ``{"calls", "orders_created", "orders_by_marker", "duplicates"}``,
  ``reset_counters()`` (call counts only)
- ``orders_for(sf_order_id)`` → list of WHMCS order dicts whose notes carry
  ``sfOrderId=<id>``; ``duplicates()`` → ``{sf_order_id: count}`` for counts above one
- ``restart()`` (same port and database; call counters restart from zero), ``stop()``

The subprocess is terminated (SIGTERM, then SIGKILL) when the block exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

DEFAULT_IDENTIFIER = "sandbox-identifier"
DEFAULT_SECRET = "sandbox-secret"
DEFAULT_ACCESS_KEY = "sandbox-accesskey"
_ROOT = Path(__file__).resolve().parents[2]


class SandboxStartError(RuntimeError):
    """The sandbox did not come up; the message carries the tail of its log."""


class WhmcsSandbox:
    """Handle on a running sandbox subprocess (see the module docstring)."""

    def __init__(self, directory: Path, *, accounts: int, allowed_ips: tuple[str, ...],
                 identifier: str, secret: str, access_key: str, fault_seed: int | None,
                 startup_timeout: float) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.db_path = self.directory / "whmcs.db"
        self.log_path = self.directory / "whmcs.log"
        self.ready_file = self.directory / "whmcs.ready.json"
        self.identifier, self.secret, self.access_key = identifier, secret, access_key
        self.accounts = accounts
        self.allowed_ips = allowed_ips
        self.fault_seed = fault_seed
        self.startup_timeout = startup_timeout
        self.port = 0
        self.api_url = ""
        self.admin_url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=30)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sandbox.whmcs", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--db", str(self.db_path),
               "--ready-file", str(self.ready_file), "--accounts", str(self.accounts),
               "--allowed-ips", ",".join(self.allowed_ips)]
        if self.fault_seed is not None:
            cmd += ["--fault-seed", str(self.fault_seed)]
        env = {**os.environ, "WHMCS_API_IDENTIFIER": self.identifier,
               "WHMCS_API_SECRET": self.secret, "WHMCS_API_ACCESS_KEY": self.access_key,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=self.directory, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise SandboxStartError(f"WHMCS sandbox did not start:\n{tail}")
            time.sleep(0.02)
        info = json.loads(self.ready_file.read_text())
        self.port = info["port"]
        self.api_url = info["url"]
        self.admin_url = f"http://127.0.0.1:{self.port}/__sandbox"

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same database."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._http.close()

    # -- the pipeline's view ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"WHMCS_API_URL": self.api_url, "WHMCS_API_IDENTIFIER": self.identifier,
                "WHMCS_API_SECRET": self.secret, "WHMCS_API_ACCESS_KEY": self.access_key}

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        form: dict[str, str] = {"action": action, "identifier": self.identifier,
                                "secret": self.secret, "responsetype": "json"}
        for key, value in params.items():
            if isinstance(value, list | tuple):
                form.update({f"{key}[{i}]": str(v) for i, v in enumerate(value)})
            elif value is not None:
                form[key] = str(value)
        return self._http.post(self.api_url, data=form).json()

    # -- admin --------------------------------------------------------------------------

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._http.request(method, f"{self.admin_url}/{path}", **kwargs)
        resp.raise_for_status()
        return resp.json()

    def set_faults(self, action: str = "*", **spec: Any) -> dict[str, Any]:
        return self._admin("POST", "faults", json={"faults": {action: spec}})

    def set_fault_seed(self, seed: int | None) -> dict[str, Any]:
        return self._admin("POST", "faults", json={"seed": seed})

    def clear_faults(self, action: str | None = None) -> dict[str, Any]:
        return self._admin("DELETE", "faults", params={"action": action} if action else {})

    def faults(self) -> dict[str, Any]:
        return self._admin("GET", "faults")

    def set_allowed_ips(self, ips: list[str] | tuple[str, ...]) -> dict[str, Any]:
        return self._admin("POST", "allowed-ips", json={"allowed_ips": list(ips)})

    def login_ban(self) -> dict[str, Any]:
        return self._admin("GET", "login-ban")

    def set_login_ban(self, **fields: float) -> dict[str, Any]:
        """``ban_after`` (failed logins), ``ban_window_s``, ``ban_s`` (0 = no ban)."""
        return self._admin("POST", "login-ban", json=fields)

    def lift_login_bans(self) -> dict[str, Any]:
        """Lift every ban and forget the failed logins (as an admin can in WHMCS)."""
        return self._admin("DELETE", "login-ban")

    def counters(self) -> dict[str, Any]:
        return self._admin("GET", "counters")

    def calls(self) -> dict[str, int]:
        """Calls per action since the last reset (cheap: no scan of the orders)."""
        return self._admin("GET", "calls")

    def reset_counters(self) -> None:
        self._admin("POST", "counters/reset")

    def orders_for(self, sf_order_id: str) -> list[dict[str, Any]]:
        return self._admin("GET", "orders", params={"sf_order_id": sf_order_id})["orders"]

    def active_orders_by_marker(self, page: int = 1000) -> dict[str, set[int]]:
        """Salesforce Order id → the ids of its Active WHMCS orders, every one (a page of
        ``page`` orders a call, not a call per Order)."""
        return {oid: set(orders) for oid, orders in self.active_services_by_marker(page).items()}

    def active_services_by_marker(self, page: int = 1000) -> dict[str, dict[int, set[int]]]:
        """Salesforce Order id → its Active WHMCS orders' ids → their service ids."""
        out: dict[str, dict[int, set[int]]] = {}
        start = 0
        while True:
            answer = self._admin("GET", "orders", params={"status": "Active", "start": start,
                                                          "limit": page})
            for order in answer["orders"]:
                if order.get("sf_order_id"):
                    out.setdefault(order["sf_order_id"], {})[int(order["id"])] = {
                        int(s) for s in order.get("serviceids") or ()}
            start += len(answer["orders"])
            if not answer["orders"] or start >= answer["total"]:
                return out

    def duplicates(self) -> dict[str, int]:
        return self.counters()["duplicates"]


@contextmanager
def whmcs_sandbox(directory: str | Path, *, accounts: int = 200,
                  allowed_ips: tuple[str, ...] = ("127.0.0.1", "::1"),
                  identifier: str = DEFAULT_IDENTIFIER, secret: str = DEFAULT_SECRET,
                  access_key: str = DEFAULT_ACCESS_KEY, fault_seed: int | None = None,
                  startup_timeout: float = 20.0) -> Iterator[WhmcsSandbox]:
    """Start the sandbox subprocess in ``directory``; stop it when the block exits."""
    handle = WhmcsSandbox(Path(directory), accounts=accounts, allowed_ips=allowed_ips,
                          identifier=identifier, secret=secret, access_key=access_key,
                          fault_seed=fault_seed, startup_timeout=startup_timeout)
    handle.start()
    try:
        yield handle
    finally:
        handle.close()

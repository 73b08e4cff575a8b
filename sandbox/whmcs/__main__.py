"""``python -m sandbox.whmcs <command>``: serve, seed, orders, faults, counters, bench.

Flags fall back to environment variables (shown as ``[env: VAR]`` in ``--help``):

- ``serve [--host 127.0.0.1] [--port 8881] [--db var/whmcs-sandbox.db] [--ready-file PATH]
  [--identifier ..] [--secret ..] [--access-key ..] [--admin-username .. --admin-password ..]
  [--allowed-ips 127.0.0.1,::1] [--ban-after 3] [--ban-window-s 1800] [--ban-s 900]
  [--accounts 10000] [--sf-accounts 0] [--gateways mailin,paypal,banktransfer]
  [--fault-seed N]`` — port 0 picks a free port; the ready file gets ``{"url", "port",
  "pid"}`` once listening. A new database is seeded on first start with ``--accounts`` seed
  accounts, or ``--sf-accounts`` (the Salesforce sandbox's ``SF_SANDBOX_ACCOUNTS``) when more:
  each of its accounts names a WHMCS client, which must exist. The ban flags: WHMCS's
  login ban (an IP with that many failed logins within the window is answered ``IP Banned``
  for ``--ban-s`` seconds; 0 = no ban; ``DELETE /__sandbox/login-ban`` lifts bans).
- ``seed --accounts N [--db ..]`` — add the catalogue and N seed accounts' clients.
- ``orders [--url ..] [--sf-order-id ..] [--userid ..] [--status ..] [--limit ..]``
- ``faults show|clear [ACTION]|set [ACTION] key=value ... [--url ..]`` — e.g.
  ``faults set AddOrder hang_rate=1 hang_s=30 times=1``; without an action (``faults set
  hang_rate=1``) the spec is every action's (``*``); a value is read as JSON
  (``true``, ``0.5``), except the text fields' (``error_kind``, ``whmcs_error``,
  ``hang_mode``, ``match``), kept as typed.
- ``counters [--url ..]``
- ``bench [--url ..] [--pairs 5000] [--concurrency 32]`` — without ``--url`` it starts its
  own sandbox subprocess in a temporary directory; prints AddOrder+AcceptOrder pairs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from sandbox.whmcs import harness

DEFAULT_PORT = 8881


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _add(parser: argparse.ArgumentParser, flag: str, var: str, default: str,
         help_text: str, **kw: Any) -> None:
    parser.add_argument(flag, default=_env(var, default), help=f"{help_text} [env: {var}]",
                        **kw)


def _admin_url(args: argparse.Namespace) -> str:
    base = args.url.rstrip("/")
    if base.endswith("/includes/api.php"):
        base = base[: -len("/includes/api.php")]
    return base + "/__sandbox"


def cmd_serve(args: argparse.Namespace) -> int:
    from common.log import setup_logging
    from sandbox.whmcs.actions import Context
    from sandbox.whmcs.admin import serve
    from sandbox.whmcs.faults import Faults
    from sandbox.whmcs.server import Config, Sandbox
    from sandbox.whmcs.store import Store

    setup_logging("whmcs-sandbox", args.log_level, "TEXT")
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = Store(args.db)
    if not store.is_seeded():
        store.seed(max(int(args.accounts), args.sf_accounts))
    config = Config(args.identifier, args.secret, args.access_key,
                    {ip.strip() for ip in args.allowed_ips.split(",") if ip.strip()},
                    Context(tuple(g.strip() for g in args.gateways.split(",") if g.strip())),
                    admin_username=args.admin_username, admin_password=args.admin_password,
                    ban_after=int(args.ban_after), ban_window_s=float(args.ban_window_s),
                    ban_s=float(args.ban_s))
    seed = int(args.fault_seed) if args.fault_seed not in (None, "") else None
    sandbox = Sandbox(store, config, Faults(seed))
    ready = Path(args.ready_file) if args.ready_file else None
    asyncio.run(serve(sandbox, args.host, int(args.port), ready))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from sandbox.whmcs.store import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = Store(args.db)
    print(json.dumps({"clients": store.seed(int(args.accounts)),
                      "products": len(store.products), "addons": len(store.addons)}))
    store.close()
    return 0


def _print(data: Any) -> int:
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return 0


def cmd_orders(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("sf_order_id", args.sf_order_id), ("userid", args.userid),
                                ("status", args.status), ("limit", args.limit)) if v}
    return _print(httpx.get(_admin_url(args) + "/orders", params=params).json())


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_faults(args: argparse.Namespace) -> int:
    url = _admin_url(args) + "/faults"
    if args.op == "show":
        return _print(httpx.get(url).json())
    if args.op == "clear":
        params = {"action": args.action} if args.action else {}
        return _print(httpx.delete(url, params=params).json())
    from sandbox.whmcs.faults import TEXT_FIELDS

    action, fields = args.action or "*", list(args.spec)
    if "=" in action:  # ``faults set hang_rate=1``: no action named, a field taken for it
        action, fields = "*", [action, *fields]
    spec = dict(kv.split("=", 1) for kv in fields)
    # text fields stay text (``error_kind=500``, ``match=1006``); the rest are JSON values
    body = {"faults": {action: {k: v if k in TEXT_FIELDS else _value(v)
                                for k, v in spec.items()}}}
    resp = httpx.post(url, json=body)
    _print(resp.json())
    return 0 if resp.status_code == 200 else 2


def cmd_counters(args: argparse.Namespace) -> int:
    return _print(httpx.get(_admin_url(args) + "/counters").json())


def cmd_bench(args: argparse.Namespace) -> int:
    from sandbox.whmcs.bench import run_bench

    def run(url: str, ident: str, secret: str) -> None:
        auth = {"identifier": ident, "secret": secret, "responsetype": "json"}
        result = asyncio.run(run_bench(url, auth, pairs=args.pairs,
                                       concurrency=args.concurrency))
        print(f"{result.pairs_per_s:,.0f} AddOrder+AcceptOrder pairs/s "
              f"({result.pairs} pairs in {result.seconds:.2f} s, "
              f"{args.concurrency} connections, {result.errors} errors)")

    if args.url:
        run(args.url, args.identifier, args.secret)
        return 0
    with tempfile.TemporaryDirectory() as tmp, harness.whmcs_sandbox(tmp) as wh:
        run(wh.api_url, wh.identifier, wh.secret)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.whmcs",
                                     description="Local emulator of the WHMCS external API.")
    sub = parser.add_subparsers(dest="command", required=True)
    default_url = f"http://127.0.0.1:{_env('WHMCS_SANDBOX_PORT', str(DEFAULT_PORT))}"

    serve = sub.add_parser("serve", help="run the API server")
    _add(serve, "--host", "WHMCS_SANDBOX_HOST", "127.0.0.1", "listen address")
    _add(serve, "--port", "WHMCS_SANDBOX_PORT", str(DEFAULT_PORT), "port (0 = free port)")
    _add(serve, "--db", "WHMCS_SANDBOX_DB", "var/whmcs-sandbox.db", "SQLite database path")
    _add(serve, "--ready-file", "WHMCS_SANDBOX_READY_FILE", "", "write {url, port} here")
    _add(serve, "--identifier", "WHMCS_API_IDENTIFIER", harness.DEFAULT_IDENTIFIER,
         "API credential identifier")
    _add(serve, "--secret", "WHMCS_API_SECRET", harness.DEFAULT_SECRET, "API credential secret")
    _add(serve, "--access-key", "WHMCS_API_ACCESS_KEY", harness.DEFAULT_ACCESS_KEY,
         "accesskey that bypasses the IP allow-list ('' = none)")
    _add(serve, "--admin-username", "WHMCS_SANDBOX_ADMIN_USERNAME", "",
         "an admin whose login credentials (username + MD5 of the password) the API takes "
         "('' = none)")
    _add(serve, "--admin-password", "WHMCS_SANDBOX_ADMIN_PASSWORD", "",
         "that admin's password")
    _add(serve, "--allowed-ips", "WHMCS_SANDBOX_ALLOWED_IPS", "127.0.0.1,::1",
         "comma-separated allow-list; * = any")
    _add(serve, "--ban-after", "WHMCS_SANDBOX_BAN_AFTER", "3",
         "failed logins from one IP (within --ban-window-s) that ban it, as WHMCS does")
    _add(serve, "--ban-window-s", "WHMCS_SANDBOX_BAN_WINDOW_S", "1800",
         "seconds within which failed logins count towards a ban")
    _add(serve, "--ban-s", "WHMCS_SANDBOX_BAN_S", "900",
         "how long a banned IP is answered 'IP Banned', seconds (0 = no ban)")
    _add(serve, "--accounts", "WHMCS_SANDBOX_ACCOUNTS", "10000", "seed accounts on first start")
    serve.add_argument("--sf-accounts", type=int, default=0,
                       help="the Salesforce sandbox's seed accounts (SF_SANDBOX_ACCOUNTS): "
                            "seeded too on first start when more than --accounts, since each "
                            "names a WHMCS client")
    _add(serve, "--gateways", "WHMCS_SANDBOX_GATEWAYS", "mailin,paypal,banktransfer",
         "payment gateways AddOrder accepts")
    _add(serve, "--fault-seed", "WHMCS_SANDBOX_FAULT_SEED", "", "seed of the fault RNG")
    _add(serve, "--log-level", "WHMCS_SANDBOX_LOG_LEVEL", "INFO", "log level")
    serve.set_defaults(fn=cmd_serve)

    seed = sub.add_parser("seed", help="seed the catalogue and N accounts' clients")
    _add(seed, "--db", "WHMCS_SANDBOX_DB", "var/whmcs-sandbox.db", "SQLite database path")
    _add(seed, "--accounts", "WHMCS_SANDBOX_ACCOUNTS", "10000", "number of seed accounts")
    seed.set_defaults(fn=cmd_seed)

    for name, fn, text in (("orders", cmd_orders, "list orders"),
                           ("faults", cmd_faults, "show/set/clear faults"),
                           ("counters", cmd_counters, "calls, orders per marker, duplicates"),
                           ("bench", cmd_bench, "AddOrder+AcceptOrder pairs per second")):
        p = sub.add_parser(name, help=text)
        _add(p, "--url", "WHMCS_SANDBOX_URL", "" if name == "bench" else default_url,
             "sandbox base or api.php URL")
        p.set_defaults(fn=fn)
        if name == "orders":
            p.add_argument("--sf-order-id")
            p.add_argument("--userid")
            p.add_argument("--status")
            p.add_argument("--limit", default="100")
        elif name == "faults":
            p.add_argument("op", choices=("show", "set", "clear"))
            p.add_argument("action", nargs="?", help="AddOrder, AcceptOrder, ... or *")
            p.add_argument("spec", nargs="*", help="FaultSpec fields as key=value")
        elif name == "bench":
            p.add_argument("--pairs", type=int, default=5000)
            p.add_argument("--concurrency", type=int, default=32)
            _add(p, "--identifier", "WHMCS_API_IDENTIFIER", harness.DEFAULT_IDENTIFIER, "")
            _add(p, "--secret", "WHMCS_API_SECRET", harness.DEFAULT_SECRET, "")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())

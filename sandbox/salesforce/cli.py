"""Operator commands: ``python -m sandbox.salesforce {serve,keygen,seed,approve,show,clock,
faults,counters,bench}``.

Every command but ``serve``/``keygen``/``bench`` talks to a running sandbox through its
admin API, found via ``--dir`` (its ready file; env ``SF_SANDBOX_DIR``) or ``--url``/``--ca``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from .admin_client import AdminClient
from .core import DEFAULT_CLIENT_ID, DEFAULT_USERNAME
from .faults import DELIVERY_ALLOCATION

DEFAULT_DIR = os.environ.get("SF_SANDBOX_DIR", "./.sandbox/salesforce")


def _env(name: str, default: Any) -> Any:
    """``name`` from the environment; blank is unset (as for the pipeline's settings)."""
    return os.environ.get(name, "").strip() or default


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the sandbox (REST/OAuth over HTTPS + Pub/Sub gRPC)")
    p.add_argument("--host", default=_env("SF_SANDBOX_HOST", "127.0.0.1"))
    p.add_argument("--public-host", default="", help="host name to put in URLs")
    p.add_argument("--http-port", type=int, default=int(_env("SF_SANDBOX_HTTP_PORT", 8443)))
    p.add_argument("--grpc-port", type=int, default=int(_env("SF_SANDBOX_GRPC_PORT", 7443)))
    p.add_argument("--db", default="", help="SQLite path [default: DIR/salesforce.db]")
    p.add_argument("--tls-dir", default="", help="[default: DIR/tls]")
    p.add_argument("--no-tls", action="store_true", help="plain HTTP (debugging only)")
    p.add_argument("--grpc-tls", action="store_true", help="TLS on the gRPC port too")
    p.add_argument("--client-id", default=_env("SF_CLIENT_ID", DEFAULT_CLIENT_ID),
                   help="connected app consumer key [env: SF_CLIENT_ID]")
    p.add_argument("--username", default=_env("SF_USERNAME", DEFAULT_USERNAME),
                   help="integration user [env: SF_USERNAME]")
    p.add_argument("--jwt-cert", default=_env("SF_SANDBOX_JWT_CERT", ""),
                   help="connected app certificate [default: generated DIR/jwt/cert.pem]")
    p.add_argument("--token-lifetime", type=float, default=7200.0, help="seconds")
    p.add_argument("--keepalive", type=float, default=270.0, help="seconds")
    p.add_argument("--idle-close", type=float, default=60.0, help="seconds")
    p.add_argument("--retention-hours", type=float, default=72.0)
    p.add_argument("--daily-limit", type=int, default=5_000_000)
    p.add_argument("--delivery-allocation", type=int, default=DELIVERY_ALLOCATION,
                   help="Pub/Sub events deliverable in 24 hours over all subscribers "
                   "(a real org: 50000 Performance/Unlimited, 25000 Enterprise)")
    p.add_argument("--ready-file", default="", help="[default: DIR/ready.json]")
    p.add_argument("--log-level", default="INFO")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox.salesforce")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="sandbox directory [env: "
                        "SF_SANDBOX_DIR]")
    parser.add_argument("--url", default="", help="sandbox base URL (instead of --dir)")
    parser.add_argument("--ca", default="", help="CA bundle for --url")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _serve_parser(sub)
    sub.add_parser("keygen", help="JWT key pair + certificate into DIR/jwt")
    p = sub.add_parser("seed", help="seed accounts, products, opportunities, orders")
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--orders", type=int, default=50)
    p.add_argument("--broken-every", type=int, default=50)
    p = sub.add_parser("approve", help="approve orders as customer service")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("ids", nargs="*")
    p = sub.add_parser("show", help="show an Order with its items")
    p.add_argument("order_id")
    p = sub.add_parser("clock", help="clock advance HOURS")
    p.add_argument("action", choices=["advance"])
    p.add_argument("hours", type=float)
    p = sub.add_parser("faults", help="show/set faults and one-shot actions")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--reset", action="store_true")
    p.add_argument("--expire-tokens", action="store_true")
    p.add_argument("--drop-streams", action="store_true")
    p.add_argument("--inject", choices=["malformed", "unknown_schema"])
    sub.add_parser("counters", help="API call counters")
    p = sub.add_parser("bench", help="approve N orders and time their gRPC delivery")
    p.add_argument("--orders", type=int, default=10_000)
    return parser


def _client(args: argparse.Namespace) -> AdminClient:
    if args.url:
        return AdminClient(args.url, args.ca or None)
    return AdminClient.from_ready_file(Path(args.dir) / "ready.json")


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "serve":
        from common.log import setup_logging

        from .server import ServeOptions, serve
        setup_logging("sf-sandbox", args.log_level, "TEXT")
        opts = ServeOptions(
            dir=args.dir, host=args.host, public_host=args.public_host,
            http_port=args.http_port, grpc_port=args.grpc_port, db=args.db,
            tls_dir=args.tls_dir, no_tls=args.no_tls, grpc_tls=args.grpc_tls,
            client_id=args.client_id, username=args.username, jwt_cert=args.jwt_cert,
            token_lifetime_s=args.token_lifetime, keepalive_s=args.keepalive,
            idle_close_s=args.idle_close, retention_hours=args.retention_hours,
            daily_limit=args.daily_limit, delivery_allocation=args.delivery_allocation,
            ready_file=args.ready_file)
        asyncio.run(serve(opts))
        return 0
    if args.cmd == "keygen":
        from .tlsgen import jwt_keypair
        key, cert = jwt_keypair(Path(args.dir) / "jwt")
        _print({"private_key": str(key), "certificate": str(cert)})
        return 0
    if args.cmd == "bench":
        from .bench import main as bench_main
        return bench_main(args.orders)
    client = _client(args)
    if args.cmd == "seed":
        result = client.seed(args.accounts, args.orders, args.broken_every)
        _print({"accounts": result["accounts"], "orders_created": len(result["orders"]),
                "broken": [o for o in result["orders"] if o["broken"]]})
    elif args.cmd == "approve":
        approved = client.approve(ids=args.ids) if args.ids else client.approve(args.count or 1)
        _print({"approved": len(approved), "ids": approved[:20]})
    elif args.cmd == "show":
        _print(client.query(
            "SELECT Id, OrderNumber, Status, Activation_Status__c, Activation_Error__c, "
            "Activation_Error_DateTime__c, WHMCS_Order_Id__c, Account.Name, "
            "Account.WH_Account__c, Opportunity.StageName, Opportunity.WHMCS_Service_ID__c, "
            "(SELECT Id, Quantity, UnitPrice, Product2.Name, Product2.WHMCS_Product_Id__c, "
            "Product2.Billing_Cycle__c, Product2.Item_Class__c FROM OrderItems) "
            f"FROM Order WHERE Id = '{args.order_id}'"))
    elif args.cmd == "clock":
        _print(client.advance_clock(hours=args.hours))
    elif args.cmd == "faults":
        if args.reset:
            client.reset_faults()
        changes = {}
        for item in args.set:
            key, _, raw = item.partition("=")
            try:
                changes[key] = json.loads(raw)
            except ValueError:
                changes[key] = raw
        out: dict[str, Any] = {"faults": client.set_faults(**changes)}
        if args.expire_tokens:
            out["tokens_expired"] = client.expire_tokens()
        if args.drop_streams:
            out["streams_dropped"] = client.drop_streams()
        if args.inject:
            out["injected"] = client.inject_event(args.inject)
        _print(out)
    elif args.cmd == "counters":
        _print(client.counters())
    return 0


if __name__ == "__main__":
    sys.exit(main())

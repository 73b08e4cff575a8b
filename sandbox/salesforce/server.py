"""``serve``: run the HTTP (REST/OAuth/admin) and gRPC (Pub/Sub) servers on one loop.

Layout of a sandbox directory (``--dir``; every path can be overridden): ``salesforce.db``
(SQLite, WAL), ``tls/`` (CA + server certificate, generated if absent), ``jwt/``
(connected-app key pair + certificate, generated if absent and no ``--jwt-cert`` given)
and the ready file, written atomically once both servers listen, with the actual ports
and URLs (ports may be 0 = pick a free one). SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from . import tlsgen
from .core import DEFAULT_CLIENT_ID, DEFAULT_USERNAME, Config, Sandbox
from .faults import DELIVERY_ALLOCATION
from .generated import pubsub_api_pb2_grpc as pb_grpc
from .http_app import make_app
from .pubsub import PubSubService

log = logging.getLogger("sandbox.salesforce")

GRPC_OPTIONS = [
    # Sending: a FetchResponse is kept within 4 MiB (.subscription), but one oversized event
    # (injected through the admin API) still goes out whole — up to 16 MiB, what the
    # connector's channel accepts (connectors.pubsub.client.channel_options).
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # Receiving: REFERENCE's "4 MB hard gRPC limit" on a publish request
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # HTTP/2 pings: gRPC's default policy (at most one ping without data per 5 minutes,
    # GOAWAY "too_many_pings" after two more), as an unknown front end may enforce it — a
    # client that pings more often loses its quiet streams here too
]


@dataclass
class ServeOptions:
    dir: str = "./.sandbox/salesforce"
    host: str = "127.0.0.1"
    public_host: str = ""
    http_port: int = 8443
    grpc_port: int = 7443
    db: str = ""
    tls_dir: str = ""
    no_tls: bool = False
    grpc_tls: bool = False
    client_id: str = DEFAULT_CLIENT_ID
    username: str = DEFAULT_USERNAME
    jwt_cert: str = ""
    token_lifetime_s: float = 7200.0
    keepalive_s: float = 270.0
    idle_close_s: float = 60.0
    retention_hours: float = 72.0
    daily_limit: int = 5_000_000
    delivery_allocation: int = DELIVERY_ALLOCATION
    purge_interval_s: float = 60.0
    ready_file: str = ""


def _paths(opts: ServeOptions) -> tuple[Path, Path, Path]:
    base = Path(opts.dir)
    base.mkdir(parents=True, exist_ok=True)
    db = Path(opts.db) if opts.db else base / "salesforce.db"
    tls_dir = Path(opts.tls_dir) if opts.tls_dir else base / "tls"
    cert = Path(opts.jwt_cert) if opts.jwt_cert else tlsgen.jwt_keypair(base / "jwt")[1]
    return db, tls_dir, cert


def _write_ready(path: str, info: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)


async def serve(opts: ServeOptions) -> None:
    db, tls_dir, jwt_cert = _paths(opts)
    url_host = opts.public_host or ("127.0.0.1" if opts.host in ("0.0.0.0", "::", "") else
                                    opts.host)
    tls = None if opts.no_tls and not opts.grpc_tls else tlsgen.tls_material(tls_dir, (url_host,))
    config = Config(db_path=str(db), client_id=opts.client_id, username=opts.username,
                    jwt_cert_pem=jwt_cert.read_bytes(), token_lifetime_s=opts.token_lifetime_s,
                    keepalive_s=opts.keepalive_s, idle_close_s=opts.idle_close_s,
                    retention_s=opts.retention_hours * 3600, daily_limit=opts.daily_limit,
                    delivery_allocation=opts.delivery_allocation)
    sb = Sandbox(config)

    ssl_ctx = None
    if not opts.no_tls and tls:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(str(tls["cert"]), str(tls["key"]))
    # Salesforce accepts request URIs up to 16,384 characters (a guard query of 300 ids is
    # ~9 KB); aiohttp's default request line limit is 8,190 bytes.
    runner = web.AppRunner(make_app(sb), access_log=None, max_line_size=16_400,
                           max_field_size=16_384)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.http_port, ssl_context=ssl_ctx,
                       reuse_address=True)
    await site.start()
    http_port = runner.addresses[0][1]
    scheme = "http" if ssl_ctx is None else "https"
    host_part = f"[{url_host}]" if ":" in url_host else url_host
    config.login_url = config.instance_url = f"{scheme}://{host_part}:{http_port}"

    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_PubSubServicer_to_server(PubSubService(sb), grpc_server)
    bind = f"{opts.host}:{opts.grpc_port}"
    if opts.grpc_tls and tls:
        creds = grpc.ssl_server_credentials([(tls["key"].read_bytes(), tls["cert"].read_bytes())])
        grpc_port = grpc_server.add_secure_port(bind, creds)
    else:
        grpc_port = grpc_server.add_insecure_port(bind)
    await grpc_server.start()

    info = {"login_url": config.login_url, "instance_url": config.instance_url,
            "grpc_endpoint": f"{url_host}:{grpc_port}", "grpc_tls": opts.grpc_tls,
            "http_port": http_port, "grpc_port": grpc_port, "tls": ssl_ctx is not None,
            "ca": str(tls["ca"]) if tls else "", "org_id": sb.org_id,
            "client_id": config.client_id, "username": config.username,
            "cs_username": config.cs_username, "db": str(db), "pid": os.getpid()}
    _write_ready(opts.ready_file or str(Path(opts.dir) / "ready.json"), info)
    log.info("salesforce sandbox listening: %s, grpc %s", config.instance_url, info["grpc_endpoint"])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def purge_loop() -> None:
        while True:
            await asyncio.sleep(opts.purge_interval_s)
            sb.purge()

    purger = asyncio.create_task(purge_loop())
    try:
        await stop.wait()
    finally:
        purger.cancel()
        sb.drop_streams()
        await grpc_server.stop(grace=1)
        await runner.cleanup()
        sb.store.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(opts.ready_file or str(Path(opts.dir) / "ready.json"))

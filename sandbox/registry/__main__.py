"""``python -m sandbox.registry serve [--host 127.0.0.1] [--port 8081] [--store PATH]
[--ready-file PATH] [--compatibility LEVEL] [--basic-auth USER:PASSWORD]``: a
Confluent-compatible schema registry emulator for local use and tests (with
``--basic-auth``, every request needs those credentials, as a hosted registry's do).

``--port 0`` picks a free port; the ready file gets ``{"url", "port", "pid"}`` once
listening. ``--store`` keeps the schemas in a JSON file (ids survive a restart — without it
a restart forgets them and records already written with those ids become undecodable).
Point the pipeline at it with ``SCHEMA_REGISTRY_URL=http://127.0.0.1:<port>``.
Compatibility is ``FULL`` unless ``--compatibility`` (or ``PUT /config``) sets another level.
Flags fall back to ``REGISTRY_HOST``, ``REGISTRY_PORT``, ``REGISTRY_STORE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from sandbox.registry.server import LEVELS, RegistryHTTPServer, Store

DEFAULT_PORT = 8081


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.registry",
                                     description="Confluent-compatible schema registry "
                                                 "emulator (tests and local use)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve until SIGTERM/SIGINT")
    serve.add_argument("--host", default=os.environ.get("REGISTRY_HOST", "127.0.0.1"),
                       help="address to listen on [env: REGISTRY_HOST]")
    serve.add_argument("--port", type=int,
                       default=int(os.environ.get("REGISTRY_PORT", DEFAULT_PORT)),
                       help="port, 0 = a free one [env: REGISTRY_PORT]")
    serve.add_argument("--store", default=os.environ.get("REGISTRY_STORE", ""),
                       help="JSON file keeping the schemas across restarts [env: REGISTRY_STORE]")
    serve.add_argument("--ready-file", default="", help="write {url, port, pid} here when up")
    serve.add_argument("--compatibility", default=None, choices=sorted(LEVELS),
                       help="global compatibility level (subjects without their own). Given, "
                            "it wins over the level saved in --store and is saved there, as "
                            "PUT /config would; omitted, the level an earlier flag or PUT "
                            "/config saved is kept, else FULL (both ways against the latest "
                            "version; a store's BACKWARD saved by an earlier release, its "
                            "default then, counts as unset)")
    serve.add_argument("--basic-auth", default=os.environ.get("REGISTRY_BASIC_AUTH", ""),
                       help="USER:PASSWORD every request must carry [env: REGISTRY_BASIC_AUTH]")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store_path = Path(args.store) if args.store else None
    if store_path is not None:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    user, _, password = args.basic_auth.partition(":")
    server = RegistryHTTPServer((args.host, args.port),
                                Store(store_path, compatibility=args.compatibility),
                                basic_auth=(user, password) if args.basic_auth else None)
    port = server.server_address[1]

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    url = f"http://{args.host}:{port}"
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"url": url, "port": port, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)
    logging.getLogger("sandbox.registry").info("schema registry emulator on %s", url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

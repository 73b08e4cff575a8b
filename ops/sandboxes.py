"""The sandbox part of ``make up``: keys and TLS, the two emulators, the pipeline's env.

Used only when no real Salesforce credentials are configured (``SF_CLIENT_ID`` unset).
Ports: Salesforce REST/OAuth ``SF_SANDBOX_HTTP_PORT`` (8443, HTTPS with a local CA),
Pub/Sub gRPC ``SF_SANDBOX_GRPC_PORT`` (7443, plaintext), WHMCS ``WHMCS_SANDBOX_PORT`` (8881).
State lives in ``<state>/sandbox/``; on first start the Salesforce sandbox is seeded
(``SF_SANDBOX_ACCOUNTS`` accounts, ``SF_SANDBOX_ORDERS`` Orders in Pending Review).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common.settings import environment

PY = sys.executable
WHMCS_IDENTIFIER, WHMCS_SECRET, WHMCS_ACCESS_KEY = (
    "sandbox-identifier", "sandbox-secret", "sandbox-accesskey")


def ports() -> tuple[int, int, int]:
    env = environment()
    return (int(env.get("SF_SANDBOX_HTTP_PORT", "8443")),
            int(env.get("SF_SANDBOX_GRPC_PORT", "7443")),
            int(env.get("WHMCS_SANDBOX_PORT", "8881")))


def sf_dir(state: Path) -> Path:
    return state / "sandbox" / "salesforce"


def plan(state: Path, logs: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    from sandbox.salesforce.core import DEFAULT_CLIENT_ID, DEFAULT_USERNAME
    from sandbox.salesforce.tlsgen import jwt_keypair, tls_material

    http_port, grpc_port, whmcs_port = ports()
    sfd = sf_dir(state)
    key, cert = jwt_keypair(sfd / "jwt")
    tls = tls_material(sfd / "tls", ("127.0.0.1",))
    sf_url = f"https://127.0.0.1:{http_port}"
    whmcs_url = f"http://127.0.0.1:{whmcs_port}"
    processes = [
        {"name": "salesforce-sandbox",
         "argv": [PY, "-m", "sandbox.salesforce", "--dir", str(sfd), "serve",
                  "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                  "--jwt-cert", str(cert)],
         "env": {}, "log": str(logs / "salesforce-sandbox.log"),
         "health_url": f"{sf_url}/__sandbox/health", "ca": str(tls["ca"])},
        {"name": "whmcs-sandbox",
         "argv": [PY, "-m", "sandbox.whmcs", "serve", "--port", str(whmcs_port),
                  "--db", str(state / "sandbox" / "whmcs.db"),
                  "--identifier", WHMCS_IDENTIFIER, "--secret", WHMCS_SECRET,
                  "--access-key", WHMCS_ACCESS_KEY],
         "env": {}, "log": str(logs / "whmcs-sandbox.log"),
         "health_url": f"{whmcs_url}/__sandbox/health"},
    ]
    pipeline_env = {
        "SF_LOGIN_URL": sf_url, "SF_CLIENT_ID": DEFAULT_CLIENT_ID,
        "SF_USERNAME": DEFAULT_USERNAME, "SF_PRIVATE_KEY_PATH": str(key),
        "SF_CA_BUNDLE": str(tls["ca"]), "SF_PUBSUB_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "SF_PUBSUB_TLS": "false", "SF_EVENTS_REPLAY": "EARLIEST",
        "WHMCS_API_URL": f"{whmcs_url}/includes/api.php",
        "WHMCS_API_IDENTIFIER": WHMCS_IDENTIFIER, "WHMCS_API_SECRET": WHMCS_SECRET,
        "WHMCS_API_ACCESS_KEY": WHMCS_ACCESS_KEY,
    }
    return processes, pipeline_env


def admin(state: Path) -> Any:
    """Admin client of the running Salesforce sandbox (for seeding and the demo)."""
    from sandbox.salesforce.admin_client import AdminClient

    http_port, _, _ = ports()
    return AdminClient(f"https://127.0.0.1:{http_port}",
                       str(sf_dir(state) / "tls" / "ca.pem"))


def seed_once(state: Path) -> str:
    """Seed the Salesforce sandbox on its first start; a marker makes it idempotent."""
    marker = sf_dir(state) / ".seeded"
    if marker.exists():
        return "already seeded"
    env = environment()
    accounts = int(env.get("SF_SANDBOX_ACCOUNTS", "200"))
    orders = int(env.get("SF_SANDBOX_ORDERS", "1000"))
    result = admin(state).seed(accounts, orders, 50)
    marker.write_text("seeded\n")
    return (f"seeded {accounts} accounts and {len(result.get('orders', [])) or orders} "
            "Orders in Pending Review")

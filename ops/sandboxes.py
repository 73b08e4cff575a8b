"""The sandbox part of ``make up``: keys and TLS, the emulators, the pipeline's env.

Used only when no real Salesforce credentials are configured (``SF_CLIENT_ID`` unset).
Ports: Salesforce REST/OAuth ``SF_SANDBOX_HTTP_PORT`` (8443, HTTPS with a local CA),
Pub/Sub gRPC ``SF_SANDBOX_GRPC_PORT`` (7443, plaintext), WHMCS ``WHMCS_SANDBOX_PORT`` (8881),
the schema registry emulator ``REGISTRY_SANDBOX_PORT`` (8081; its schemas in
``<state>/registry.json``, so ids survive restarts). The registry is on by default: the
pipeline gets ``SCHEMA_REGISTRY_URL`` pointing at it, so the requests and outcomes are in
the Confluent wire format every registry-aware tool reads — unless ``SCHEMA_REGISTRY_URL``
is set already (your own registry), or set empty in ``.env`` (plain Avro, no emulator).
State lives in ``<state>/sandbox/``; on first start the Salesforce sandbox is seeded
(``SF_SANDBOX_ACCOUNTS`` accounts, ``SF_SANDBOX_ORDERS`` Orders in Pending Review), and the
WHMCS sandbox with the clients of ``WHMCS_SANDBOX_ACCOUNTS`` (10,000) accounts, or of
``SF_SANDBOX_ACCOUNTS`` when more (:func:`whmcs_accounts`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common.envparse import environment
from ops import envvars

PY = sys.executable
WHMCS_IDENTIFIER, WHMCS_SECRET, WHMCS_ACCESS_KEY = (
    "sandbox-identifier", "sandbox-secret", "sandbox-accesskey")
#: pipeline settings the plan gives a sandbox default, but which stay the user's when set
USER_CHOICES = ("SF_EVENTS_REPLAY",)


def ports() -> tuple[int, int, int]:
    env = environment()
    return (envvars.port(env, "SF_SANDBOX_HTTP_PORT", 8443),
            envvars.port(env, "SF_SANDBOX_GRPC_PORT", 7443),
            envvars.port(env, "WHMCS_SANDBOX_PORT", 8881))


def registry_process(state: Path, logs: Path) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The registry emulator and the pipeline's ``SCHEMA_REGISTRY_URL`` (none when the
    environment names a registry, or sets the URL empty to keep plain Avro)."""
    env = environment()
    if "SCHEMA_REGISTRY_URL" in env:
        return None, {}
    port = envvars.port(env, "REGISTRY_SANDBOX_PORT", 8081)
    url = f"http://127.0.0.1:{port}"
    proc = {"name": "registry-sandbox",
            "argv": [PY, "-m", "sandbox.registry", "serve", "--port", str(port),
                     "--store", str(state / "registry.json")],
            "env": {}, "log": str(logs / "registry-sandbox.log"),
            "health_url": f"{url}/subjects"}
    return proc, {"SCHEMA_REGISTRY_URL": url}


def whmcs_accounts() -> int:
    """The WHMCS sandbox's seed accounts: ``WHMCS_SANDBOX_ACCOUNTS``, but never fewer than
    the Salesforce sandbox's — its account i names WHMCS client 1001+i, and an Order of an
    account the WHMCS sandbox lacks failed for good with "Client ID Not Found"."""
    env = environment()
    return max(envvars.count(env, "WHMCS_SANDBOX_ACCOUNTS", 10000),
               envvars.count(env, "SF_SANDBOX_ACCOUNTS", 200))


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
                  "--jwt-cert", str(cert),
                  # the pipeline's own (below): not SF_CLIENT_ID/SF_USERNAME from the
                  # environment, which sandbox mode ignores (a blank one is sandbox mode)
                  "--client-id", DEFAULT_CLIENT_ID, "--username", DEFAULT_USERNAME],
         "env": {}, "log": str(logs / "salesforce-sandbox.log"),
         "health_url": f"{sf_url}/__sandbox/health", "ca": str(tls["ca"])},
        {"name": "whmcs-sandbox",
         "argv": [PY, "-m", "sandbox.whmcs", "serve", "--port", str(whmcs_port),
                  "--db", str(state / "sandbox" / "whmcs.db"),
                  "--identifier", WHMCS_IDENTIFIER, "--secret", WHMCS_SECRET,
                  "--access-key", WHMCS_ACCESS_KEY, "--accounts", str(whmcs_accounts())],
         "env": {}, "log": str(logs / "whmcs-sandbox.log"),
         "health_url": f"{whmcs_url}/__sandbox/health"},
    ]
    registry, registry_env = registry_process(state, logs)
    if registry is not None:
        processes.append(registry)
    pipeline_env = {
        "SF_LOGIN_URL": sf_url, "SF_CLIENT_ID": DEFAULT_CLIENT_ID,
        "SF_USERNAME": DEFAULT_USERNAME, "SF_PRIVATE_KEY_PATH": str(key),
        # blank is unset: the sandbox's key and its own audience, whatever a half-filled
        # .env says (SF_PRIVATE_KEY_BASE64 wins over the path)
        "SF_PRIVATE_KEY_BASE64": "", "SF_AUDIENCE": "",
        "SF_CA_BUNDLE": str(tls["ca"]), "SF_PUBSUB_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "SF_PUBSUB_TLS": "false", "SF_EVENTS_REPLAY": "EARLIEST",
        "WHMCS_API_URL": f"{whmcs_url}/includes/api.php",
        "WHMCS_API_IDENTIFIER": WHMCS_IDENTIFIER, "WHMCS_API_SECRET": WHMCS_SECRET,
        "WHMCS_API_ACCESS_KEY": WHMCS_ACCESS_KEY,
        **registry_env,
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
    accounts = envvars.count(env, "SF_SANDBOX_ACCOUNTS", 200)
    orders = envvars.count(env, "SF_SANDBOX_ORDERS", 1000)
    result = admin(state).seed(accounts, orders, 50)
    marker.write_text("seeded\n")
    return (f"seeded {accounts} accounts and {len(result.get('orders', [])) or orders} "
            "Orders in Pending Review")

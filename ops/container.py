"""The entry point of the pipeline's containers (``docker-compose.yml``).

``python -m ops.container connector|worker|sink``

* **Sandbox defaults only in sandbox mode.** The compose file gives the pipeline the
  sandboxes' addresses and credentials as ``SFPROV_SANDBOX_<VARIABLE>``; they become
  ``<VARIABLE>`` only when ``SF_CLIENT_ID`` is unset (the rule ``make up`` follows) and the
  variable itself is not set. With real credentials none applies, so a real installation
  gets the code's own defaults (TLS to Pub/Sub, Salesforce's endpoints), never a sandbox's.
* **Final exit codes end the container.** Docker's restart policies cannot tell exit codes
  apart; the services run with ``restart: on-failure`` and this wrapper turns a code that
  restarting cannot fix (``ops.stack.FINAL_EXIT_CODES``: a bad setting, a refused
  credential or ACL, a fenced connector) into exit 0 after logging it, so the container
  stops instead of looping. Any other non-zero exit (a crash, the worker's stall exit 75) is
  passed on and restarted. SIGTERM and SIGINT are passed to the process, and end the
  container at once while it waits, before the process starts (it runs as PID 1, which
  ignores a signal it has no handler for).
* **Sandbox mode without the sandboxes stops with a hint.** Plain ``docker compose up`` (no
  ``--profile sandbox``) without ``SF_CLIENT_ID``: the sandboxes' key file is missing and
  the process refuses its settings, or (the ``state`` volume keeps the key and CA of an
  earlier sandbox run) the sandbox's host name does not resolve, checked before the process
  starts; either way the container logs how to start them and stops.

``python -m ops.container seed`` seeds the compose Salesforce sandbox once (a marker in its
state directory makes later runs a no-op), like ``make up`` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

SANDBOX_PREFIX = "SFPROV_SANDBOX_"
COMMANDS = {"connector": ["connectors", "run"], "worker": ["streams", "worker"],
            "sink": ["sinks", "run"]}
#: how long the sandbox host's name may take to resolve (compose's DNS answers at once);
#: longer, and the process starts as it would have
RESOLVE_TIMEOUT_S = 5.0
#: how long the sandbox's host may be missing before the container stops with the hint (a
#: sandbox container restarting); ``SFPROV_CONTAINER_SANDBOX_WAIT_S`` overrides it
RESOLVE_WAIT_S = 60.0
RESOLVE_RETRY_S = 2.0


#: in sandbox mode, the identity the Salesforce sandbox container knows (it reads no .env):
#: its SFPROV_SANDBOX_ value wins over the environment's, as under `make up`
#: (``ops.stack.sandbox_env``) — a half-filled .env's user or key made every login fail
SANDBOX_IDENTITY = ("SF_CLIENT_ID", "SF_USERNAME", "SF_PRIVATE_KEY_PATH")
#: … and these are blanked (blank is unset): the base64 key would win over the sandbox's key
#: file, and an audience other than the sandbox's login URL is refused
SANDBOX_BLANKED = ("SF_PRIVATE_KEY_BASE64", "SF_AUDIENCE")


def sandbox_defaults(env: dict[str, str]) -> dict[str, str]:
    """The variables to set: in sandbox mode, each SFPROV_SANDBOX_X the environment lacks,
    and the sandbox's identity (:data:`SANDBOX_IDENTITY`, :data:`SANDBOX_BLANKED`) whatever
    the environment says."""
    if env.get("SF_CLIENT_ID", "").strip():  # blank is unset, as for the settings
        return {}
    applied = {name[len(SANDBOX_PREFIX):]: value for name, value in env.items()
               if name.startswith(SANDBOX_PREFIX) and value
               and (not env.get(name[len(SANDBOX_PREFIX):], "").strip()
                    or name[len(SANDBOX_PREFIX):] in SANDBOX_IDENTITY)}
    applied.update({name: "" for name in SANDBOX_BLANKED if env.get(name, "").strip()})
    return applied


def _sandbox_hint(env: dict[str, str], missing: str) -> str | None:
    """The line for a process in sandbox mode that cannot work because the sandboxes are not
    there (``missing``: what shows it). ``env`` is the container's own environment, before
    :func:`sandbox_defaults`, whose ``SF_CLIENT_ID`` decides the mode."""
    if env.get("SF_CLIENT_ID", "").strip() or not missing:
        return None
    return ("sandbox mode (SF_CLIENT_ID is not set) but the sandboxes are not running "
            f"({missing}): start them with `docker compose --profile sandbox up`, or set SF_CLIENT_ID and "
            "the real credentials (README, docker-compose)")


def _missing_key(env: dict[str, str]) -> str:
    """Plain ``docker compose up`` before any sandbox run: the sandbox credentials point at a
    key file only the Salesforce sandbox writes, and the process refuses its settings."""
    key = env.get("SF_PRIVATE_KEY_PATH", "")
    if not env.get(f"{SANDBOX_PREFIX}SF_PRIVATE_KEY_PATH") or not key or Path(key).exists():
        return ""
    return f"no {key}"


def _resolves(host: str, timeout: float) -> bool:
    """Whether ``host`` resolves; a resolver that takes longer than ``timeout`` counts as
    yes (the process finds out itself, as without this check)."""
    answer: list[bool] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(host, None)
            answer.append(True)
        except OSError:  # socket.gaierror: unknown name, or no resolver
            answer.append(False)

    thread = threading.Thread(target=look_up, name="resolve-sandbox", daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else True


def _unresolvable_sandbox(env: dict[str, str], timeout: float = RESOLVE_TIMEOUT_S) -> str:
    """Plain ``docker compose up`` after a sandbox run: the ``state`` volume keeps the
    sandbox's key and CA, so the settings pass, but the sandbox's host (a compose service of
    the sandbox profile) is not on the network and the process would retry it for ever. Only
    when SF_LOGIN_URL is the sandbox's (``SFPROV_SANDBOX_SF_LOGIN_URL``)."""
    url = env.get(f"{SANDBOX_PREFIX}SF_LOGIN_URL", "")
    if not url or env.get("SF_LOGIN_URL") != url:
        return ""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return ""
    if not host:
        return ""
    # a sandbox container restarting (or started a moment after this one) is not yet on the
    # network's DNS: looked up again for a while, so a brief absence does not stop this
    # container for good (an exit 0 is not restarted)
    until = time.monotonic() + _wait_s(env)
    while not _resolves(host, timeout):
        if time.monotonic() >= until:
            return f"{host} does not resolve"
        time.sleep(RESOLVE_RETRY_S)
    return ""


def _wait_s(env: dict[str, str]) -> float:
    """How long the sandbox's host may take to appear (``SFPROV_CONTAINER_SANDBOX_WAIT_S``);
    a value that is no duration of 0 or more is a :class:`~common.errors.ConfigError` naming
    it (``5m`` was the default, ``nan`` or ``-3`` no wait at all, without a word)."""
    from common.envparse import parse_non_negative_float
    from ops import envvars

    return envvars.value(env, "SFPROV_CONTAINER_SANDBOX_WAIT_S", RESOLVE_WAIT_S,
                         parse_non_negative_float)


def _stop_on_signals(child: list[subprocess.Popen[bytes]] | None = None) -> None:
    """SIGTERM and SIGINT handled from the start: passed to the process once ``child`` holds
    it, before that the exit a signal's default gives (``128 + signal``). A container's
    command runs as PID 1, to which the kernel delivers no signal it has no handler for: a
    ``docker compose stop`` (or a Kubernetes pod's deletion) during the wait for the sandbox's
    host, or the seed's retries, was ignored until the SIGKILL at the end of the grace."""

    def on_signal(signum: int, _frame: object) -> None:
        if child:
            child[0].send_signal(signum)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run(name: str, args: list[str]) -> int:
    from common.process import EXIT_CONFIG
    from ops.stack import FINAL_EXIT_CODES

    child: list[subprocess.Popen[bytes]] = []
    _stop_on_signals(child)
    own = dict(os.environ)
    env = {**own, **sandbox_defaults(own)}
    from common.errors import ConfigError

    try:
        hint = _sandbox_hint(own, _unresolvable_sandbox(env))
    except ConfigError as exc:  # one line naming it; restarting cannot fix it
        hint = f"error: {exc}"
    if hint:  # not started: it would retry the missing sandbox for ever
        print(hint, file=sys.stderr, flush=True)
        print(f"{name} not started: restarting cannot fix this (see the line above); the "
              "container stops (exit 0) instead of restarting", file=sys.stderr, flush=True)
        return 0
    proc = subprocess.Popen([sys.executable, "-m", *COMMANDS[name], *args], env=env)
    child.append(proc)  # from here a signal is passed to the process
    code = proc.wait()
    hint = _sandbox_hint(own, _missing_key(env)) if code == EXIT_CONFIG else None
    if hint:
        print(hint, file=sys.stderr, flush=True)
    if code in FINAL_EXIT_CODES.get(name, []):
        print(f"{name} exited with {code}: restarting cannot fix this (see the line above); "
              "the container stops (exit 0) instead of restarting", file=sys.stderr, flush=True)
        return 0
    return code


def seed(timeout: float = 300.0) -> int:
    """Seed the compose Salesforce sandbox once (SF_SANDBOX_ACCOUNTS / SF_SANDBOX_ORDERS)."""
    _stop_on_signals()
    from common.errors import ConfigError
    from ops import envvars
    from sandbox.salesforce.admin_client import AdminClient

    if os.environ.get("SF_CLIENT_ID", "").strip():
        # real credentials: the pipeline's Salesforce is the org, nothing of it is seeded
        # (seeding "the sandbox" at SF_LOGIN_URL tried the org for 300 s, then exited 1, and
        # every pipeline service, which waits for this one, never started)
        print("salesforce sandbox: not seeded (SF_CLIENT_ID is set: the pipeline uses a real org)")
        return 0
    env = {**os.environ, **sandbox_defaults(dict(os.environ))}
    state = Path(envvars.text(env, "SFPROV_STATE_DIR", "/state")) / "sandbox" / "salesforce"
    marker = state / ".seeded"
    if marker.exists():
        print("salesforce sandbox: already seeded")
        return 0
    try:  # read as make up reads them: one line naming a bad one, exit 64
        accounts = envvars.count(env, "SF_SANDBOX_ACCOUNTS", 200)
        orders = envvars.count(env, "SF_SANDBOX_ORDERS", 1000)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    admin = AdminClient(envvars.text(env, "SF_LOGIN_URL", "https://salesforce-sandbox:8443"),
                        envvars.text(env, "SF_CA_BUNDLE", str(state / "tls" / "ca.pem")))
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.seed(accounts, orders, 50)
            break
        except Exception as exc:  # noqa: BLE001 - not up yet; give up at the deadline
            if time.monotonic() > deadline:
                print(f"error: cannot seed the salesforce sandbox: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)
    marker.write_text("seeded\n")
    print(f"salesforce sandbox: seeded {accounts} accounts and {orders} Orders")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*COMMANDS, "seed"):
        print(f"usage: python -m ops.container {{{'|'.join(COMMANDS)}|seed}} [ARGS...]",
              file=sys.stderr)
        return 64
    if args[0] == "seed":
        return seed()
    return run(args[0], args[1:])


if __name__ == "__main__":
    sys.exit(main())

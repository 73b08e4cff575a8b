"""The WHMCS sandbox seeds a client for every Salesforce sandbox account: the Salesforce
sandbox gives account i WHMCS client 1001+i for ``SF_SANDBOX_ACCOUNTS`` accounts, the WHMCS
sandbox seeded ``WHMCS_SANDBOX_ACCOUNTS`` (10,000) — with more Salesforce accounts, their
good Orders failed for good with "Client ID Not Found". ``make up`` and compose now give it
the larger of the two. Nothing here starts a process: the server's ``serve`` is replaced."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from ops import sandboxes
from sandbox import seed
from sandbox.whmcs import __main__ as whmcs_cli
from sandbox.whmcs import admin
from sandbox.whmcs.store import Store

ROOT = Path(__file__).resolve().parents[2]
VARIABLES = ("WHMCS_SANDBOX_ACCOUNTS", "SF_SANDBOX_ACCOUNTS")


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFPROV_ENV_FILE", os.devnull)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def whmcs_argv(tmp_path: Path) -> list[str]:
    procs, _ = sandboxes.plan(tmp_path / "state", tmp_path / "logs")
    [whmcs] = [p for p in procs if p["name"] == "whmcs-sandbox"]
    return whmcs["argv"]


@pytest.mark.parametrize("env,accounts", [
    ({}, 10000),
    ({"SF_SANDBOX_ACCOUNTS": "25000"}, 25000),
    ({"SF_SANDBOX_ACCOUNTS": "25000", "WHMCS_SANDBOX_ACCOUNTS": "30000"}, 30000),
    ({"SF_SANDBOX_ACCOUNTS": "500", "WHMCS_SANDBOX_ACCOUNTS": "300"}, 500),
    ({"SF_SANDBOX_ACCOUNTS": " ", "WHMCS_SANDBOX_ACCOUNTS": ""}, 10000),
])
def test_make_up_seeds_the_whmcs_sandbox_with_the_larger_count(tmp_path, monkeypatch, env,
                                                               accounts):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = whmcs_argv(tmp_path)
    args = whmcs_cli.build_parser().parse_args(argv[argv.index("serve"):])
    assert int(args.accounts) == accounts


def serve_once(argv: list[str], db: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """``python -m sandbox.whmcs <argv>`` with its database at ``db``, returning at once."""
    async def no_serve(*_args: object, **_kw: object) -> None:
        return None

    monkeypatch.setattr(admin, "serve", no_serve)
    monkeypatch.setattr("common.log.setup_logging", lambda *a, **k: None)
    argv = list(argv)
    argv[argv.index("--db") + 1] = str(db)
    assert whmcs_cli.main(argv) == 0
    return Store(db)


def compose_command(env: dict[str, str]) -> list[str]:
    """The compose WHMCS sandbox's command as compose substitutes ``${VAR:-default}``."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["whmcs-sandbox"]["command"]

    def sub(match: re.Match[str]) -> str:
        return env.get(match[1]) or match[2]

    return [re.sub(r"\$\{(\w+):-([^}]*)\}", sub, part) for part in command]


@pytest.mark.parametrize("env,accounts", [
    ({"SF_SANDBOX_ACCOUNTS": "10500"}, 10500),
    ({"SF_SANDBOX_ACCOUNTS": "300", "WHMCS_SANDBOX_ACCOUNTS": "400"}, 400),
])
def test_compose_seeds_the_whmcs_sandbox_with_the_larger_count(tmp_path, monkeypatch, env,
                                                               accounts):
    command = compose_command(env)
    store = serve_once(command[command.index("serve"):], tmp_path / "w.db", monkeypatch)
    last = seed.FIRST_CLIENT_ID + accounts - 1
    assert store.client(last) is not None and store.client(last + 1) is None


def test_the_larger_count_reaches_the_sandbox_on_first_start_only(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    argv = ["serve", "--db", "", "--accounts", "5", "--sf-accounts", "30"]
    assert len(serve_once(argv, db, monkeypatch).clients) == 28  # minus missing + unknown
    argv = ["serve", "--db", "", "--accounts", "5", "--sf-accounts", "60"]
    assert len(serve_once(argv, db, monkeypatch).clients) == 28  # seeded already


def test_compose_gives_the_seed_and_the_whmcs_sandbox_one_account_count():
    """The whmcs-sandbox's --sf-accounts is substituted by compose (the shell, else .env);
    the seed service read SF_SANDBOX_ACCOUNTS from .env alone: with another value exported
    in the shell the two seeded different counts, and Orders of the accounts the WHMCS
    sandbox lacked failed for good."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["whmcs-sandbox"]["command"]
    seed_env = compose["services"]["seed"]["environment"]
    given = command[command.index("--sf-accounts") + 1]
    assert seed_env["SF_SANDBOX_ACCOUNTS"] == given == "${SF_SANDBOX_ACCOUNTS:-200}"

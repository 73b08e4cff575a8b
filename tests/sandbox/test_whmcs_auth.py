"""The WHMCS sandbox takes credentials the ways real WHMCS does (developers.whmcs.com,
API Authentication): the API credential as ``identifier``/``secret`` or in the
``username``/``password`` fields, an admin's login (``username`` + MD5 of the password),
and the ``accesskey`` that bypasses the IP allow-list; and refuses as WHMCS 8 does: a wrong
access key, and the ban of an IP after 3 failed logins within 30 minutes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from sandbox.whmcs.harness import WhmcsSandbox, whmcs_sandbox

ADMIN, ADMIN_PASSWORD = "sandbox-admin", "admin-password"


@pytest.fixture(scope="module")
def wh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhmcsSandbox]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WHMCS_SANDBOX_ADMIN_USERNAME", ADMIN)
        mp.setenv("WHMCS_SANDBOX_ADMIN_PASSWORD", ADMIN_PASSWORD)
        with whmcs_sandbox(tmp_path_factory.mktemp("whmcs-auth"), accounts=20) as sandbox:
            yield sandbox


@pytest.fixture(autouse=True)
def _no_ban_left(wh: WhmcsSandbox) -> Iterator[None]:
    """Every test starts with no failed login counted and no ban (one sandbox, one IP)."""
    wh.lift_login_bans()
    yield
    wh.set_login_ban(ban_after=3, ban_window_s=1800, ban_s=900)
    wh.lift_login_bans()


def call(wh: WhmcsSandbox, **auth: str) -> tuple[int, dict]:
    form = {"action": "GetOrders", "responsetype": "json", "limitnum": "1", **auth}
    resp = httpx.post(wh.api_url, content=urlencode(form).encode(), timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    return resp.status_code, resp.json()


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def test_identifier_and_secret(wh):
    status, body = call(wh, identifier=wh.identifier, secret=wh.secret)
    assert (status, body["result"]) == (200, "success")


def test_the_api_credential_in_username_and_password(wh):
    status, body = call(wh, username=wh.identifier, password=wh.secret)
    assert (status, body["result"]) == (200, "success")


def test_admin_login_credentials_with_the_md5_password(wh):
    status, body = call(wh, username=ADMIN, password=md5(ADMIN_PASSWORD))
    assert (status, body["result"]) == (200, "success")
    # the clear-text password is not what WHMCS takes
    assert call(wh, username=ADMIN, password=ADMIN_PASSWORD)[1]["message"] == \
        "Authentication Failed"


@pytest.mark.parametrize("auth", [
    {"username": "sandbox-identifier", "password": "wrong"},
    {"identifier": "sandbox-identifier", "secret": "wrong"},
    {"username": "someone", "password": md5(ADMIN_PASSWORD)},
    # an identifier given wins: a right username/password does not rescue a wrong secret
    {"identifier": "sandbox-identifier", "secret": "wrong", "username": ADMIN,
     "password": md5(ADMIN_PASSWORD)},
    {},
])
def test_wrong_or_missing_credentials_are_refused(wh, auth):
    status, body = call(wh, **auth)
    assert (status, body) == (403, {"result": "error", "message": "Authentication Failed"})


def test_the_access_key_lets_a_refused_ip_in_with_any_credential_form(wh):
    wh.set_allowed_ips(["192.0.2.1"])  # not us
    try:
        status, body = call(wh, username=wh.identifier, password=wh.secret)
        assert status == 403 and body["message"].startswith("Invalid IP")
        for auth in ({"username": wh.identifier, "password": wh.secret},
                     {"identifier": wh.identifier, "secret": wh.secret},
                     {"username": ADMIN, "password": md5(ADMIN_PASSWORD)}):
            status, body = call(wh, accesskey=wh.access_key, **auth)
            assert (status, body["result"]) == (200, "success"), auth
        status, body = call(wh, accesskey=wh.access_key, username=wh.identifier,
                            password="wrong")
        assert (status, body["message"]) == (403, "Authentication Failed")
    finally:
        wh.set_allowed_ips(["127.0.0.1", "::1"])


BANNED = (403, {"result": "error", "message": "IP Banned"})


def test_a_wrong_access_key_from_an_allowed_ip_is_refused(wh):
    status, body = call(wh, accesskey="not-the-key", identifier=wh.identifier,
                        secret=wh.secret)
    assert (status, body) == (403, {"result": "error", "message": "Invalid Access Key"})
    assert call(wh, accesskey=wh.access_key, identifier=wh.identifier,
                secret=wh.secret)[0] == 200


def test_three_failed_logins_ban_the_ip_whatever_it_sends_until_the_ban_is_lifted(wh):
    right = {"identifier": wh.identifier, "secret": wh.secret}
    for _ in range(2):
        assert call(wh, identifier=wh.identifier, secret="wrong")[1]["message"] == \
            "Authentication Failed"
    assert call(wh, **right)[0] == 200  # a success does not clear the count
    assert call(wh, username=ADMIN, password="wrong")[1]["message"] == \
        "Authentication Failed"  # the third: answered so, and the ban starts
    assert call(wh, **right) == BANNED  # the right secret too
    assert call(wh, accesskey=wh.access_key, **right) == BANNED  # checked before the key
    assert call(wh, accesskey="not-the-key", **right) == BANNED
    assert call(wh, identifier=wh.identifier, secret="wrong") == BANNED
    ban = wh.login_ban()
    assert (ban["ban_after"], ban["ban_window_s"], ban["ban_s"]) == (3, 1800, 900)
    assert 890 < ban["banned"]["127.0.0.1"] <= 900
    wh.lift_login_bans()  # an admin removing it in WHMCS
    assert call(wh, **right)[0] == 200
    assert wh.login_ban()["banned"] == {}


def test_a_ban_runs_out_after_its_length(wh):
    wh.set_login_ban(ban_s=0.5)
    for _ in range(3):
        call(wh, identifier=wh.identifier, secret="wrong")
    assert call(wh, identifier=wh.identifier, secret=wh.secret) == BANNED
    time.sleep(0.6)
    assert call(wh, identifier=wh.identifier, secret=wh.secret)[0] == 200


def test_failed_logins_older_than_the_window_do_not_count(wh):
    wh.set_login_ban(ban_window_s=0.4)
    for _ in range(2):
        call(wh, identifier=wh.identifier, secret="wrong")
    time.sleep(0.5)
    call(wh, identifier=wh.identifier, secret="wrong")
    assert call(wh, identifier=wh.identifier, secret=wh.secret)[0] == 200
    assert wh.login_ban()["failed_logins"] == {"127.0.0.1": 1}


def test_no_ban_with_a_ban_length_of_zero(wh):
    wh.set_login_ban(ban_s=0)
    for _ in range(5):
        call(wh, identifier=wh.identifier, secret="wrong")
    assert call(wh, identifier=wh.identifier, secret=wh.secret)[0] == 200


def test_refusals_before_the_credentials_are_not_failed_logins(wh):
    """An IP refused by the allow-list or a wrong access key never got to log in."""
    for _ in range(3):
        assert call(wh, accesskey="not-the-key", identifier=wh.identifier,
                    secret="wrong")[1]["message"] == "Invalid Access Key"
    assert call(wh, identifier=wh.identifier, secret=wh.secret)[0] == 200


def test_the_login_ban_settings_are_checked(wh):
    resp = httpx.post(wh.admin_url + "/login-ban", json={"ban_minutes": 5}, timeout=10)
    assert resp.status_code == 400 and "ban_minutes" in resp.json()["error"]
    resp = httpx.post(wh.admin_url + "/login-ban", json={"ban_s": -1}, timeout=10)
    assert resp.status_code == 400

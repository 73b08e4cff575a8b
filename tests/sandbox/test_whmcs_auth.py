"""The WHMCS sandbox takes credentials the ways real WHMCS does (developers.whmcs.com,
API Authentication): the API credential as ``identifier``/``secret`` or in the
``username``/``password`` fields, an admin's login (``username`` + MD5 of the password),
and the ``accesskey`` that bypasses the IP allow-list."""

from __future__ import annotations

import hashlib
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

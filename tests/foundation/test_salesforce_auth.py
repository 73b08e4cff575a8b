"""The JWT bearer login's answers: a refusal, an outage in whatever shape it comes, and a
success without a token each end as a SalesforceAuthError that says whether to retry."""

from __future__ import annotations

import base64

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.errors import SalesforceAuthError
from common.salesforce import SalesforceAuth
from common.settings import SalesforceSettings


def _settings(login_url: str = "https://login.example.test") -> SalesforceSettings:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return SalesforceSettings.load({
        "SF_CLIENT_ID": "cid", "SF_USERNAME": "u@example.com", "SF_LOGIN_URL": login_url,
        "SF_PRIVATE_KEY_BASE64": base64.b64encode(pem).decode()})


def _auth(status: int, **answer) -> SalesforceAuth:
    settings = _settings()

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/services/oauth2/token"
        return httpx.Response(status, **answer)
    return SalesforceAuth(settings, http=httpx.Client(transport=httpx.MockTransport(handle)))


@pytest.mark.parametrize("status, answer, code, retryable", [
    (400, {"json": {"error": "invalid_grant", "error_description": "user hasn't approved"}},
     "invalid_grant", False),
    # the REST error shape (the Salesforce sandbox's injected outage answered this way, and
    # the login failed with an AttributeError on it)
    (503, {"json": [{"errorCode": "SERVER_UNAVAILABLE", "message": "try later"}]},
     "SERVER_UNAVAILABLE", True),
    (502, {"text": "<html>Bad Gateway</html>"}, "http_502", True),
    (503, {"json": ["unexpected"]}, "http_503", True),
    # "later", not a refused login: the connector's /readyz sent the operator to its
    # client id, every process waited its longest backoff (regression review)
    (429, {"text": "Too Many Requests", "headers": {"Retry-After": "30"}}, "http_429", True),
    (408, {"text": "Request Timeout"}, "http_408", True),
])
def test_a_refused_login_says_why_and_whether_to_retry(status, answer, code, retryable):
    with pytest.raises(SalesforceAuthError) as info:
        _auth(status, **answer).token()
    assert info.value.error_code == code and info.value.status == status
    assert info.value.retryable is retryable
    if status == 429:
        assert info.value.retry_after == 30.0


def test_a_success_without_a_token_is_an_error_to_retry():
    with pytest.raises(SalesforceAuthError, match="without an access token") as info:
        _auth(200, json={"id": "https://login.example.test/id/00D/005"}).token()
    assert info.value.retryable


def test_a_success_gives_the_token_and_the_org():
    token = _auth(200, json={"access_token": "00D!tok", "instance_url": "https://x.test/",
                             "id": "https://login.example.test/id/00Dxx/005yy"}).token()
    assert token.instance_url == "https://x.test" and token.org_id == "00Dxx"
    assert token.access_token.reveal() == "00D!tok"


@pytest.mark.parametrize("kind", ["certificate", "ec"])
def test_a_key_that_cannot_sign_is_an_auth_error_not_retried(tmp_path, kind):
    """Behind the settings' own check (a key replaced after start, settings built in code):
    jwt's InvalidKeyError is no PipelineError — the worker's guard raised it at once and
    every event was dead-lettered. It is a refused login now, quoting nothing of the key."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from sandbox.salesforce.tlsgen import jwt_keypair

    _key, cert = jwt_keypair(tmp_path / "jwt")
    path = cert
    if kind == "ec":
        path = tmp_path / "ec.pem"
        path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    settings = SalesforceSettings(client_id="cid", username="u@example.com",
                                  login_url="https://login.example.test",
                                  private_key_path=str(path))  # not validated

    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("an assertion that cannot be signed was sent")
    auth = SalesforceAuth(settings, http=httpx.Client(transport=httpx.MockTransport(never)))
    with pytest.raises(SalesforceAuthError) as info:
        auth.token()
    assert info.value.error_code == "invalid_key" and info.value.retryable is False
    assert info.value.__cause__ is None and info.value.__suppress_context__
    message = str(info.value)
    assert "SF_PRIVATE_KEY_PATH" in message and "BEGIN" not in message
    for line in path.read_text().splitlines():
        assert len(line) < 16 or line not in message


def test_a_gateway_password_in_the_login_url_goes_as_basic_auth_only():
    """``SF_LOGIN_URL=https://gw:pass@host`` (an authenticating gateway): the password went
    into the JWT's audience (Salesforce compares it to its login URL: every login refused)
    and into the error text the connector and worker show on /readyz."""
    import jwt as pyjwt

    settings = _settings("https://gw%40corp:Gw-Pa55word@login.example.test")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "00D!tok",
                                         "instance_url": "https://x.test",
                                         "id": "https://login.example.test/id/00Dxx/005yy"})
    SalesforceAuth(settings, http=httpx.Client(transport=httpx.MockTransport(answer))).token()
    request = seen[0]
    assert request.url == "https://login.example.test/services/oauth2/token"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(
        b"gw@corp:Gw-Pa55word").decode()
    form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
    claims = pyjwt.decode(form["assertion"], options={"verify_signature": False})
    assert claims["aud"] == "https://login.example.test"

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    auth = SalesforceAuth(settings, http=httpx.Client(transport=httpx.MockTransport(unreachable)))
    with pytest.raises(SalesforceAuthError) as info:
        auth.token()
    assert "Gw-Pa55word" not in str(info.value) and "login.example.test" in str(info.value)

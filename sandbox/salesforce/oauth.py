"""OAuth 2.0 JWT bearer flow (``POST /services/oauth2/token``) and ``userinfo``.

The assertion must be RS256-signed by the key of the certificate registered for the
connected app named in ``iss``; ``sub`` must be a known user pre-authorised for the app;
``aud`` must be the sandbox's own login URL or https://login.salesforce.com /
https://test.salesforce.com; ``exp`` (a finite number, or a string of digits) must not be
past and at most 3 minutes ahead of **wall** time (the sandbox clock may be advanced for
retention tests, JWTs are signed by real clients). Errors answer 400 with Salesforce's ``error``/``error_description``.
Issued tokens live ``token_lifetime_s`` on the sandbox clock after their last use (the org's
session timeout, renewed by a use past half of it: :meth:`~.store.Store.token_user`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time

import jwt
from aiohttp import web
from cryptography import x509

from .core import Sandbox

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_EXP_AHEAD_S = 180


class OAuthError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def verify_assertion(sandbox: Sandbox, assertion: str) -> dict:
    """Check a JWT bearer assertion; returns the user record it authenticates."""
    cfg = sandbox.config
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    if header.get("alg") != "RS256":
        raise OAuthError("invalid_grant", "invalid assertion")
    if claims.get("iss") != cfg.client_id:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    public_key = x509.load_pem_x509_certificate(cfg.jwt_cert_pem).public_key()
    try:
        jwt.decode(assertion, public_key, algorithms=["RS256"],
                   options={"verify_exp": False, "verify_aud": False})
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    audiences = {cfg.login_url.rstrip("/"), *cfg.extra_audiences}
    aud = claims.get("aud")
    aud_list = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a.rstrip("/") in audiences for a in aud_list):
        raise OAuthError("invalid_grant", "audience is invalid")
    exp = _expiry(claims.get("exp"))
    now = time.time()
    if exp <= now:
        raise OAuthError("invalid_grant", "expired authorization code")
    if exp > now + MAX_EXP_AHEAD_S + 5:
        raise OAuthError("invalid_grant", "invalid assertion")
    # usernames compare without case, as Salesforce's do
    sub = str(claims.get("sub", "")).lower()
    user = next((u for name, u in sandbox.users.items() if name.lower() == sub), None)
    if user is None or sub != cfg.username.lower():
        raise OAuthError("invalid_grant", "user hasn't approved this consumer")
    return user


def _expiry(claim: object) -> float:
    """``exp`` as seconds: a finite number, or a string of ASCII digits (simple-salesforce
    sends one, Salesforce accepts it). NaN would never expire (it compares false with every
    time): it, the infinities, a bool and any other string are an invalid assertion."""
    digits = isinstance(claim, str) and claim.isascii() and claim.isdigit()
    if not digits and (isinstance(claim, bool) or not isinstance(claim, int | float)):
        raise OAuthError("invalid_grant", "invalid assertion")
    try:
        exp = float(claim)  # type: ignore[arg-type]
    except OverflowError as exc:  # an int beyond any float
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    if not math.isfinite(exp):
        raise OAuthError("invalid_grant", "invalid assertion")
    return exp


def _identity_url(sandbox: Sandbox, user: dict) -> str:
    return f"{sandbox.config.login_url}/id/{sandbox.org_id}/{user['Id']}"


async def token(request: web.Request) -> web.Response:
    sandbox: Sandbox = request.app["sandbox"]
    sandbox.counters.count("token")
    form = await request.post()
    try:
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        user = verify_assertion(sandbox, str(form.get("assertion", "")))
    except OAuthError as exc:
        sandbox.counters.count("token_refused")
        return web.json_response({"error": exc.error, "error_description": exc.description},
                                  status=400)
    access_token = sandbox.store.issue_token(user["Id"], sandbox.config.token_lifetime_s)
    issued_at = str(sandbox.store.now_ms())
    identity = _identity_url(sandbox, user)
    signature = base64.b64encode(hmac.new(sandbox.org_id.encode(),
                                          (identity + issued_at).encode(),
                                          hashlib.sha256).digest()).decode()
    return web.json_response({
        "access_token": access_token, "scope": "api", "instance_url": sandbox.config.instance_url,
        "id": identity, "token_type": "Bearer", "issued_at": issued_at, "signature": signature})


async def userinfo(request: web.Request) -> web.Response:
    sandbox: Sandbox = request.app["sandbox"]
    sandbox.counters.count("userinfo")
    header = request.headers.get("Authorization", "")
    user = sandbox.user_for_token(header.split(" ", 1)[1].strip() if " " in header else None)
    return web.json_response({
        "sub": _identity_url(sandbox, user), "user_id": user["Id"],
        "organization_id": sandbox.org_id, "preferred_username": user["Username"],
        "name": user.get("Name"), "email": user.get("Email"), "active": True,
        "urls": {"rest": f"{sandbox.config.instance_url}/services/data/v{{version}}/"}})

"""`make up` in sandbox mode gives the Salesforce sandbox and the pipeline one set of
credentials, whatever the environment holds: the sandbox read ``SF_CLIENT_ID`` and
``SF_USERNAME`` from the environment (a blank ``SF_CLIENT_ID``, which is sandbox mode, made
its consumer key empty) while the pipeline got the sandbox's defaults, and a half-filled
.env's ``SF_PRIVATE_KEY_BASE64`` and ``SF_AUDIENCE`` passed through — every JWT login was
refused and the pipeline exited 64."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.settings import SalesforceSettings
from ops import sandboxes, stack
from sandbox.salesforce.cli import build_parser


def test_the_salesforce_sandbox_and_the_pipeline_agree_whatever_the_environment_says(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SF_CLIENT_ID", "")
    monkeypatch.setenv("SF_USERNAME", "ops@example.com")
    monkeypatch.setenv("SF_AUDIENCE", "https://acme.my.salesforce.com")
    procs, pipeline_env = sandboxes.plan(tmp_path / "state", tmp_path / "logs")
    [sandbox] = [p for p in procs if p["name"] == "salesforce-sandbox"]
    argv = sandbox["argv"]
    args = build_parser().parse_args(argv[argv.index("--dir"):])
    assert args.client_id == pipeline_env["SF_CLIENT_ID"] != ""
    assert args.username == pipeline_env["SF_USERNAME"] != "ops@example.com"

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())  # the user's own, in a half-filled .env
    env = {"SF_CLIENT_ID": "", "SF_USERNAME": "ops@example.com",
           "SF_AUDIENCE": "https://acme.my.salesforce.com",
           "SF_PRIVATE_KEY_BASE64": base64.b64encode(other_key + b"\n").decode()}
    settings = SalesforceSettings.load({**env, **stack.sandbox_env(env, pipeline_env)})
    with open(pipeline_env["SF_PRIVATE_KEY_PATH"]) as sandbox_key:
        assert settings.private_key().reveal() == sandbox_key.read()
    assert settings.jwt_audience == pipeline_env["SF_LOGIN_URL"]


def test_the_sandbox_reads_a_blank_variable_as_unset(monkeypatch):
    monkeypatch.setenv("SF_CLIENT_ID", " ")
    monkeypatch.setenv("SF_USERNAME", "")
    args = build_parser().parse_args(["serve"])
    assert args.client_id and args.username
